"""Ingestion throughput vs raw MiniLM, and the cost of an incremental re-run. Prints its figures.

Run: ``.venv/bin/python benchmarks/ingest_throughput.py [--copies 4] [--rounds 2] [--changed-share 0.02]``

The corpus is the sample corpus copied ``--copies`` times (each copy in its own folder, the copy
number written into every text file so no two documents are equal). Each round, in one process:

* raw: ``SentenceTransformer.encode`` of the very chunk texts the pipeline embeds (same splitter,
  batch size and normalisation);
* full: the whole ingestion from the raw files into a fresh state folder (load → clean → chunk →
  embed → BM25 sparse vectors → upsert into a new Qdrant collection → docstore);
  goal: chunks/s of full >= 0.9 x chunks/s of raw;

and, after both:

* re-run: ``--changed-share`` of the documents (2%, at least one) edited, ingestion again (a new
  index version built from the previous one: points copied, only changed chunks embedded);
  goal: <= 3% of the same round's full build;
* re-run with nothing changed.

This shared machine varies by about ±15% between identical runs, so the two sides are compared
within a round and the side that runs first alternates from round to round (odd rounds raw
first, even rounds full first): a drift over the run, or a first-run penalty, hits both sides.
Use an even ``--rounds``. The summary gives the per-round ratios and their median; a goal is
"met" only when the median meets it, and the count of rounds that met it is printed too.
"""

from __future__ import annotations

import argparse
import random
import statistics
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsfabric.runtime_env import configure_runtime_env  # noqa: E402

configure_runtime_env()


def make_corpus(source: Path, target: Path, copies: int) -> list[Path]:
    files = []
    for n in range(copies):
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name != "SOURCES.md":
                out = target / f"copy{n:02d}" / path.relative_to(source)
                out.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".pdf":
                    shutil.copy2(path, out)  # identical bytes across copies: same chunks, different doc ids
                else:
                    out.write_text(f"Copy {n}.\n\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
                files.append(out)
    return files


def chunk_texts(config) -> list[str]:
    """The texts the pipeline embeds: the same splitter over the same cleaned documents."""
    from llama_index.core.schema import MetadataMode

    from opsfabric.rag import ingest

    documents = [ingest.to_llama_document(d) for d in ingest.load_configured_corpus(config).documents]
    nodes = ingest.make_splitter(config)(documents)
    return [node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]


def one_round(root: Path, copies: int, embed_model, raw_first: bool, changed_share: float) -> dict:
    from opsfabric.rag import ingest, qdrant
    from opsfabric.rag.embeddings import load_sentence_transformer
    from opsfabric.rag.settings import RagConfig
    from opsfabric.settings import PROJECT_ROOT, load_settings

    files = make_corpus(PROJECT_ROOT / "data/corpus", root / "corpus", copies)
    config = RagConfig(load_settings(state_dir=root / "state", rag={"corpus": {"path": str(root / "corpus")}}))
    texts = chunk_texts(config)
    shutil.rmtree(root / "state")  # the full build starts from nothing, not even the clean-text cache

    def raw() -> float:
        started = time.perf_counter()
        load_sentence_transformer().encode(texts, batch_size=config.rag.embedding.batch_size, normalize_embeddings=True, show_progress_bar=False)
        return time.perf_counter() - started

    def full_build():
        started = time.perf_counter()
        report = ingest.build_index_version(config, ingest.load_configured_corpus(config), embed_model, show_progress=False)
        return report, time.perf_counter() - started

    if raw_first:
        raw_seconds = raw()
        full, full_seconds = full_build()
    else:
        full, full_seconds = full_build()
        raw_seconds = raw()
    assert full.chunks_embedded == len(texts), (full.chunks_embedded, len(texts))

    editable = [f for f in files if f.suffix != ".pdf"]
    changed = random.Random(7).sample(editable, max(1, round(len(files) * changed_share)))
    for path in changed:
        path.write_text(path.read_text(encoding="utf-8") + "\n\nEdited for the incremental benchmark.\n", encoding="utf-8")
    started = time.perf_counter()
    rerun = ingest.build_index_version(config, ingest.load_configured_corpus(config), embed_model, show_progress=False)
    rerun_seconds = time.perf_counter() - started
    started = time.perf_counter()
    unchanged = ingest.build_index_version(config, ingest.load_configured_corpus(config), embed_model, show_progress=False)
    unchanged_seconds = time.perf_counter() - started
    qdrant.close_client(config)
    return {
        "order": "raw, full" if raw_first else "full, raw",
        "documents": full.documents_seen, "changed": len(changed), "chunks": len(texts),
        "raw_s": raw_seconds, "full_s": full_seconds, "rerun_s": rerun_seconds, "unchanged_s": unchanged_seconds,
        "rerun": rerun, "unchanged": unchanged,
    }


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the sample corpus (4 x 27 documents)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the side that runs first alternates, so use an even number")
    parser.add_argument("--changed-share", type=float, default=0.02, help="share of documents edited before the incremental re-run")
    args = parser.parse_args()

    from opsfabric.rag.embeddings import configured_embedding
    from opsfabric.rag.settings import RagConfig
    from opsfabric.settings import load_settings

    embed_model = configured_embedding(RagConfig(load_settings()))
    embed_model.get_text_embedding("warm-up")  # model load and first-call costs out of every timing
    rounds = []
    for n in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            r = one_round(Path(tmp), args.copies, embed_model, raw_first=n % 2 == 0, changed_share=args.changed_share)
        r["throughput_ratio"] = r["raw_s"] / r["full_s"]  # chunks/s of full over chunks/s of raw: same chunks
        r["rerun_share"] = r["rerun_s"] / r["full_s"]
        rounds.append(r)
        print(f"round {n + 1} ({r['order']} first): raw encode {r['raw_s']:6.2f} s | full ingestion {r['full_s']:6.2f} s | "
              f"ratio {r['throughput_ratio']:.3f} | re-run {r['rerun_s']:.2f} s ({r['rerun_share']:.2%}, "
              f"copy {r['rerun'].copy_seconds:.2f} s) | unchanged {r['unchanged_s']:.2f} s", flush=True)

    r0 = rounds[0]
    ratios = [r["throughput_ratio"] for r in rounds]
    shares = [r["rerun_share"] for r in rounds]
    ratio, share = statistics.median(ratios), statistics.median(shares)
    full = statistics.median(r["full_s"] for r in rounds)
    raw = statistics.median(r["raw_s"] for r in rounds)
    copy_share = statistics.median(r["rerun"].copy_seconds / r["full_s"] for r in rounds)
    inc = rounds[-1]["rerun"]
    print(f"\ncorpus: {r0['documents']} documents ({args.copies} copies of data/corpus), {r0['chunks']} chunks; "
          f"{len(rounds)} rounds, first side alternating; medians over rounds")
    print(f"full ingestion:          {full:7.2f} s  {r0['chunks'] / full:6.1f} chunks/s  (load+clean+chunk+embed+sparse+upsert+docstore)")
    print(f"raw encode, same chunks: {raw:7.2f} s  {r0['chunks'] / raw:6.1f} chunks/s  (SentenceTransformer.encode)")
    print(f"ratio pipeline/raw:      {ratio:7.3f}   per round {', '.join(f'{x:.3f}' for x in ratios)}   "
          f"(goal >= 0.9: {met(ratio >= 0.9)}; {sum(x >= 0.9 for x in ratios)} of {len(rounds)} rounds)")
    print(f"re-run, {r0['changed']} of {r0['documents']} documents changed ({r0['changed'] / r0['documents']:.1%}): "
          f"last round {inc.chunks_embedded} chunks embedded, {inc.chunks_reused} reused, "
          f"{inc.chunks_copied} copied from {inc.base_collection}")
    print(f"ratio re-run/full:       {share:7.3%}   per round {', '.join(f'{x:.2%}' for x in shares)}   "
          f"(goal <= 3%: {met(share <= 0.03)}; {sum(x <= 0.03 for x in shares)} of {len(rounds)} rounds)")
    print(f"  of which copying the previous version's points: {copy_share:.3%}; the rest: {share - copy_share:.3%}")
    unchanged = ", ".join(f"{r['unchanged_s']:.2f} s" for r in rounds)
    print(f"re-run, nothing changed: {unchanged}, "
          f"status {rounds[-1]['unchanged'].status}, {rounds[-1]['unchanged'].chunks_embedded} chunks embedded")


if __name__ == "__main__":
    main()
