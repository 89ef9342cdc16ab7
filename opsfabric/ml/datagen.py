"""Deterministic data for the ML pipeline.

``generate_churn_batches`` simulates a telecom's monthly customer snapshots: a reference batch and
four later production batches, each with labels (churn is observed a month later):

* ``batch_01``: same population, same behaviour (no drift; the monitor must stay quiet).
* ``batch_02``: covariate drift: a price rise and a shift to fibre and month-to-month contracts.
* ``batch_03``: concept drift: same population, but a competitor's offer changes *why* customers
  leave (long-tenure and two-year customers start leaving, support calls stop mattering).
* ``batch_04``: the new behaviour persists (a retrained champion should handle it).

``export_breast_cancer`` writes scikit-learn's bundled breast cancer set as CSV files, a second,
real dataset that exercises the "any CSV by configuration" path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CONTRACTS = ["month-to-month", "one-year", "two-year"]
INTERNET = ["dsl", "fiber", "none"]
PAYMENT = ["card", "bank_transfer", "electronic_check", "mailed_check"]


@dataclass(frozen=True)
class Population:
    """Knobs of the customer population for one batch."""

    contract_p: tuple[float, float, float] = (0.5, 0.3, 0.2)
    internet_p: tuple[float, float, float] = (0.4, 0.4, 0.2)
    charge_shift: float = 0.0
    support_rate: float = 1.2


@dataclass(frozen=True)
class Behaviour:
    """Coefficients of the churn log-odds for one batch."""

    intercept: float = -1.4
    month_to_month: float = 1.3
    two_year: float = -1.2
    tenure: float = -0.035
    charges: float = 0.018
    support_calls: float = 0.35
    fiber: float = 0.5
    electronic_check: float = 0.45
    products: float = -0.25


REFERENCE_POPULATION = Population()
REFERENCE_BEHAVIOUR = Behaviour()
DRIFTED_POPULATION = Population(
    contract_p=(0.75, 0.17, 0.08), internet_p=(0.15, 0.75, 0.10), charge_shift=28.0, support_rate=2.6
)
# Concept drift: a competitor targets loyal customers; contract length no longer protects,
# tenure now raises churn, support calls barely matter and price matters far more.
COMPETITOR_BEHAVIOUR = Behaviour(
    intercept=-1.0,
    month_to_month=-0.6,
    two_year=1.1,
    tenure=0.03,
    charges=0.045,
    support_calls=-0.05,
    fiber=-0.4,
    electronic_check=0.0,
    products=0.1,
)

BATCH_PLAN: list[tuple[str, Population, Behaviour]] = [
    ("batch_01", REFERENCE_POPULATION, REFERENCE_BEHAVIOUR),
    ("batch_02", DRIFTED_POPULATION, REFERENCE_BEHAVIOUR),
    ("batch_03", REFERENCE_POPULATION, COMPETITOR_BEHAVIOUR),
    ("batch_04", REFERENCE_POPULATION, COMPETITOR_BEHAVIOUR),
]


def simulate_customers(
    n_rows: int,
    snapshot_date: pd.Timestamp,
    population: Population,
    behaviour: Behaviour,
    rng: np.random.Generator,
    id_offset: int = 0,
) -> pd.DataFrame:
    """Draw ``n_rows`` customers and their churn label from a population and a behaviour."""
    contract = rng.choice(CONTRACTS, size=n_rows, p=population.contract_p)
    internet = rng.choice(INTERNET, size=n_rows, p=population.internet_p)
    payment = rng.choice(PAYMENT, size=n_rows, p=[0.3, 0.25, 0.3, 0.15])
    paperless = rng.choice(["yes", "no"], size=n_rows, p=[0.6, 0.4])
    tenure = rng.gamma(shape=2.0, scale=14.0, size=n_rows).clip(0, 72).round()
    base_charge = np.select([internet == "fiber", internet == "dsl"], [80.0, 55.0], default=25.0)
    monthly = (base_charge + rng.normal(0, 12, n_rows) + population.charge_shift).clip(15, 200).round(2)
    total = (monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.05, n_rows)).round(2)
    support = rng.poisson(population.support_rate, n_rows)
    products = rng.integers(1, 6, n_rows)
    age = rng.normal(45, 14, n_rows).clip(18, 90).round()

    b = behaviour
    logit = (
        b.intercept
        + b.month_to_month * (contract == "month-to-month")
        + b.two_year * (contract == "two-year")
        + b.tenure * (tenure - 24)
        + b.charges * (monthly - 65)
        + b.support_calls * support
        + b.fiber * (internet == "fiber")
        + b.electronic_check * (payment == "electronic_check")
        + b.products * (products - 3)
    )
    churned = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "customer_id": [f"C{id_offset + i:07d}" for i in range(n_rows)],
            "snapshot_date": pd.Timestamp(snapshot_date),
            "tenure_months": tenure.astype(int),
            "monthly_charges": monthly,
            "total_charges": total,
            "contract": contract,
            "internet_service": internet,
            "payment_method": payment,
            "paperless_billing": paperless,
            "support_calls": support.astype(int),
            "num_products": products.astype(int),
            "age": age.astype(int),
            "churned": churned,
        }
    )


def generate_churn_batches(
    out_dir: Path, *, seed: int, reference_rows: int, batch_rows: int, start_date: str
) -> dict[str, Path]:
    """Write ``reference.parquet`` and ``batch_01..04.parquet`` to ``out_dir``.

    Same seed, same bytes: every batch draws from its own child generator of one seeded
    ``SeedSequence``, so changing one batch's size never changes another batch.

    Returns:
        Batch name to written path, in time order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(1 + len(BATCH_PLAN))
    start = pd.Timestamp(start_date)
    plan = [("reference", REFERENCE_POPULATION, REFERENCE_BEHAVIOUR), *BATCH_PLAN]
    written: dict[str, Path] = {}
    for month, ((name, population, behaviour), child) in enumerate(zip(plan, seeds, strict=True)):
        n_rows = reference_rows if name == "reference" else batch_rows
        frame = simulate_customers(
            n_rows,
            start + pd.DateOffset(months=month),
            population,
            behaviour,
            np.random.default_rng(child),
            id_offset=month * 1_000_000,
        )
        path = out_dir / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        written[name] = path
    return written


def export_breast_cancer(out_dir: Path, *, seed: int) -> dict[str, Path]:
    """Write scikit-learn's bundled breast cancer data as ``reference.csv`` (70%) and ``batch_01.csv``."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cut = int(len(shuffled) * 0.7)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"reference": out_dir / "reference.csv", "batch_01": out_dir / "batch_01.csv"}
    shuffled.iloc[:cut].to_csv(written["reference"], index=False)
    shuffled.iloc[cut:].to_csv(written["batch_01"], index=False)
    return written
