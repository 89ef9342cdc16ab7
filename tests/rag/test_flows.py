"""The RAG flows on a real Prefect API, a real MLflow SQLite store, real Qdrant and MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsfabric import tracking
from opsfabric.rag import qdrant, versions
from opsfabric.rag.settings import RagConfig
from opsfabric.settings import load_settings

pytestmark = pytest.mark.flows


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=50)
    return sorted(found, key=lambda a: a.created)[-1] if found else None


def test_pipeline_promotes_then_rerun_embeds_nothing_then_rollback(prefect_api, overlay_file, tiny_corpus: Path, embedder):
    from flows.ingest import ingest_flow
    from flows.rag_eval import rag_eval_flow
    from flows.rag_index import rag_rollback_flow
    from flows.rag_pipeline import rag_pipeline_flow

    config_files = overlay_file()
    first = rag_pipeline_flow(config_files)
    assert first["ingest"]["status"] == "built" and first["gate"]["promoted"] and first["gate"]["live_collection"] == "docs-v0001"

    settings = load_settings(*config_files)
    client = tracking.mlflow_client(settings)
    index_runs = client.search_runs([tracking.experiment_id(settings, "rag-index")])
    eval_runs = client.search_runs([tracking.experiment_id(settings, "rag-eval")])
    assert len(index_runs) == 1 and len(eval_runs) == 1
    index_run = index_runs[0]
    assert index_run.data.tags["rag.corpus_hash"] and index_run.data.tags["prefect.flow_run_id"]
    assert index_run.data.params["chunking.chunk_size"] == "128" and index_run.data.params["embedding.backend"] == "local"
    assert "eval_mrr" in index_run.data.metrics and "eval_context_recall" in index_run.data.metrics
    assert {"hit_at_5", "mrr", "ndcg_at_5", "context_precision", "rouge_l", "bleu"} <= set(eval_runs[0].data.metrics)
    artifacts = {a.path for a in client.list_artifacts(eval_runs[0].info.run_id, "eval")}
    assert {"eval/per_question.json", "eval/decision.json", "eval/outcome.json"} <= artifacts
    table = client.load_table(tracking.experiment_id(settings, "rag-eval"), artifact_file="eval/per_question.json", run_ids=[eval_runs[0].info.run_id])
    assert len(table) == len(Path(config_files[0]).parent.joinpath("golden.jsonl").read_text().splitlines()) and "mrr" in table.columns
    # registry, alias and MLflow agree: the live version links the index run and the eval run that put it live
    live = versions.VersionRegistry.load(RagConfig(settings)).get("docs-v0001")
    assert live.status == "live" and live.mlflow_run_id == index_run.info.run_id and live.eval_run_id == eval_runs[0].info.run_id
    assert eval_runs[0].data.tags["rag.gate.outcome"] == "promoted" and eval_runs[0].data.metrics["gate_promoted"] == 1.0
    assert "documents seen" in _artifact("rag-ingest").data
    assert _artifact("rag-eval-per-question") is not None

    second = rag_pipeline_flow(config_files)
    assert second["ingest"]["status"] == "unchanged" and second["ingest"]["chunks_embedded"] == 0
    assert second["gate"] == {"collection": "docs-v0001", "live_collection": "docs-v0001", "evaluated": False}
    assert len(client.search_runs([tracking.experiment_id(settings, "rag-index")])) == 1

    (tiny_corpus / "extra.md").write_text("# Extra\n\nQdrant aliases let readers switch collections atomically.\n")
    built = ingest_flow(config_files)
    assert built["status"] == "built" and built["documents_added"] == 1 and 0 < built["chunks_embedded"] <= 2
    gated = rag_eval_flow(config_files)
    assert gated["candidate"] == "docs-v0002"
    assert gated["approved"] and gated["live_collection"] == "docs-v0002", gated["reasons"]
    assert rag_rollback_flow(config_files) == {"alias": "docs-live", "from": "docs-v0002", "to": "docs-v0001"}
    # the default gate run evaluates the newest version nobody rolled back: the rollback sticks
    regated = rag_eval_flow(config_files)
    assert regated["candidate"] == "docs-v0001" and regated["live_collection"] == "docs-v0001" and not regated["promoted"]
    config = RagConfig(settings)
    assert qdrant.alias_target(qdrant.open_client(config), "docs-live") == "docs-v0001"
