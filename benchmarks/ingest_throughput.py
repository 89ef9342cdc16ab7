"""Ingestion throughput vs raw MiniLM, and the cost of an incremental re-run. Prints its figures.

Run: ``.venv/bin/python benchmarks/ingest_throughput.py [--copies 4]``

1. Full ingestion (load → clean → chunk → embed → upsert into a new Qdrant collection, docstore
   written) of a corpus made by copying the sample corpus ``--copies`` times (each copy under its
   own folder, with the copy number in every file so no two documents are equal), in a temporary
   state folder. chunks/s of the whole pipeline is compared with ``SentenceTransformer.encode`` of
   the very same chunk texts, batch size and normalisation, measured in the same process right
   after (goal: ratio >= 0.9).
2. 1% of the documents are changed and ingestion runs again (a new index version built from the
   previous one: points copied, only changed documents re-embedded). Its wall time is compared
   with the full build (goal: <= 3%).
"""

from __future__ import annotations

import argparse
import math
import random
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the sample corpus (4 x 27 documents)")
    args = parser.parse_args()

    from opsfabric.rag import ingest, steps, store
    from opsfabric.rag.embeddings import load_sentence_transformer
    from opsfabric.settings import PROJECT_ROOT, load_settings

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_corpus(PROJECT_ROOT / "data/corpus", tmp / "corpus", args.copies)
        config = steps.rag_config(load_settings(state_dir=tmp / "state", rag={"corpus": {"path": str(tmp / "corpus")}}))
        embed_model = steps.embedding_model(config)
        embed_model.get_text_embedding("warm-up")  # model load and first-call costs out of both timings

        started = time.perf_counter()  # from the raw files: loading and cleaning are part of the build
        full = ingest.build_index_version(config, ingest.load_configured_corpus(config), embed_model, show_progress=False)
        full_seconds = time.perf_counter() - started

        client = store.open_qdrant(config)
        texts = [chunk.text for chunk in _chunks(client, full.collection)]
        model = load_sentence_transformer()
        started = time.perf_counter()
        model.encode(texts, batch_size=config.rag.embedding.batch_size, normalize_embeddings=True, show_progress_bar=False)
        raw_seconds = time.perf_counter() - started

        # 1% of the documents (rounded up), a seeded sample of the text documents
        changed = random.Random(7).sample([f for f in files if f.suffix != ".pdf"], math.ceil(len(files) * 0.01))
        for path in changed:
            path.write_text(path.read_text(encoding="utf-8") + "\n\nEdited for the incremental benchmark.\n", encoding="utf-8")
        started = time.perf_counter()
        incremental = ingest.build_index_version(config, ingest.load_configured_corpus(config), embed_model, show_progress=False)
        incremental_seconds = time.perf_counter() - started
        started = time.perf_counter()
        unchanged = ingest.build_index_version(config, ingest.load_configured_corpus(config), embed_model, show_progress=False)
        unchanged_seconds = time.perf_counter() - started
        store.close_qdrant(config)

    pipeline_rate = full.chunks_embedded / full_seconds
    raw_rate = len(texts) / raw_seconds
    print(f"corpus: {full.documents_seen} documents ({args.copies} copies of data/corpus), {full.chunks_total} chunks, "
          f"chunk_size={config.rag.chunking.chunk_size}, batch={config.rag.embedding.batch_size}")
    print(f"full ingestion:         {full_seconds:7.2f} s  {pipeline_rate:7.1f} chunks/s  (load+clean+chunk+embed+upsert+docstore)")
    print(f"raw encode, same chunks:{raw_seconds:7.2f} s  {raw_rate:7.1f} chunks/s  (SentenceTransformer.encode)")
    print(f"ratio pipeline/raw:     {pipeline_rate / raw_rate:7.3f}   (goal >= 0.9)")
    print(f"re-run, {len(changed)} of {len(files)} documents changed ({len(changed) / len(files):.1%}): {incremental_seconds:.2f} s, "
          f"{incremental.chunks_embedded} chunks embedded, {incremental.chunks_copied} copied from {incremental.base_collection} "
          f"in {incremental.copy_seconds:.2f} s")
    print(f"ratio re-run/full:      {incremental_seconds / full_seconds:7.3%}   (goal <= 3%)")
    print(f"re-run, nothing changed: {unchanged_seconds:.2f} s, status {unchanged.status}, {unchanged.chunks_embedded} chunks embedded")


def _chunks(client, collection):
    from opsfabric.rag import store
    from opsfabric.rag.retrieval import chunk_from_payload

    return [chunk_from_payload(pid, payload) for pid, payload in store.scroll_payloads(client, collection)]


if __name__ == "__main__":
    main()
