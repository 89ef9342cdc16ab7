"""The version registry follows the alias, rollback refuses what readers could not use, and bad
inputs (golden rows, registry file, endpoint replies, NaN metrics) are errors that name them.

Crashes between an alias move and the registry save, with real processes: tests/rag/test_crash_windows.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsfabric.rag import ingest, operations, promotion, qdrant, versions
from opsfabric.rag.errors import EndpointError, GoldenSetError, IndexVersionError


@pytest.mark.flows
def test_registry_follows_the_alias_and_rollback_refuses_unusable_versions(make_rag_config, embedder, tiny_corpus: Path):
    config = make_rag_config()
    v1 = ingest.ingest_corpus(config, embedder, show_progress=False)
    assert promotion.gate_version(config, v1.collection, embedder).promoted
    (tiny_corpus / "extra.md").write_text("# Extra\n\nA short page about index rotation windows.\n")
    v2 = ingest.ingest_corpus(config, embedder, show_progress=False)
    client = qdrant.open_client(config)

    # a verdict alone (the DVC stage) writes nothing and moves nothing
    registry_file = config.rag_state_dir / "versions.json"
    before = registry_file.read_bytes()
    verdict = promotion.judge_version(config, v2.collection, embedder)
    assert verdict.decision.approved and verdict.live_collection == v1.collection and registry_file.read_bytes() == before
    assert qdrant.alias_target(client, config.rag.store.alias) == v1.collection

    # a crash between moving the alias and saving the registry: the next operation repairs the registry
    qdrant.move_alias(client, config.rag.store.alias, v2.collection)
    assert versions.VersionRegistry.load(config).get(v2.collection).status == "built"
    promotion.gate_version(config, v2.collection, embedder)
    registry = versions.VersionRegistry.load(config)
    assert registry.get(v2.collection).status == "live" and registry.live_history[-1] == v2.collection
    assert registry.get(v1.collection).status == "built"
    assert operations.rollback_index(config) == {"alias": "docs-live", "from": v2.collection, "to": v1.collection}
    registry = versions.VersionRegistry.load(config)
    assert registry.get(v1.collection).status == "live" and registry.get(v2.collection).status == "built"

    # a rolled-back version stays off the alias: the default gate run (rag_eval without --collection)
    # does not pick it, and a verdict on it is not applied unless an operator names it
    assert registry.get(v2.collection).rolled_back_at and "pid" in registry.get(v2.collection).rolled_back_by
    assert promotion.newest_collection(config) == v1.collection
    with pytest.raises(IndexVersionError, match=rf"{v2.collection} was rolled back at .* does not put it live again") as refused:
        promotion.gate_version(config, v2.collection, embedder)
    assert f"--collection {v2.collection}" in refused.value.hint
    assert verdict.live_collection == v1.collection  # the verdict made earlier is not stale: v1 is live again
    with pytest.raises(IndexVersionError, match="rolled back"):
        promotion.apply_verdict(config, verdict)
    assert qdrant.alias_target(client, config.rag.store.alias) == v1.collection
    assert promotion.apply_verdict(config, verdict, allow_rolled_back=True).promoted  # named by the operator
    registry = versions.VersionRegistry.load(config)
    assert registry.get(v2.collection).status == "live" and registry.get(v2.collection).rolled_back_at is None
    assert operations.rollback_index(config)["to"] == v1.collection

    # re-gating the live version with stricter thresholds records the failure but never rejects what readers use
    strict = make_rag_config(gate={"thresholds": {"mrr": 1.01}})
    regate = promotion.gate_version(strict, v1.collection, embedder)
    assert not regate.decision.approved and regate.live_collection == v1.collection
    assert versions.VersionRegistry.load(config).get(v1.collection).status == "live"

    # rollback targets must be finished builds that today's queries can search
    with versions.updating(config, "test: add an unfinished build, change v2's embedding model") as registry:
        registry.versions.append(versions.IndexVersion(99, "docs-v0099", "building", "x", registry.get(v2.collection).index_config))
        registry.get(v2.collection).index_config["embedding"]["model"] = "another-model"
    qdrant.ensure_collection(client, "docs-v0099", 384)
    with pytest.raises(IndexVersionError, match=r"docs-v0099.*status is 'building' \(not a finished build\)"):
        operations.rollback_index(config, to="docs-v0099")
    with pytest.raises(IndexVersionError, match=r"built with pipeline_version=.*another-model") as refused:
        operations.rollback_index(config, to=v2.collection)
    assert refused.value.hint == "restore that configuration first"
    # ... and so must a version the gate is asked to put live
    with pytest.raises(IndexVersionError, match=r"cannot evaluate and gate 'docs-v0099': its status is 'building'"):
        promotion.gate_version(config, "docs-v0099", embedder)
    with pytest.raises(IndexVersionError, match=r"cannot evaluate and gate 'docs-v0002'.*built with pipeline_version="):
        promotion.gate_version(config, v2.collection, embedder)
    assert qdrant.alias_target(client, "docs-live") == v1.collection


@pytest.mark.unit
def test_corrupt_registry_names_its_file(make_rag_config):
    config = make_rag_config()
    path = config.rag_state_dir / "versions.json"
    path.parent.mkdir(parents=True)
    path.write_text("{\n")
    with pytest.raises(IndexVersionError, match=r"versions\.json: unreadable index version registry"):
        versions.VersionRegistry.load(config)


@pytest.mark.unit
@pytest.mark.parametrize(
    "lines, message",
    [
        (["[1, 2]"], r"g\.jsonl:1: expected a JSON object"),
        (['{"id": 7, "question": "q", "reference_answer": "a", "doc_id": "d", "passage": "p", "split": "tune"}'], r"g\.jsonl:1: field\(s\) \['id'\] must be strings"),
        (['{"id": "a", "question": "", "reference_answer": "a", "doc_id": "d", "passage": "p", "split": "tune"}'], r"g\.jsonl:1: missing or empty field\(s\) \['question'\]"),
        (["", "  "], r"g\.jsonl: the golden QA set is empty"),
    ],
)
def test_golden_rows_are_checked_by_line_and_field(tmp_path: Path, lines, message):
    from opsfabric.rag.golden import read_golden_source

    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GoldenSetError, match=message):
        read_golden_source(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    "reply",
    [
        {"choices": [{"message": {"content": None}}]},
        {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": "many"}},
        {"choices": []},
    ],
)
def test_malformed_chat_replies_are_endpoint_errors(monkeypatch, reply):
    import httpx

    from opsfabric.rag.answer import LLMAnswerer, PromptTemplate
    from opsfabric.rag.retrieval import Chunk
    from opsfabric.rag.settings import AnswerParams, LLMSettings
    from opsfabric.settings import PROJECT_ROOT

    def fake_post(url, **kwargs):
        return httpx.Response(200, json=reply, request=httpx.Request("POST", url))

    monkeypatch.setattr(httpx, "post", fake_post)
    template = PromptTemplate.load(PROJECT_ROOT / "configs/prompts/rag_answer.v1.yaml")
    answerer = LLMAnswerer(LLMSettings(base_url="http://llm.invalid/v1"), template, None, AnswerParams())
    with pytest.raises(EndpointError, match=r"chat endpoint http://llm\.invalid/v1/chat/completions"):
        answerer.answer("q?", [Chunk("c1", "a.md", "A", 0, "Some text.")])


@pytest.mark.unit
def test_a_metric_that_is_mostly_nan_fails_the_gate():
    from opsfabric.rag.gate import should_go_live
    from opsfabric.rag.settings import GateParams

    policy = GateParams(thresholds={"faithfulness": 0.5}, max_nan_share=0.1)
    assert should_go_live({"faithfulness": 0.9, "faithfulness_nan_share": 0.05}, policy).approved
    decision = should_go_live({"faithfulness": 0.9, "faithfulness_nan_share": 0.5}, policy)
    assert not decision.approved and "NaN for 50% of the questions" in decision.reasons[0]


@pytest.mark.unit
def test_the_clean_text_cache_is_keyed_by_format_and_the_cleaner_is_part_of_the_index_config(tmp_path: Path, monkeypatch, make_rag_config):
    from opsfabric.rag import corpus

    root = tmp_path / "c"
    root.mkdir()
    (root / "a.md").write_text("# T\n\nhello world text")
    (root / "b.txt").write_text("# T\n\nhello world text")
    cache = tmp_path / "cache"
    md = corpus.load_document(root / "a.md", root, max_bytes=1000, cache_dir=cache)
    txt = corpus.load_document(root / "b.txt", root, max_bytes=1000, cache_dir=cache)
    assert md.text != txt.text and txt.text.startswith("# T")

    config = make_rag_config()
    before = config.index_config_hash()
    monkeypatch.setattr(corpus, "CLEANER_VERSION", "999")
    assert config.index_config()["cleaner_version"] == "999" and config.index_config_hash() != before
