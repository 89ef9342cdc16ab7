"""The golden QA set: questions, reference answers and the exact reference passage in the corpus.

The source (``data/golden/rag_qa.jsonl``) is committed; :func:`prepare_golden_set` validates it
against the cleaned corpus and writes the prepared table (a DVC output) the evaluation reads.

Every item belongs to one split: ``tune`` (the questions retrieval parameters such as chunk size
and fusion weights may be chosen on) or ``holdout`` (never used to choose anything; the figures
reported as the quality of the shipped configuration come from it).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from opsfabric.rag.corpus import LoadedCorpus
from opsfabric.rag.errors import GoldenSetError

REQUIRED = ("id", "question", "reference_answer", "doc_id", "passage", "split")
TUNE, HOLDOUT = "tune", "holdout"
SPLITS = (TUNE, HOLDOUT)


@dataclass(frozen=True)
class GoldenItem:
    id: str
    question: str
    reference_answer: str
    doc_id: str
    passage: str
    split: str  # TUNE or HOLDOUT


def items_in_split(items: list[GoldenItem], split: str | None) -> list[GoldenItem]:
    """The items of one split (all items for None). Raises GoldenSetError for an unknown split."""
    if split is None:
        return list(items)
    if split not in SPLITS:
        raise GoldenSetError(f"unknown golden split {split!r}: expected one of {list(SPLITS)}")
    return [i for i in items if i.split == split]


def squash(text: str) -> str:
    """Whitespace-insensitive form used to compare passages with document and chunk text."""
    return re.sub(r"\s+", " ", text).strip()


def read_golden_source(path: Path) -> list[GoldenItem]:
    """Parse the JSONL source. Raises GoldenSetError naming file, line and field."""
    if not path.exists():
        raise GoldenSetError(f"golden QA set not found: {path} (rag.golden.source)")
    items, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GoldenSetError(f"{path}:{number}: not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise GoldenSetError(f"{path}:{number}: expected a JSON object with fields {list(REQUIRED)}, got {type(row).__name__}")
        missing = [k for k in REQUIRED if k not in row or row[k] is None or (isinstance(row[k], str) and not row[k].strip())]
        if missing:
            raise GoldenSetError(f"{path}:{number}: missing or empty field(s) {missing}")
        not_text = [k for k in REQUIRED if not isinstance(row[k], str)]
        if not_text:
            raise GoldenSetError(f"{path}:{number}: field(s) {not_text} must be strings, got {[type(row[k]).__name__ for k in not_text]}")
        if row["split"] not in SPLITS:
            raise GoldenSetError(f"{path}:{number}: field 'split' is {row['split']!r}, expected one of {list(SPLITS)}")
        if row["id"] in seen:
            raise GoldenSetError(f"{path}:{number}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        items.append(GoldenItem(**{k: row[k] for k in REQUIRED}))
    if not items:
        raise GoldenSetError(f"{path}: the golden QA set is empty (rag.golden.source): nothing to evaluate an index on")
    return items


def validate_against_corpus(items: list[GoldenItem], corpus: LoadedCorpus, source: Path) -> None:
    """Every reference passage must occur (whitespace-insensitively) in its cleaned document."""
    texts = {d.doc_id: squash(d.text) for d in corpus.documents}
    problems = []
    for item in items:
        if item.doc_id not in texts:
            problems.append(f"{item.id}: document {item.doc_id!r} is not in the corpus")
        elif squash(item.passage) not in texts[item.doc_id]:
            problems.append(f"{item.id}: passage not found in {item.doc_id}: {item.passage[:60]!r}")
    if problems:
        raise GoldenSetError(f"{source}: {len(problems)} item(s) do not match the corpus: " + "; ".join(problems))


def prepare_golden_set(items: list[GoldenItem], corpus: LoadedCorpus, source: Path, out: Path) -> Path:
    """Validate and write the prepared golden table (Parquet) with the corpus hash it was checked on."""
    import pandas as pd

    validate_against_corpus(items, corpus, source)
    frame = pd.DataFrame([asdict(i) for i in items])
    frame["corpus_hash"] = corpus.corpus_hash
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    return out


def read_golden(prepared: Path, source: Path) -> list[GoldenItem]:
    """The prepared table when it exists (DVC output), else the validated-on-read JSONL source."""
    if prepared.exists():
        import pandas as pd

        frame = pd.read_parquet(prepared)
        missing = [k for k in REQUIRED if k not in frame.columns]
        if missing:  # written by an older version: evaluating it would silently drop the splits
            raise GoldenSetError(
                f"{prepared}: prepared golden table lacks column(s) {missing}; rebuild it from {source} "
                "(dvc repro rag_golden, or any RAG flow)"
            )
        return [GoldenItem(**{k: str(row[k]) for k in REQUIRED}) for row in frame.to_dict("records")]
    return read_golden_source(source)
