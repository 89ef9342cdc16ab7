"""Configuration: typed, typo-proof, overridable from files and the environment."""

from __future__ import annotations

import pytest

from opsfabric.settings import ConfigError, load_settings

pytestmark = pytest.mark.unit


def test_repo_configs_load_with_embedded_defaults():
    settings = load_settings()
    assert settings.tracking_uri.startswith("sqlite:///") and settings.tracking_uri.endswith("mlflow/mlflow.db")
    assert settings.dataset.target == "churned" and len(settings.dataset.batches) == 4
    assert settings.ml.gate.metric == "roc_auc"


def test_typo_in_yaml_names_the_key_and_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ml:\n  gate:\n    min_improvment: 0.1\n")
    with pytest.raises(ConfigError, match=r"ml\.gate\.min_improvment: Extra inputs are not permitted \(set in .*bad\.yaml\)"):
        load_settings(bad)


@pytest.mark.parametrize(
    "section, yaml_text, key",
    [
        ("rag", "rag:\n  chunking:\n    chunk_sise: 10\n", "rag.chunking.chunk_sise"),
        ("rag", "rag:\n  retreival: {}\n", "rag.retreival"),
        ("agents", "agents:\n  profile: ops\n", "agents.profile"),
        ("orchestration", "orchestration:\n  lock:\n    kind: file\n    timeout: 3\n", "orchestration.lock.timeout"),
        ("tracking", "tracking:\n  url: http://x\n", "tracking.url"),
        ("dataset", "dataset:\n  name: x\n  targett: y\n", "dataset.targett"),
    ],
)
def test_a_typo_in_any_section_fails_at_load(tmp_path, section, yaml_text, key):
    bad = tmp_path / f"{section}.yaml"
    bad.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert f"{key}: Extra inputs are not permitted (set in {bad})" in str(info.value)


def test_a_typo_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("OPSFABRIC_RAG__RETRIEVAL__TOPK", "3")
    with pytest.raises(ConfigError, match=r"rag\.retrieval\.TOPK|rag\.retrieval\.topk"):
        load_settings()
    with pytest.raises(ConfigError, match="environment variable OPSFABRIC_RAG__RETRIEVAL__TOPK"):
        load_settings()


def test_bad_value_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rag:\n  chunking:\n    chunk_size: 50\n    chunk_overlap: 50\n")
    with pytest.raises(ConfigError, match=r"rag\.chunking: Value error, rag\.chunking\.chunk_overlap \(50\) must be < chunk_size"):
        load_settings(bad)


def test_lock_kind_is_a_discriminated_union(tmp_path):
    good = tmp_path / "lock.yaml"
    good.write_text("orchestration:\n  lock:\n    kind: prefect\n    timeout_seconds: 9\n")
    lock = load_settings(good).orchestration.lock
    assert (lock.kind, lock.timeout_seconds, lock.prefect_limit_prefix) == ("prefect", 9.0, "opsfabric")
    assert load_settings().orchestration.lock.kind == "file"


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
    assert settings.orchestration.lock.kind == "prefect"  # several machines: the lock lives in the Prefect server
    assert settings.tracking.artifact_location.startswith("mlflow-artifacts:")  # artifacts go through the server to S3
    rag = settings.rag
    assert rag.store.url is None  # Qdrant stays in local mode: no server binary to test against here (docs/scaled_out.md)
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


def test_a_mapping_whose_kind_changes_is_replaced_not_merged(tmp_path, monkeypatch):
    # base.yaml spells out the offline planner's keys; another kind must not inherit them
    overlay = tmp_path / "endpoint.yaml"
    overlay.write_text("agents:\n  model:\n    kind: openai\n    base_url: http://127.0.0.1:9/v1\n")
    model = load_settings(overlay).agents.model
    assert (model.kind, model.base_url) == ("openai", "http://127.0.0.1:9/v1")
    assert load_settings(agents={"model": {"kind": "openai", "base_url": "http://x/v1"}}).agents.model.kind == "openai"
    monkeypatch.setenv("OPSFABRIC_AGENTS__MODEL__KIND", "openai")
    monkeypatch.setenv("OPSFABRIC_AGENTS__MODEL__BASE_URL", "http://127.0.0.1:9/v1")
    assert load_settings().agents.model.kind == "openai"
    # the same kind still merges key by key
    same = tmp_path / "same.yaml"
    same.write_text("agents:\n  model:\n    kind: offline\n    min_margin: 0.05\n")
    monkeypatch.delenv("OPSFABRIC_AGENTS__MODEL__KIND")
    monkeypatch.delenv("OPSFABRIC_AGENTS__MODEL__BASE_URL")
    model = load_settings(same).agents.model
    assert (model.min_margin, model.min_similarity) == (0.05, 0.30)


def test_the_local_embedding_backend_refuses_a_model_it_does_not_have(tmp_path):
    bad = tmp_path / "emb.yaml"
    bad.write_text("rag:\n  embedding:\n    model: bge-large-en\n")
    with pytest.raises(ConfigError, match=r"rag\.embedding: Value error, rag\.embedding\.model 'bge-large-en' is not available offline"):
        load_settings(bad)
    ok = tmp_path / "endpoint.yaml"
    ok.write_text("rag:\n  embedding:\n    backend: openai\n    model: bge-large-en\n    base_url: http://127.0.0.1:9/v1\n")
    assert load_settings(ok).rag.embedding.model == "bge-large-en"
