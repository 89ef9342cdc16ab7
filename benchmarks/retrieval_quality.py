"""Retrieval quality of hybrid search vs plain BM25 and plain dense, on the golden QA set. Prints its figures.

Run: ``.venv/bin/python benchmarks/retrieval_quality.py [--chunk-sizes 200,300] [--sweep]``

For each chunk size the sample corpus is ingested once into a temporary state folder; the three
retrievers then rank the same chunks for the same golden questions. A chunk is relevant when it
holds the question's reference passage (``opsfabric.rag.evaluation.is_relevant``). ``--sweep``
also prints hybrid with other fusion weights and RRF constants: the configured values
(params.yaml) were chosen from this table, on these same 34 questions, so the hybrid figures are
optimistic by the usual amount of tuning on the test set.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsfabric.runtime_env import configure_runtime_env  # noqa: E402

configure_runtime_env()

METRICS = ("hit_at_1", "hit_at_3", "hit_at_5", "mrr", "ndcg_at_5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-sizes", default="", help="comma-separated chunk sizes (default: the configured one)")
    parser.add_argument("--sweep", action="store_true", help="also print hybrid over a grid of fusion settings")
    args = parser.parse_args()

    from opsfabric.rag import steps, store
    from opsfabric.rag.evaluation import evaluate_retrieval
    from opsfabric.rag.golden import read_golden_source
    from opsfabric.rag.retrieval import Retriever
    from opsfabric.settings import load_settings

    base = steps.rag_config(load_settings())
    golden = read_golden_source(base.golden_source)
    sizes = [int(s) for s in args.chunk_sizes.split(",") if s] or [base.rag.chunking.chunk_size]
    embed_model = steps.embedding_model(base)
    print(f"golden set: {len(golden)} questions; corpus: {base.rag.corpus.path}; retrieval config: {base.rag.retrieval.model_dump()}")
    print(f"{'chunk':>5} {'chunks':>6}  {'retriever':<34}" + "".join(f"{m:>10}" for m in METRICS))
    for size in sizes:
        overlap = min(base.rag.chunking.chunk_overlap, size // 4)
        with tempfile.TemporaryDirectory() as tmp:
            config = steps.rag_config(load_settings(state_dir=Path(tmp), rag={"chunking": {"chunk_size": size, "chunk_overlap": overlap}}))
            report = steps.ingest_corpus(config, embed_model, show_progress=False)
            client = store.open_qdrant(config)
            params = config.rag.retrieval
            rows = [("bm25", params, "bm25"), ("dense", params, "dense"),
                    (f"hybrid (configured: w={params.dense_weight}/{params.bm25_weight}, k={params.rrf_k:g})", params, "hybrid")]
            if args.sweep:
                for bm25_weight, rrf_k in itertools.product((0.5, 0.75, 1.0, 1.5), (10.0, 60.0)):
                    swept = params.model_copy(update={"bm25_weight": bm25_weight, "rrf_k": rrf_k})
                    rows.append((f"hybrid w=1/{bm25_weight} k={rrf_k:g}", swept, "hybrid"))
            for name, retrieval_params, mode in rows:
                scores = evaluate_retrieval(Retriever(client, report.collection, embed_model, retrieval_params), golden, mode)
                print(f"{size:>5} {report.chunks_total:>6}  {name:<34}" + "".join(f"{scores[m]:>10.3f}" for m in METRICS))
            store.close_qdrant(config)


if __name__ == "__main__":
    main()
