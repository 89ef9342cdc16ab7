"""A trained champion in a throwaway state, shared by the ops flow tests (one training per session).

The churn data are generated with ``params.yaml``'s ``ml.generate`` values into a temp folder: the
generator is seeded, so the reference file has the bytes (md5) that the committed ``dvc.lock``
records for ``data/raw/churn/reference.parquet``, while living outside the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opsfabric.settings import PROJECT_ROOT, load_settings


@pytest.fixture(scope="session")
def trained_platform(prefect_api, tmp_path_factory):
    """``(config_files, settings, train result)`` after one real ``train`` flow run (validate → train → gate → register),
    started from deployment ``train/ops-lineage-test``."""
    from flows.train import train_flow
    from opsfabric.ml.datagen import generate_churn_batches

    tmp = tmp_path_factory.mktemp("ops-platform")
    generate = load_settings().ml.generate
    data = tmp / "data"
    generate_churn_batches(data, seed=generate.seed, reference_rows=generate.reference_rows, batch_rows=generate.batch_rows,
                           start_date=generate.start_date)
    dataset = yaml.safe_load((PROJECT_ROOT / "configs/base.yaml").read_text())["dataset"]
    dataset.update(data_dir=str(data), reference=str(data / "reference.parquet"), batches=[str(data / "batch_01.parquet")])
    overlay = tmp / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp / "state"), "dataset": dataset,
                                       "ml": {"train": {"model": {"hyperparameters": {"n_estimators": 40}}}}}))
    config_files = [str(overlay)]
    # Started as a deployment's flow run (run here, in-process: no worker), so the MLflow runs carry
    # prefect.deployment_id and lineage can name the deployment.
    from prefect.deployments import run_deployment
    from prefect.flow_engine import run_flow

    train_flow.to_deployment(name="ops-lineage-test").apply()
    flow_run = run_deployment("train/ops-lineage-test", parameters={"config_files": config_files}, timeout=0)
    result = run_flow(train_flow, flow_run=flow_run, parameters={"config_files": config_files})
    return config_files, load_settings(*config_files), result


@pytest.fixture
def empty_platform(tmp_path: Path) -> list[str]:
    """Config files of a state folder in which nothing has run yet."""
    overlay = tmp_path / "empty.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    return [str(overlay)]
