"""Retrieval quality: parameters chosen on the tune split, reported on the holdout split. Prints its figures.

Run: ``.venv/bin/python benchmarks/retrieval_quality.py [--chunk-sizes 128,200,256,300,400]
[--bm25-weights 0.5,0.75,1,1.5,2] [--rrf-ks 10,30,60]``

The golden set (``data/golden/rag_qa.jsonl``) has two splits. ``tune`` questions are the ones
parameters may be chosen on; ``holdout`` questions were written apart and never choose anything.

1. Tune. For every chunk size the sample corpus is ingested once into a temporary state folder;
   BM25, dense and hybrid over a grid of fusion settings (dense weight 1, BM25 weight and RRF
   constant varied: RRF only depends on the ratio of the two weights) rank the chunks for the
   tune questions only. The chosen configuration is the (chunk size, BM25 weight, RRF k) with the
   best tune MRR of hybrid; ties go to the higher tune hit@1, then to the smallest change from the
   configured values (params.yaml; sum of |log(new/configured)| over the three parameters), so a
   parameter the tune split cannot tell apart is not changed.
2. Holdout. The chosen configuration is evaluated on the holdout questions, BM25, dense and hybrid
   side by side, with a paired comparison of hybrid and BM25 over the same questions (questions
   where hybrid ranks the first relevant chunk higher / lower, and a seeded bootstrap 95% interval
   of the MRR difference). When the choice differs from params.yaml, the configured values are
   evaluated on the holdout too, for the record: that row must not be used to choose between the
   two (that would be tuning on the holdout).

A chunk is relevant when it holds the question's reference passage
(``opsfabric.rag.evaluation.is_relevant``). About 3 minutes on 2 cores with the default grid.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsfabric.runtime_env import configure_runtime_env  # noqa: E402

configure_runtime_env()

METRICS = ("hit_at_1", "hit_at_3", "hit_at_5", "mrr", "ndcg_at_5")
BOOTSTRAP_SAMPLES = 10_000


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def paired_comparison(rows_a: list[dict], rows_b: list[dict], metric: str = "mrr", seed: int = 0) -> dict:
    """Per-question difference a - b: wins, losses, ties, mean and a bootstrap 95% interval."""
    by_id = {r["id"]: r[metric] for r in rows_b}
    diffs = [r[metric] - by_id[r["id"]] for r in rows_a]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(BOOTSTRAP_SAMPLES))
    return {
        "n": len(diffs),
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
        "mean": sum(diffs) / len(diffs),
        "low": means[int(0.025 * BOOTSTRAP_SAMPLES)],
        "high": means[int(0.975 * BOOTSTRAP_SAMPLES) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-sizes", default="128,200,256,300,400", help="comma-separated chunk sizes to tune over")
    parser.add_argument("--bm25-weights", default="0.5,0.75,1,1.5,2", help="BM25 weights to tune over (dense weight 1)")
    parser.add_argument("--rrf-ks", default="10,30,60", help="RRF constants to tune over")
    args = parser.parse_args()

    from opsfabric.rag import ingest, qdrant
    from opsfabric.rag.embeddings import configured_embedding
    from opsfabric.rag.evaluation import aggregate_rows, retrieval_rows
    from opsfabric.rag.golden import HOLDOUT, TUNE, items_in_split, read_golden_source
    from opsfabric.rag.retrieval import Retriever
    from opsfabric.rag.settings import RagConfig
    from opsfabric.settings import load_settings

    base = RagConfig(load_settings())
    golden = read_golden_source(base.golden_source)
    tune, holdout = items_in_split(golden, TUNE), items_in_split(golden, HOLDOUT)
    configured = base.rag.retrieval
    configured_key = (base.rag.chunking.chunk_size, configured.bm25_weight / configured.dense_weight, configured.rrf_k)
    sizes = sorted({int(s) for s in args.chunk_sizes.split(",") if s} | {configured_key[0]})
    grid = sorted(set(itertools.product(floats(args.bm25_weights), floats(args.rrf_ks))) | {configured_key[1:]})
    embed_model = configured_embedding(base)
    print(f"golden set: {len(golden)} questions, {len(tune)} tune, {len(holdout)} holdout; corpus: {base.rag.corpus.path}")
    print(f"configured (params.yaml): chunk {configured_key[0]}/{base.rag.chunking.chunk_overlap}, "
          f"dense weight {configured.dense_weight}, bm25 weight {configured.bm25_weight}, rrf_k {configured.rrf_k:g}, "
          f"candidates {configured.candidates}")

    def table_row(size: int, chunks: int, name: str, scores: dict) -> str:
        return f"{size:>5} {chunks:>6}  {name:<30}" + "".join(f"{scores[m]:>10.3f}" for m in METRICS)

    header = f"{'chunk':>5} {'chunks':>6}  {'retriever':<30}" + "".join(f"{m:>10}" for m in METRICS)
    with contextlib.ExitStack() as stack:
        built = {}  # chunk size -> (config, collection, chunk count)
        print(f"\n== TUNE split ({len(tune)} questions): every configuration; the choice is made on this table only ==")
        print(header)
        tune_hybrid = {}  # (size, bm25 weight, rrf_k) -> tune scores of hybrid
        for size in sizes:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            overlap = min(base.rag.chunking.chunk_overlap, size // 4)
            config = RagConfig(load_settings(state_dir=tmp, rag={"chunking": {"chunk_size": size, "chunk_overlap": overlap}}))
            report = ingest.ingest_corpus(config, embed_model, show_progress=False)
            stack.callback(qdrant.close_client, config)
            built[size] = (config, report.collection, report.chunks_total)
            client = qdrant.open_client(config)
            for mode in ("bm25", "dense"):
                scores = aggregate_rows(retrieval_rows(Retriever(client, report.collection, embed_model, configured), tune, mode))
                print(table_row(size, report.chunks_total, mode, scores))
            for bm25_weight, rrf_k in grid:
                params = configured.model_copy(update={"dense_weight": 1.0, "bm25_weight": bm25_weight, "rrf_k": rrf_k})
                scores = aggregate_rows(retrieval_rows(Retriever(client, report.collection, embed_model, params), tune, "hybrid"))
                tune_hybrid[(size, bm25_weight, rrf_k)] = scores
                mark = "  <- configured" if (size, bm25_weight, rrf_k) == configured_key else ""
                print(table_row(size, report.chunks_total, f"hybrid w=1/{bm25_weight:g} k={rrf_k:g}", scores) + mark)

        def rank(key: tuple) -> tuple:
            s = tune_hybrid[key]
            change = sum(abs(math.log(new / old)) for new, old in zip(key, configured_key))
            return (round(s["mrr"], 9), round(s["hit_at_1"], 9), -round(change, 9))

        chosen = max(tune_hybrid, key=rank)
        c_size, c_weight, c_k = chosen
        ties = [k for k in tune_hybrid if rank(k)[:2] == rank(chosen)[:2]]
        print(f"\nchosen on tune (best hybrid MRR, then hit@1, then least change from params.yaml): chunk {c_size}, "
              f"bm25 weight {c_weight:g}, rrf_k {c_k:g}: tune MRR {tune_hybrid[chosen]['mrr']:.3f}, "
              f"hit@1 {tune_hybrid[chosen]['hit_at_1']:.3f}; tied on tune MRR and hit@1: "
              + ", ".join(f"{size}/w{w:g}/k{k:g}" for size, w, k in ties))
        if chosen == configured_key:
            print("the tune split keeps the configured values (params.yaml)")
        else:
            print(f"DIFFERS from params.yaml (chunk {configured_key[0]}, bm25 weight {configured_key[1]:g}, rrf_k {configured_key[2]:g}: "
                  f"tune MRR {tune_hybrid[configured_key]['mrr']:.3f}, hit@1 {tune_hybrid[configured_key]['hit_at_1']:.3f})")

        def holdout_block(title: str, key: tuple) -> dict:
            size, bm25_weight, rrf_k = key
            config, collection, chunks = built[size]
            client = qdrant.open_client(config)
            params = configured.model_copy(update={"dense_weight": 1.0, "bm25_weight": bm25_weight, "rrf_k": rrf_k})
            retriever = Retriever(client, collection, embed_model, params)
            rows = {mode: retrieval_rows(retriever, holdout, mode) for mode in ("bm25", "dense", "hybrid")}
            print(f"\n== HOLDOUT split ({len(holdout)} questions): {title} ==")
            print(header)
            for mode, label in (("bm25", "bm25"), ("dense", "dense"), ("hybrid", f"hybrid w=1/{bm25_weight:g} k={rrf_k:g}")):
                print(table_row(size, chunks, label, aggregate_rows(rows[mode])))
            hybrid, bm25 = aggregate_rows(rows["hybrid"]), aggregate_rows(rows["bm25"])
            cmp = paired_comparison(rows["hybrid"], rows["bm25"])
            print(f"hybrid vs BM25, per question (reciprocal rank): hybrid higher on {cmp['wins']}, "
                  f"lower on {cmp['losses']}, equal on {cmp['ties']} of {cmp['n']}; MRR difference {cmp['mean']:+.3f}, "
                  f"bootstrap 95% interval [{cmp['low']:+.3f}, {cmp['high']:+.3f}]")
            if cmp["mean"] > 0 and cmp["low"] > 0:
                verdict = "YES: hybrid's holdout MRR is higher than BM25's and the 95% interval excludes 0"
            elif cmp["mean"] > 0:
                verdict = "NOT SHOWN: hybrid's holdout MRR is higher than BM25's, but the 95% interval includes 0"
            elif cmp["mean"] == 0:
                verdict = "NO: hybrid and BM25 tie on the holdout MRR"
            else:
                verdict = "NO: BM25's holdout MRR is higher than hybrid's"
            print(f"hybrid beats BM25 on the holdout? {verdict} (hit@1 {hybrid['hit_at_1']:.3f} vs {bm25['hit_at_1']:.3f}, "
                  f"MRR {hybrid['mrr']:.3f} vs {bm25['mrr']:.3f})")
            return rows

        holdout_block("the configuration chosen on tune", chosen)
        if chosen != configured_key:
            holdout_block("the configured values (params.yaml), for the record only: not a basis for choosing", configured_key)


if __name__ == "__main__":
    main()
