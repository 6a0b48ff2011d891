"""Paired statistics (medr1.stats) on tables of cases, checked against scipy/statsmodels and a bootstrap."""

from __future__ import annotations

import random

import pytest
from scipy import stats as sps

from medr1 import stats
from medr1.errors import DataError


def pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (3, 0), (10, 4), (7, 7), (30, 12), (1, 40)])
def test_mcnemar_matches_the_exact_binomial_and_the_corrected_chi_square(only_a, only_b) -> None:
    p = stats.mcnemar_p(only_a, only_b)
    k = only_a + only_b
    if k == 0:
        assert p == 1.0
    elif k < 25:
        assert p == pytest.approx(sps.binomtest(only_a, k, 0.5).pvalue)
    else:
        assert p == pytest.approx(sps.chi2.sf((abs(only_a - only_b) - 1) ** 2 / k, 1))


@pytest.mark.parametrize("table, diff", [
    ((40, 20, 5, 35), 0.15),
    ((50, 0, 0, 50), 0.0),
    ((10, 30, 2, 58), 0.28),
    ((0, 3, 0, 0), 1.0),
])
def test_paired_difference_counts_and_difference(table, diff) -> None:
    a, b = pairs(*table)
    r = stats.paired_difference(a, b)
    assert (r.n, r.only_a, r.only_b) == (sum(table), table[1], table[2])
    assert r.difference == pytest.approx(diff)
    assert r.ci_low <= r.difference <= r.ci_high and -1 <= r.ci_low and r.ci_high <= 1


def test_newcombe_paired_agrees_with_a_paired_bootstrap() -> None:
    a, b = pairs(300, 90, 50, 160)  # n = 600
    r = stats.paired_difference(a, b)
    rng = random.Random(0)
    idx = range(len(a))
    boots = sorted(sum(a[i] - b[i] for i in (rng.choice(idx) for _ in idx)) / len(a) for _ in range(2000))
    assert r.ci_low == pytest.approx(boots[50], abs=0.01) and r.ci_high == pytest.approx(boots[1949], abs=0.01)
    # pairing matters: the same margins without correlation give a wider (unpaired) interval
    low_u = (r.accuracy_a - r.accuracy_b) - 1.96 * ((r.accuracy_a * (1 - r.accuracy_a) + r.accuracy_b *
                                                     (1 - r.accuracy_b)) / len(a)) ** 0.5
    assert r.ci_low > low_u


def test_paired_interval_excludes_zero_only_for_a_real_difference() -> None:
    assert stats.paired_difference(*pairs(40, 25, 3, 32)).excludes_zero
    assert not stats.paired_difference(*pairs(40, 6, 4, 50)).excludes_zero


def test_difference_in_differences_estimate_and_intervals() -> None:
    rng = random.Random(1)
    n = 300
    a1 = [rng.random() < 0.7 for _ in range(n)]
    b1 = [x and rng.random() < 0.7 for x in a1]
    a2 = [rng.random() < 0.4 for _ in range(n)]
    b2 = [x and rng.random() < 0.9 for x in a2]
    r = stats.difference_in_differences(a1, b1, a2, b2, resamples=4000, seed=3)
    d = [(x1 - y1) - (x2 - y2) for x1, y1, x2, y2 in zip(a1, b1, a2, b2)]
    assert r.estimate == pytest.approx(sum(d) / n)
    t = sps.ttest_1samp(d, 0.0)
    assert (r.t_low, r.t_high) == pytest.approx(tuple(t.confidence_interval(0.95)))
    assert r.p_value == pytest.approx(t.pvalue)
    assert r.ci_low == pytest.approx(r.t_low, abs=0.015) and r.ci_high == pytest.approx(r.t_high, abs=0.015)
    assert stats.difference_in_differences(a1, b1, a2, b2, resamples=4000, seed=3) == r  # seeded


def test_difference_in_differences_needs_equal_lists() -> None:
    with pytest.raises(ValueError, match="four equal"):
        stats.difference_in_differences([True], [True, False], [True], [True])


def test_align_matches_ids_and_refuses_different_question_sets() -> None:
    a = [{"id": "q1", "correct": True}, {"id": "q2", "correct": False}]
    b = [{"id": "q2", "correct": True}, {"id": "q1", "correct": False}]
    assert stats.align(a, b) == (["q1", "q2"], [True, False], [False, True])
    with pytest.raises(DataError, match=r"1 of A's are not in B \(e.g. \['q2'\]\)"):
        stats.align(a, b[1:])


def test_rotation_agreement_separates_content_from_position() -> None:
    opts = {"A": "w", "B": "x", "C": "y", "D": "z"}
    rot = {"A": "z", "B": "w", "C": "x", "D": "y"}  # shifted by one
    plain = [{"id": i, "prediction": "B", "options": opts} for i in range(4)]
    by_content = [{"id": i, "prediction": "C", "options": rot} for i in range(4)]  # still "x"
    by_letter = [{"id": i, "prediction": "B", "options": rot} for i in range(3)] + [
        {"id": 3, "prediction": None, "options": rot}]
    assert stats.rotation_agreement(plain, by_content) == {"n": 4, "follows_content": 1.0, "follows_letter": 0.0}
    assert stats.rotation_agreement(plain, by_letter) == {"n": 3, "follows_content": 0.0, "follows_letter": 1.0}
