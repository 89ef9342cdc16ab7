"""Configuration: typed, typo-proof, overridable from files and the environment."""

from __future__ import annotations

import pydantic
import pytest

from opsfabric.settings import ConfigError, load_settings

pytestmark = pytest.mark.unit


def test_repo_configs_load_with_embedded_defaults():
    settings = load_settings()
    assert settings.tracking_uri.startswith("sqlite:///") and settings.tracking_uri.endswith("mlflow/mlflow.db")
    assert settings.dataset.target == "churned" and len(settings.dataset.batches) == 4
    assert settings.ml.gate.metric == "roc_auc"


def test_typo_in_yaml_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ml:\n  gate:\n    min_improvment: 0.1\n")
    with pytest.raises(pydantic.ValidationError, match="min_improvment"):
        load_settings(bad)


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_settings(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("ml: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_settings(broken)


def test_environment_overrides_yaml(monkeypatch):
    monkeypatch.setenv("OPSFABRIC_TRACKING__URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("OPSFABRIC_ORCHESTRATION__TASK_RUNNER", "dask")
    settings = load_settings()
    assert settings.tracking_uri == "http://mlflow.internal:5000"
    assert settings.orchestration.task_runner == "dask"


def test_dataset_variant_replaces_the_whole_dataset_section():
    settings = load_settings("configs/datasets/breast_cancer.yaml")
    assert settings.dataset.name == "breast_cancer"
    assert settings.dataset.categories == {} and settings.dataset.numeric_features is None
    assert settings.ml.registered_model == "breast-cancer-classifier"
    assert settings.ml.gate.metric == "roc_auc"  # other sections still merge


def test_server_profile_switches_engines_by_config_only():
    settings = load_settings("configs/profiles/server.yaml")
    assert settings.tracking_uri.startswith("http://")
    assert settings.orchestration.task_runner == "dask"
    from opsfabric.rag.settings import rag_settings

    rag = rag_settings(settings)
    assert rag.store.url.startswith("http://")
    assert rag.store.alias == "docs-live" and rag.chunking.chunk_size > 0  # the rest of `rag` still merges


def test_concurrent_loads_keep_their_own_files(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    overlays = []
    for i in range(8):
        path = tmp_path / f"o{i}.yaml"
        path.write_text(f"ml:\n  train:\n    seed: {i}\n")
        overlays.append(path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        seeds = list(pool.map(lambda p: load_settings(p).ml.train.seed, overlays * 5))
    assert seeds == list(range(8)) * 5
