"""How Evidently drift checks scale with rows, and which sample size keeps the full-data verdict.

Synthetic reference/current tables with 20 features (14 numeric, 6 categorical); 6 features drift
(strong, moderate and one close to Evidently's threshold). For 10k, 100k and 1M rows per side we
time ``compute_drift`` on all rows and on samples, and compare each sample's verdict with the
full-data verdict: the set of drifted features and the retrain decision.

One sample proves little (a lucky seed keeps the verdict by chance), so every sample size is drawn
with ``--seeds`` different seeds (default 5: seeds 0..4; the pipeline's ``ml.drift.sample_rows``
uses seed 0) and the table prints how many of them kept the full-data verdict. Samples are drawn
with the pipeline's own ``sample_rows`` (same seed for both sides, as ``compute_drift`` does).

    python benchmarks/drift_scaling.py [--sizes 10000 100000 1000000] [--samples 5000 20000 50000] [--seeds 5]

The full run takes ~10 min on 2 cores (1M rows); ``--sizes 10000 100000`` takes a few minutes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from opsfabric.ml.dataset import FeatureSpec
from opsfabric.ml.drift import compute_drift, sample_rows
from opsfabric.ml.gate import should_retrain
from opsfabric.settings import DriftParams

NUMERIC = [f"num_{i:02d}" for i in range(14)]
CATEGORICAL = [f"cat_{i}" for i in range(6)]
LEVELS = list("abcde")
# column -> mean shift (in standard deviations) for numeric, probability mass moved for categorical
DRIFT = {"num_00": 1.0, "num_01": 0.5, "num_02": 0.25, "num_03": 0.12, "cat_0": 0.3, "cat_1": 0.15}


def make_table(n_rows: int, rng: np.random.Generator, drifted: bool) -> pd.DataFrame:
    data = {}
    for col in NUMERIC:
        shift = DRIFT.get(col, 0.0) if drifted else 0.0
        data[col] = rng.normal(shift, 1.0, n_rows)
    for col in CATEGORICAL:
        p = np.full(len(LEVELS), 1 / len(LEVELS))
        if drifted and col in DRIFT:
            p = p * (1 - DRIFT[col])
            p[0] += DRIFT[col]
        data[col] = rng.choice(LEVELS, n_rows, p=p)
    return pd.DataFrame(data)


def verdict(reference, current, spec, sample: int | None, seed: int = 0):
    start = time.perf_counter()
    report = compute_drift(sample_rows(reference, sample, seed), sample_rows(current, sample, seed), spec, batch="bench")
    seconds = time.perf_counter() - start
    decision = should_retrain(report.summary(), DriftParams())
    return seconds, set(report.drifted_features), decision.approved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="rows per side")
    parser.add_argument("--samples", type=int, nargs="+", default=[5_000, 20_000, 50_000], help="sample sizes (rows per side)")
    parser.add_argument("--seeds", type=int, default=5, help="sampling seeds per sample size (at least 5)")
    args = parser.parse_args()
    if args.seeds < 5:
        parser.error("--seeds must be at least 5: one or two seeds say nothing about how often a sample keeps the verdict")
    spec = FeatureSpec(target="y", numeric=NUMERIC, categorical=CATEGORICAL)
    rng = np.random.default_rng(0)
    compute_drift(make_table(2000, rng, False), make_table(2000, rng, True), spec, batch="warm-up")
    print(f"{'rows/side':>10} {'sample':>8} {'seconds':>8} {'x of first full':>15} {'drifted':>10} "
          f"{'same features':>14} {'same verdict':>13}  (sample rows: median seconds, drifted min-max, agreement over {args.seeds} seeds)")
    base = None
    summary = []
    for n_rows in args.sizes:
        reference, current = make_table(n_rows, rng, False), make_table(n_rows, rng, True)
        full_seconds, full_features, full_retrain = verdict(reference, current, spec, None)
        base = base or full_seconds
        print(f"{n_rows:>10} {'all':>8} {full_seconds:>8.2f} {full_seconds / base:>15.1f} {len(full_features):>10} {'-':>14} {'-':>13}"
              f"  retrain={full_retrain}", flush=True)
        for sample in [s for s in args.samples if s < n_rows]:
            runs = [verdict(reference, current, spec, sample, seed) for seed in range(args.seeds)]
            seconds = float(np.median([r[0] for r in runs]))
            counts = [len(r[1]) for r in runs]
            same_features = sum(r[1] == full_features for r in runs)
            same_verdict = sum(r[2] == full_retrain for r in runs)
            differs = sorted({c for r in runs for c in r[1] ^ full_features})
            summary.append((n_rows, sample, same_features, same_verdict))
            print(
                f"{n_rows:>10} {sample:>8} {seconds:>8.2f} {seconds / base:>15.1f} {f'{min(counts)}-{max(counts)}':>10} "
                f"{f'{same_features}/{args.seeds}':>14} {f'{same_verdict}/{args.seeds}':>13}"
                + (f"  differs on {differs}" if differs else ""),
                flush=True,
            )
    print(f"drifted by construction: {sorted(DRIFT)} (num_03 and cat_1 sit near Evidently's 0.1 threshold)")
    for sample in sorted({s for _, s, _, _ in summary}):
        rows = [r for r in summary if r[1] == sample]
        kept = all(f == args.seeds and v == args.seeds for _, _, f, v in rows)
        print(f"sample {sample}: kept the full-data verdict for every seed at every size tested: {'yes' if kept else 'NO'} "
              f"({', '.join(f'{n}: features {f}/{args.seeds}, retrain {v}/{args.seeds}' for n, _, f, v in rows)})")


if __name__ == "__main__":
    main()
