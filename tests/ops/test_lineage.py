"""Lineage: pure walks over constructed records, then one walk over a real trained champion."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from opsfabric.errors import OpsFabricError
from opsfabric.ops.lineage import (
    LineageError,
    dvc_matches,
    openlineage_events,
    parse_ref,
    render_tree,
    trace_lineage,
)
from opsfabric.ops.records import (
    DatasetInput,
    IndexRecord,
    IndexRegistryRecord,
    Links,
    RunRecord,
    StaticRecords,
    VersionRecord,
    clean_commit,
    parse_dvc_lock,
)

ROOT = Path("/repo")
REF_MD5 = "792c4e43392b40b55f9e7f52fe358bb8"
BATCH_MD5 = "00427f604693f717d56e137d9c003ae8"
COMMIT = "24d3436b74e94f6de4cbe968eae8cb350774b269"
LOCK = """
schema: '2.0'
stages:
  generate:
    cmd: python -m opsfabric.ml.stages generate
    deps:
    - path: opsfabric/ml/datagen.py
      md5: 6ee66858bfa31365ac0a84c29d7a8678
    params:
      params.yaml:
        ml.generate:
          seed: 42
    outs:
    - path: data/raw/churn
      md5: 5bf55400fe52e0ea17332bad944ba5c4.dir
      nfiles: 5
  train:
    cmd: python -m opsfabric.ml.stages train
    deps:
    - path: data/raw/churn/reference.parquet
      md5: 792c4e43392b40b55f9e7f52fe358bb8
    params:
      params.yaml:
        ml.train:
          seed: 7
    outs:
    - path: models/model
      md5: 45cc74ab0763aa.dir
  monitor:
    cmd: python -m opsfabric.ml.stages monitor
    deps:
    - path: data/raw/churn
      md5: 5bf55400fe52e0ea17332bad944ba5c4.dir
    outs:
    - path: reports/drift
      md5: d08efa393974.dir
  rag_ingest:
    cmd: python -m opsfabric.rag.stages ingest
    deps:
    - path: data/corpus
      md5: aaaa0000aaaa0000aaaa0000aaaa0000.dir
"""
FLOW_RUN = "2cd72456-13b2-4f30-851b-21552c2bdcf5"
DEPLOYMENT = "9a1e4b7e-0000-4000-8000-000000000001"


def _run(run_id: str, experiment: str, name: str, *, status: str = "FINISHED", start: int = 1_000, tags=None, inputs=(), metrics=None, params=None):
    base = {"opsfabric.git_commit": COMMIT, "prefect.flow_run_id": FLOW_RUN, "prefect.flow_run_name": "ninja-grasshopper",
            "prefect.flow_name": "ml-pipeline"}
    return RunRecord(run_id, "1", experiment, name, status, start, start + 500, {**base, **(tags or {})}, metrics or {}, params or {}, tuple(inputs))


def _source(**overrides) -> StaticRecords:
    train = _run("a" * 32, "opsfabric-ml-training", "train-reference",
                 tags={"dvc.md5.reference": REF_MD5, "prefect.deployment_id": DEPLOYMENT, "gate.version": "1"},
                 inputs=[DatasetInput("reference-train", "f913806f", "/repo/data/raw/churn/reference.parquet", REF_MD5, "train"),
                         DatasetInput("reference-evaluation", "3914ce00", "/repo/data/raw/churn/reference.parquet", REF_MD5, "evaluation")],
                 metrics={"eval_roc_auc": 0.79})
    retrain = _run("b" * 32, "opsfabric-ml-training", "retrain-batch_02", start=3_000, tags={"opsfabric.git_commit": COMMIT + "-dirty"},
                   inputs=[DatasetInput("reference-train", "6ab6ba3f", "/repo/data/raw/churn/reference.parquet", REF_MD5, "train"),
                           DatasetInput("batch_02-train", "4f9f1a55", "/repo/data/raw/churn/batch_02.parquet", BATCH_MD5, "train")])
    monitor = _run("c" * 32, "opsfabric-ml-monitoring", "monitor-batch_02", start=2_000,
                   tags={"opsfabric.champion_version": "1", "drift.retrain": "True", "opsfabric.batch": "batch_02"},
                   inputs=[DatasetInput("batch_02", "727e7646", "/repo/data/raw/churn/batch_02.parquet", BATCH_MD5, "monitoring")],
                   metrics={"drift_share": 0.5})
    index_run = _run("d" * 32, "opsfabric-rag-index", "docs-v0001", tags={"dvc.md5.rag_corpus": "fc49d17664858b07", "rag.collection": "docs-v0001"},
                     params={"corpus_path": "data/corpus"})
    eval_run = _run("e" * 32, "opsfabric-rag-eval", "eval-docs-v0001", tags={"rag.index_run_id": "d" * 32, "rag.collection": "docs-v0001",
                                                                             "dvc.md5.rag_corpus": "fc49d17664858b07"})
    dvc_run = RunRecord("f" * 32, "1", "opsfabric-rag-index", "docs-v0002", "FINISHED", 5_000, 6_000, {"opsfabric.source": "dvc"})
    versions = [
        VersionRecord("churn-classifier", "1", "a" * 32, "models:/m-1", 1_500, {"gate.decision": "promoted", "eval_roc_auc": "0.79"}),
        VersionRecord("churn-classifier", "2", "b" * 32, "models:/m-2", 3_500, {"gate.decision": "promoted"}, ("champion",)),
    ]
    registry = IndexRegistryRecord("docs-live", (
        IndexRecord("docs-v0001", 1, "live", corpus_hash="fc49d17664858b07", config_hash="c70acb29ff65", mlflow_run_id="d" * 32, eval_run_id="e" * 32,
                    eval_scores={"holdout.hit_at_5": 0.93}, decision={"approved": True, "reasons": ["holdout.mrr=0.73 >= 0.65"]}),
        IndexRecord("docs-v0002", 2, "built", base_collection="docs-v0001", mlflow_run_id="f" * 32),
    ), ("docs-v0001",))
    values = dict(runs=[train, retrain, monitor, index_run, eval_run, dvc_run], model_versions=versions, registry=registry,
                  locks={COMMIT: parse_dvc_lock(LOCK, f"commit {COMMIT}"), None: parse_dvc_lock(LOCK, "work tree")})
    return StaticRecords(**{**values, **overrides})


def _trace(source, ref: str, **kwargs):
    return trace_lineage(source, parse_ref(ref), project_root=ROOT, path_hints={"agent_golden": "data/golden/agent"}, **kwargs)


# ---- references -----------------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize(
    "ref, kind, name, selector",
    [
        ("models:/churn-classifier@champion", "model", "churn-classifier", "@champion"),
        ("models:/churn-classifier/3", "model", "churn-classifier", "3"),
        ("index:docs-live", "index", "docs-live", None),
        ("index:docs-v0003", "index", "docs-v0003", None),
        ("run:" + "a" * 32, "run", "a" * 32, None),
        ("runs:/" + "a" * 32 + "/model", "run", "a" * 32, None),
        ("a" * 32, "run", "a" * 32, None),
        ("data:data/raw/churn/reference.parquet", "data", "data/raw/churn/reference.parquet", None),
        ("data:" + REF_MD5, "data", REF_MD5, None),
    ],
)
def test_parse_ref_accepts_every_documented_syntax(ref, kind, name, selector):
    parsed = parse_ref(ref)
    assert (parsed.kind, parsed.name, parsed.selector) == (kind, name, selector)


@pytest.mark.unit
@pytest.mark.parametrize("ref", ["models:/churn-classifier", "models:/churn-classifier/latest", "index:", "data:", "foo:bar", "champion"])
def test_malformed_reference_is_a_named_error(ref):
    with pytest.raises(LineageError) as err:
        parse_ref(ref)
    assert repr(ref) in str(err.value) and err.value.hint and isinstance(err.value, OpsFabricError)


@pytest.mark.unit
@pytest.mark.parametrize(
    "ref, named",
    [("models:/churn-classifier@staging", "models:/churn-classifier@staging"), ("models:/churn-classifier/9", "models:/churn-classifier/9"),
     ("index:docs-v0009", "docs-v0009"), ("run:" + "9" * 32, "9" * 32)],
)
def test_unknown_reference_names_what_is_missing(ref, named):
    with pytest.raises(LineageError, match=named):
        _trace(_source(), ref)


@pytest.mark.unit
def test_alias_without_a_live_version_is_a_named_error():
    with pytest.raises(LineageError, match="docs-live.*no index version"):
        _trace(_source(registry=IndexRegistryRecord("docs-live")), "index:docs-live")


# ---- dvc.lock ----------------------------------------------------------------------------------
@pytest.mark.unit
def test_dvc_matches_by_md5_path_and_folder():
    lock = parse_dvc_lock(LOCK, "t")
    same = dvc_matches(lock, md5=REF_MD5, path="elsewhere/reference.parquet")
    assert [(m.stage.name, m.role, m.how) for m in same] == [("train", "dep", "same md5")]
    changed = dvc_matches(lock, md5="0" * 32, path="data/raw/churn/reference.parquet")
    by_stage = {m.stage.name: m.how for m in changed}
    assert by_stage["train"].startswith("same path, different md5")
    assert by_stage["generate"] == by_stage["monitor"] == "inside folder data/raw/churn"
    corpus = dvc_matches(lock, md5="fc49d17664858b07", path="data/corpus")
    assert [m.how for m in corpus] == ["same path (the run's hash is OpsFabric's own, not comparable with DVC's md5)"]
    assert dvc_matches(lock, md5=None, path="/abs/data/raw/churn/reference.parquet") == []


@pytest.mark.unit
def test_parse_dvc_lock_keeps_params_and_refuses_other_yaml():
    lock = parse_dvc_lock(LOCK, "t")
    assert lock.stages["train"].params == {"params.yaml": {"ml.train": {"seed": 7}}}
    assert lock.stages["generate"].outs[0].nfiles == 5
    with pytest.raises(ValueError, match="not a dvc.lock"):
        parse_dvc_lock("a: 1\n", "t")
    assert clean_commit(COMMIT + "-dirty") == (COMMIT, True) and clean_commit("unknown") == (None, False)


# ---- backward walks ------------------------------------------------------------------------------
@pytest.mark.unit
def test_champion_lineage_reaches_data_md5_dvc_stage_commit_flow_run_and_deployment():
    result = _trace(_source(), "models:/churn-classifier/1")
    root = result.root
    assert root.kind == "model_version" and root.id == "models:/churn-classifier/1"
    run = root.children[0]
    assert run.kind == "run" and run.id == "a" * 32
    datasets = run.find("dataset")
    assert [d.attrs["md5"] for d in datasets] == [REF_MD5]  # two inputs of one file: one node
    assert {i["context"] for i in datasets[0].attrs["inputs"]} == {"train", "evaluation"}
    stages = {s.id: s for s in datasets[0].find("dvc_stage")}
    assert stages["train"].attrs["matches"][0]["how"] == "same md5" and stages["train"].attrs["params"]["params.yaml"]["ml.train"] == {"seed": 7}
    assert stages["generate"].attrs["matches"][0]["role"] == "out"  # the stage that produced the folder holding it
    assert "monitor" not in stages and datasets[0].attrs["folder_dep_of"] == ["monitor"]
    commit = run.find("git_commit")[0]
    assert commit.id == COMMIT and commit.attrs["dvc_lock"] == f"commit {COMMIT}"
    flow_run = run.find("prefect_flow_run")[0]
    assert flow_run.id == FLOW_RUN and flow_run.find("prefect_deployment")[0].id == DEPLOYMENT
    assert any("Prefect API not consulted" in n for n in flow_run.notes)
    text = render_tree(root)
    assert "stage train: dep data/raw/churn/reference.parquet, same md5" in text and FLOW_RUN in text


@pytest.mark.unit
def test_alias_lineage_notes_a_dirty_work_tree_and_a_commit_git_does_not_know():
    result = _trace(_source(), "models:/churn-classifier@champion")
    assert result.root.id == "models:/churn-classifier/2" and result.root.attrs["aliases"] == ["champion"]
    commit = result.root.find("git_commit")[0]
    assert commit.attrs["dirty"] and any("uncommitted" in n for n in commit.notes)
    missing = _source(locks={})
    commit = _trace(missing, "models:/churn-classifier@champion").root.find("git_commit")[0]
    assert any("not in this snapshot" in n for n in commit.notes)  # reported, not raised


@pytest.mark.unit
def test_prefect_details_enrich_the_flow_run_and_a_failing_lookup_is_only_a_note():
    details = {FLOW_RUN: {"state": "Completed", "flow_name": "ml-pipeline", "start_time": "t", "parent_flow_run_id": "p-1",
                          "deployment_id": DEPLOYMENT, "deployment_name": "ml-pipeline-weekly"}}
    node = _trace(_source(flow_runs=details), "models:/churn-classifier/2").root.find("prefect_flow_run")[0]
    assert node.attrs["prefect"]["state"] == "Completed" and not node.notes
    assert node.find("prefect_deployment")[0].label == "deployment ml-pipeline-weekly"  # from the API: the run had no tag
    unknown = _trace(_source(flow_runs={}), "models:/churn-classifier/2").root.find("prefect_flow_run")[0]
    assert any("does not know this flow run" in n for n in unknown.notes)

    class Broken(StaticRecords):
        def flow_run(self, flow_run_id):
            from opsfabric.ops.records import lookup_flow_run

            def lookup(_):
                raise ConnectionError("refused")

            return lookup_flow_run(lookup, flow_run_id)

    broken = Broken(**{k: getattr(_source(), k) for k in ("runs", "model_versions", "registry", "locks")})
    node = _trace(broken, "models:/churn-classifier/2").root.find("prefect_flow_run")[0]
    assert any("lookup failed (ConnectionError: refused)" in n for n in node.notes)


@pytest.mark.unit
def test_monitoring_run_shows_the_model_it_scored_with_and_a_dvc_run_has_no_flow_run():
    root = _trace(_source(), "run:" + "c" * 32).root
    assert [m.id for m in root.find("model_version")] == ["models:/churn-classifier/1"]
    dvc_root = _trace(_source(), "run:" + "f" * 32).root
    flow = dvc_root.find("prefect_flow_run")[0]
    assert flow.id == "none" and "DVC stage" in flow.label


@pytest.mark.unit
def test_index_lineage_walks_index_and_eval_runs_and_names_the_corpus_stage():
    result = _trace(_source(), "index:docs-live")
    root = result.root
    assert root.kind == "index_version" and root.id == "docs-v0001"
    assert [r.id for r in root.children if r.kind == "run"] == ["d" * 32, "e" * 32]
    stage_ids = {s.id for s in root.find("dvc_stage")}
    assert "rag_ingest" in stage_ids
    base = _trace(_source(), "index:docs-v0002").root
    assert [c.id for c in base.children if c.kind == "index_version"] == ["docs-v0001"]
    assert any(c.id == "none" for c in base.find("prefect_flow_run"))


@pytest.mark.unit
def test_forward_from_data_finds_the_runs_that_read_it_and_what_they_produced():
    result = _trace(_source(), "data:" + BATCH_MD5)
    assert result.direction == "forward"
    readers = [c for c in result.root.children if c.kind == "run"]
    assert [r.id for r in readers] == ["c" * 32, "b" * 32]  # oldest first
    assert [m.id for m in readers[1].find("model_version")] == ["models:/churn-classifier/2"]
    assert any("retrain=True" in d for d in readers[0].details)
    by_path = _trace(_source(), "data:/repo/data/raw/churn", data_md5=None)
    assert {r.id for r in by_path.root.children if r.kind == "run"} == {"a" * 32, "b" * 32, "c" * 32}
    nothing = _trace(_source(), "data:" + "0" * 32)
    assert any("no MLflow run" in n for n in nothing.root.notes)


@pytest.mark.unit
def test_openlineage_events_follow_the_run_event_schema():
    source = _source(runs=[*_source().runs, _run("9" * 32, "opsfabric-ml-training", "broken", status="FAILED")])
    events = openlineage_events(_trace(source, "models:/churn-classifier/1"))
    assert len(events) == 1
    event = events[0]
    assert {"eventType", "eventTime", "producer", "schemaURL", "run", "job", "inputs", "outputs"} <= set(event)
    assert event["eventType"] == "COMPLETE" and uuid.UUID(event["run"]["runId"]).hex == "a" * 32
    assert event["job"] == {"namespace": "opsfabric", "name": "opsfabric-ml-training/train-reference"}
    assert event["inputs"] == [{"namespace": "file", "name": "/repo/data/raw/churn/reference.parquet",
                                "facets": {"dvc": {"_producer": event["producer"], "_schemaURL": event["producer"] + "#DvcFacet", "md5": REF_MD5}}}]
    assert event["outputs"] == [{"namespace": "mlflow-registry", "name": "churn-classifier/1"}]
    assert event["run"]["facets"]["parent"]["run"]["runId"] == FLOW_RUN
    json.dumps(events)  # plain JSON
    failed = openlineage_events(_trace(source, "run:" + "9" * 32))
    assert failed[0]["eventType"] == "FAIL"


@pytest.mark.unit
def test_links_use_the_configured_uis_and_ignore_a_recorded_none_url():
    links = Links(mlflow_ui="http://mlflow:5000", prefect_ui=None)
    run = _source().runs[0]
    assert links.run_url(run) == f"http://mlflow:5000/#/experiments/1/runs/{'a' * 32}"
    assert links.flow_run_url(FLOW_RUN, f"None/flow-runs/flow-run/{FLOW_RUN}") is None
    assert Links(prefect_ui="http://p:4200").flow_run_url(FLOW_RUN) == f"http://p:4200/runs/flow-run/{FLOW_RUN}"


# ---- the real thing ----------------------------------------------------------------------------------
@pytest.mark.flows
def test_lineage_of_a_real_champion_reaches_the_dataset_md5_the_dvc_lock_stage_and_the_flow_run(trained_platform, tmp_path, monkeypatch):
    from flows.lineage import main
    from opsfabric.ml.dataset import file_md5
    from opsfabric.ops.queries import trace_ref
    from opsfabric.ops.records import read_dvc_lock
    from tasks.ops import prefect_flow_run_lookup

    config_files, settings, result = trained_platform
    reference_md5 = file_md5(settings.path(settings.dataset.reference))
    lineage = trace_ref(settings, f"models:/{settings.ml.registered_model}@{settings.ml.champion_alias}", flow_run_lookup=prefect_flow_run_lookup())
    run = lineage.root.children[0]
    assert lineage.root.attrs["aliases"] == [settings.ml.champion_alias] and run.id == result["run_id"]
    datasets = run.find("dataset")
    assert [d.attrs["md5"] for d in datasets] == [reference_md5]
    # dvc.lock at the commit the run recorded, read independently: the stages that list these bytes
    commit = run.find("git_commit")[0].id
    lock = read_dvc_lock(settings.project_root, commit)
    expected = sorted({s.name for s in lock.stages.values() for f in s.deps + s.outs if f.md5 == reference_md5})
    assert expected, f"dvc.lock at {commit} lists no file with md5 {reference_md5}: regenerate it (make repro) and commit"
    found = {s.id: s for s in datasets[0].find("dvc_stage")}
    assert sorted(k for k, s in found.items() if s.attrs["matches"][0]["how"] == "same md5") == expected
    assert "train" in expected and found["train"].attrs["params"]
    # the Prefect flow run from the MLflow tags, with details from the (test) API
    flow_run = run.find("prefect_flow_run")[0]
    assert flow_run.id == run.attrs["tags"]["prefect.flow_run_id"] and run.attrs["tags"]["prefect.flow_name"] == "train"
    assert flow_run.attrs["prefect"]["state"] == "Completed" and flow_run.attrs["prefect"]["flow_name"] == "train"
    deployment = flow_run.find("prefect_deployment")[0]
    assert deployment.id == run.attrs["tags"]["prefect.deployment_id"] and deployment.label == "deployment ops-lineage-test"
    # the command line: tree, JSON and OpenLineage files
    monkeypatch.setenv("OPSFABRIC_CONFIG", config_files[0])
    main(["models:/churn-classifier@champion", "--json", str(tmp_path / "l.json"), "--openlineage", str(tmp_path / "ol.jsonl")])
    tree = json.loads((tmp_path / "l.json").read_text())["tree"]
    assert tree["id"] == f"models:/churn-classifier/{lineage.root.attrs['version']}"
    events = [json.loads(line) for line in (tmp_path / "ol.jsonl").read_text().splitlines()]
    assert [e["run"]["runId"] for e in events] == [str(uuid.UUID(hex=result["run_id"]))]
