"""Paired statistics for two variants scored on the same questions (pure functions).

Two variants evaluated on the same questions are compared by their per-question outcomes, not by whether two
unpaired intervals overlap:
- `paired_difference(a, b)`: accuracy(a) - accuracy(b) with Newcombe's paired 95% interval (method 10 of Newcombe
  1998, "Improved confidence intervals for the difference between binomial proportions based on paired data": Wilson
  score limits of each proportion combined with the phi correlation of the pairs) and McNemar's test (statsmodels'
  `mcnemar`: exact binomial on the discordant pairs when they are fewer than 25, else chi-square with continuity
  correction);
- `difference_in_differences(a1, b1, a2, b2)`: (a1 - b1) - (a2 - b2) per question (H2: (GRPO+RAG - SFT+RAG) -
  (GRPO - SFT)), its mean with a seeded paired-bootstrap percentile interval over questions and a one-sample
  t-interval beside it;
- `rotation_agreement(plain, rotated)`: the position-bias check, how often the chosen option's text survives a
  cyclic shift of the options (`medr1 eval ... rotate=1`);
- `align(samples_a, samples_b)`: outcomes of two evals matched by question id; differing question sets are an error
  naming what is missing, because a paired comparison on different questions is no comparison.

    from medr1.stats import paired_difference
    paired_difference([True, True, False, True], [False, True, False, False])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medr1.errors import DataError
from medr1.metrics import wilson_interval

Z95 = 1.959963984540054


class _Interval:
    """Shared by results that carry a 95% interval of a difference in `ci_low` / `ci_high`."""

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


@dataclass(frozen=True)
class PairedResult(_Interval):
    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_a - accuracy_b
    ci_low: float
    ci_high: float
    only_a: int  # questions a gets right and b wrong
    only_b: int
    mcnemar_p: float

    def text(self) -> str:
        """`+12.0 pp [+4.1, +19.6], McNemar p = 0.003 (20 right only in the first, 8 only in the second, n = 100)`."""
        return (f"{100 * self.difference:+.1f} pp [{100 * self.ci_low:+.1f}, {100 * self.ci_high:+.1f}], McNemar p "
                f"{format_p(self.mcnemar_p)} ({self.only_a} right only in the first, {self.only_b} only in the "
                f"second, n = {self.n})")


@dataclass(frozen=True)
class DiDResult(_Interval):
    n: int
    estimate: float
    ci_low: float  # paired bootstrap percentile interval
    ci_high: float
    t_low: float  # one-sample t interval of the per-question differences
    t_high: float
    p_value: float  # one-sample t-test of mean 0 (scipy)
    resamples: int

    def text(self) -> str:
        return (f"{100 * self.estimate:+.1f} pp [{100 * self.ci_low:+.1f}, {100 * self.ci_high:+.1f}] (paired "
                f"bootstrap, {self.resamples} resamples; t-interval [{100 * self.t_low:+.1f}, "
                f"{100 * self.t_high:+.1f}], p {format_p(self.p_value)}, n = {self.n})")


def format_p(p: float) -> str:
    """`< 0.001`, `= 0.042` or `n/a`, to follow a `p`."""
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _table(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both right, a only, b only, both wrong)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    both = sum(1 for x, y in zip(a, b) if x and y)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return both, only_a, only_b, len(a) - both - only_a - only_b


def newcombe_paired(both: int, only_a: int, only_b: int, neither: int, z: float = Z95) -> tuple[float, float, float]:
    """(difference, low, high) of p_a - p_b for paired binary outcomes (Newcombe 1998, method 10)."""
    n = both + only_a + only_b + neither
    if n == 0:
        return 0.0, -1.0, 1.0
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    l_a, u_a = wilson_interval(both + only_a, n, z)
    l_b, u_b = wilson_interval(both + only_b, n, z)
    d = p_a - p_b
    # phi correlation of the 2x2 table; 0 when a margin is empty (Newcombe's convention)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins > 0 else 0.0
    low = d - math.sqrt(max(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2))
    high = d + math.sqrt(max(0.0, (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2))
    return d, max(-1.0, low), min(1.0, high)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's p-value from the discordant counts (statsmodels; exact binomial below 25 discordant pairs)."""
    if only_a + only_b == 0:
        return 1.0
    from statsmodels.stats.contingency_tables import mcnemar

    exact = only_a + only_b < 25
    return float(mcnemar([[0, only_a], [only_b, 0]], exact=exact, correction=True).pvalue)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> PairedResult:
    """accuracy(a) - accuracy(b) on the same questions, in the same order."""
    both, only_a, only_b, neither = _table(a, b)
    n = len(a)
    d, low, high = newcombe_paired(both, only_a, only_b, neither)
    return PairedResult(n, (both + only_a) / n if n else 0.0, (both + only_b) / n if n else 0.0, d, low, high,
                        only_a, only_b, mcnemar_p(only_a, only_b))


def difference_in_differences(a1: Sequence[bool], b1: Sequence[bool], a2: Sequence[bool], b2: Sequence[bool],
                              resamples: int = 10_000, seed: int = 0) -> DiDResult:
    """mean over questions of (a1 - b1) - (a2 - b2), with a paired bootstrap (questions resampled) and a t-interval."""
    import numpy as np
    from scipy import stats as sps

    n = len(a1)
    if not (len(b1) == len(a2) == len(b2) == n) or n == 0:
        raise ValueError(f"difference in differences needs four equal, non-empty outcome lists, got "
                         f"{[len(a1), len(b1), len(a2), len(b2)]}")
    d = (np.asarray(a1, float) - np.asarray(b1, float)) - (np.asarray(a2, float) - np.asarray(b2, float))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    if n > 1 and d.std(ddof=1) > 0:
        test = sps.ttest_1samp(d, 0.0)
        t_low, t_high = test.confidence_interval(0.95)
        p = float(test.pvalue)
    else:
        t_low = t_high = float(d.mean())
        p = float("nan")
    return DiDResult(n, float(d.mean()), float(low), float(high), float(t_low), float(t_high), p, resamples)


def align(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], names: tuple[str, str] = ("A", "B")
          ) -> tuple[list[str], list[bool], list[bool]]:
    """(ids, correct in a, correct in b) over the questions both evaluated, in a's order; an error when the two
    question sets differ (a paired comparison needs the same questions)."""
    by_b = {str(s.get("id")): bool(s.get("correct")) for s in b}
    ids_a = [str(s.get("id")) for s in a]
    missing_b = [i for i in ids_a if i not in by_b]
    missing_a = sorted(set(by_b) - set(ids_a))
    if missing_b or missing_a:
        raise DataError(f"paired comparison needs the same questions: {len(missing_b)} of {names[0]}'s are not in "
                        f"{names[1]} (e.g. {missing_b[:3]}), {len(missing_a)} of {names[1]}'s not in {names[0]} "
                        f"(e.g. {missing_a[:3]})")
    return ids_a, [bool(s.get("correct")) for s in a], [by_b[i] for i in ids_a]


def rotation_agreement(plain: Sequence[dict[str, Any]], rotated: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How often the answer follows the content when the options are rotated: over questions answered in both runs
    (matched by id), the share choosing the same option TEXT (content) and the share choosing the same LETTER
    (position). A model that reads the options scores content ~1; one that answers by position, letter ~1."""
    by_id = {str(s.get("id")): s for s in rotated}
    same_text = same_letter = n = 0
    for s in plain:
        r = by_id.get(str(s.get("id")))
        if r is None or not s.get("prediction") or not r.get("prediction"):
            continue
        n += 1
        same_text += (s.get("options") or {}).get(s["prediction"]) == (r.get("options") or {}).get(r["prediction"])
        same_letter += s["prediction"] == r["prediction"]
    return {"n": n, "follows_content": same_text / n if n else None, "follows_letter": same_letter / n if n else None}
