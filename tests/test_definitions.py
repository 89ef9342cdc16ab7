"""One smoke test that imports every flow and deployment: a broken import or wiring fails fast."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import flows

pytestmark = pytest.mark.unit


def test_every_flow_module_imports_and_defines_a_flow():
    from prefect import Flow

    found = {}
    for module_info in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{module_info.name}")
        found.update({name: obj for name, obj in vars(module).items() if isinstance(obj, Flow)})
    for expected in ("validate_flow", "train_flow", "monitor_flow", "retrain_flow", "score_flow", "ml_pipeline_flow", "platform_flow",
                     "rag_pipeline_flow", "ingest_flow", "rag_eval_flow", "rag_rollback_flow", "rag_ask_flow",
                     "agent_ask_flow", "agent_regression_flow", "lineage_flow", "ops_report_flow"):
        assert expected in found
