"""The gate under races and crashes, with real processes, a real SQLite MLflow store and real file locks.

Racing gates run in two spawned processes that both judge against the same champion before
either applies (a barrier between judging and the lock); crash windows are real SIGKILLs of a
child at a named point (armed inside the child: ``registry_support.arm``). After each, the registry must be
consistent (``registry_support.registry_problems``) and the next gate must repair what was left.
"""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest

from opsfabric import tracking
from opsfabric.ml import promotion
from opsfabric.ml.contract import DatasetContract, load_contract
from opsfabric.ml.lineage import lineage_for
from opsfabric.ml.errors import EvaluationMismatchError, RegistrationError
from opsfabric.ml.registry import get_champion, model_versions
from opsfabric.ml.training import CandidateRun, TrainingSets, reference_training_sets, train_and_log
from opsfabric.settings import Settings, load_settings
from opsfabric.tracking import Lineage
from tests.ml import registry_support as crash
from tests.ml.registry_support import gate_in_child, list_versions, registry_problems, train_in_child

pytestmark = pytest.mark.flows
SPAWN = multiprocessing.get_context("spawn")
CHILD_TIMEOUT = 180


@dataclass
class Lab:
    """One MLflow store with three logged candidates: a weak one to be champion, and two identical strong ones."""

    settings: Callable[..., Settings]
    contract: DatasetContract
    sets: TrainingSets
    lineage: Lineage
    weak: CandidateRun
    strong_a: CandidateRun
    strong_b: CandidateRun

    def gate_args(self, settings: Settings, candidate: CandidateRun, **extra: Any) -> dict[str, Any]:
        return {
            "settings": settings,
            "candidate": candidate,
            "evaluation": self.sets.evaluation,
            "spec": self.contract.spec,
            "lineage": self.lineage,
            **extra,
        }

    def gate(self, settings: Settings, candidate: CandidateRun) -> promotion.GateOutcome:
        """The gate in this process (the test's own, not a child)."""
        return promotion.gate_and_register(settings, candidate, self.sets.evaluation, self.contract.spec, lineage=self.lineage)

    def with_champion(self, name: str) -> Settings:
        """Settings for registered model ``name``, whose version 1 (the weak candidate) is champion."""
        settings = self.settings(name)
        assert self.gate(settings, self.weak).summary()["version"] == "1"
        return settings


@pytest.fixture(scope="module")
def lab(tmp_path_factory, churn_dir) -> Lab:
    state = tmp_path_factory.mktemp("promotion") / "state"
    dataset = {
        "data_dir": str(churn_dir),
        "reference": str(churn_dir / "reference.parquet"),
        "batches": [str(churn_dir / f"batch_0{i}.parquet") for i in range(1, 5)],
    }

    def settings(name: str = "churn-classifier", **train: Any) -> Settings:
        # floor 0.5: the weak model (one decision stump) may become champion, so a better one can replace it
        ml = {"registered_model": name, "gate": {"floor": 0.5}, "train": {"model": {"hyperparameters": {"n_estimators": 60}}, **train}}
        return load_settings(state_dir=state, dataset=dataset, ml=ml)

    base = settings()
    contract = load_contract(base)
    sets = reference_training_sets(base, contract)
    lineage = lineage_for(base, data_files=[Path(dataset["reference"])])
    weak_settings = settings(model={"hyperparameters": {"n_estimators": 1, "max_depth": 1}})
    weak = train_and_log(weak_settings, sets, contract, lineage=lineage, run_name="weak")
    strong_a = train_and_log(base, sets, contract, lineage=lineage, run_name="strong-a")
    strong_b = train_and_log(base, sets, contract, lineage=lineage, run_name="strong-b")
    assert strong_a.metrics == strong_b.metrics and strong_a.metrics["roc_auc"] > weak.metrics["roc_auc"] + 0.02
    return Lab(settings, contract, sets, lineage, weak, strong_a, strong_b)


def _start(target: Callable, args: dict[str, Any]) -> tuple[Any, Any]:
    results = SPAWN.Queue()
    process = SPAWN.Process(target=target, args=(args, results))
    process.start()
    return process, results


def _finish(process: Any, results: Any) -> dict[str, Any]:
    outcome = results.get(timeout=CHILD_TIMEOUT)  # before join: a child exits only once its queue is flushed
    process.join(timeout=CHILD_TIMEOUT)
    assert process.exitcode == 0, f"child {process.pid} exited with {process.exitcode}"
    return outcome


def _killed(process: Any) -> None:
    process.join(timeout=CHILD_TIMEOUT)
    assert process.exitcode == -signal.SIGKILL, f"child {process.pid} was meant to die by SIGKILL, exited with {process.exitcode}"


def _wait_for_file(path: Path, process: Any) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not path.exists():
        assert process.is_alive(), f"child {process.pid} exited with {process.exitcode} before creating {path}"
        assert time.monotonic() < deadline, f"child {process.pid} never created {path}"
        time.sleep(0.05)


def _state(settings: Settings) -> tuple[Any, list[str], str | None]:
    client = tracking.mlflow_client(settings)
    champion = get_champion(client, settings.ml.registered_model, settings.ml.champion_alias)
    return client, list_versions(client, settings.ml.registered_model), champion.version if champion else None


# ------------------------------------------------------------------------------------------------
# Races
# ------------------------------------------------------------------------------------------------
def test_two_racing_promotions_one_wins_the_other_judges_again_against_the_winner(lab):
    settings = lab.with_champion("race-rejudge")
    barrier = SPAWN.Barrier(2)
    children = [_start(gate_in_child, lab.gate_args(settings, c, barrier=barrier)) for c in (lab.strong_a, lab.strong_b)]
    outcomes = [_finish(*child)["summary"] for child in children]

    winner = next(o for o in outcomes if o["attempts"] == 1)
    loser = next(o for o in outcomes if o is not winner)
    # both judged against version 1; the winner applied that judgement, the loser found it stale
    assert winner["promoted"] and winner["previous_champion"] == "1"
    assert loser["attempts"] == 2 and loser["previous_champion"] == winner["version"]
    assert not loser["promoted"] and "+0.0000" in loser["reasons"][0]  # identical models: no improvement
    client, versions, champion = _state(settings)
    assert versions == ["1", "2", "3"] and champion == winner["version"]
    assert registry_problems(client, "race-rejudge", "champion") == []


def test_a_racing_promotion_out_of_attempts_stops_with_a_named_error_and_registers_nothing(lab):
    settings = lab.with_champion("race-stale")
    barrier = SPAWN.Barrier(2)
    children = [
        _start(gate_in_child, lab.gate_args(settings, c, barrier=barrier, max_attempts=1)) for c in (lab.strong_a, lab.strong_b)
    ]
    outcomes = [_finish(*child) for child in children]

    failed = [o for o in outcomes if "error" in o]
    won = [o["summary"] for o in outcomes if "summary" in o]
    assert len(failed) == 1 and len(won) == 1, outcomes
    assert failed[0]["error"] == "StaleChampionError" and "scored champion 1, found 2" in failed[0]["message"]
    assert won[0]["promoted"] and won[0]["version"] == "2"
    client, versions, champion = _state(settings)
    assert versions == ["1", "2"] and champion == "2"
    assert registry_problems(client, "race-stale", "champion") == []


# ------------------------------------------------------------------------------------------------
# kill -9 in each crash window, then a rerun
# ------------------------------------------------------------------------------------------------
CRASHES = {
    # point: (state left by the kill: champion, version 2's decision), (the rerun's repair, the rerun's decision)
    crash.VERSION_CREATED: (("1", "promoting"), ("version 2: promoting -> interrupted", True)),
    crash.ALIAS_MOVED: (("2", "promoting"), ("version 2: promoting -> promoted", False)),
    crash.VERSION_CONFIRMED: (("2", "promoted"), ("version 2: decision 'promoted' copied to its run", False)),
}


@pytest.mark.parametrize("point", list(CRASHES))
def test_a_gate_killed_in_a_crash_window_is_repaired_by_the_next_gate(lab, point):
    name = f"crash-{point}"
    settings = lab.with_champion(name)
    (champion_left, decision_left), (repair, rerun_promotes) = CRASHES[point]

    process, _ = _start(gate_in_child, lab.gate_args(settings, lab.strong_a, kill_at=point))
    _killed(process)
    client, versions, champion = _state(settings)
    assert versions == ["1", "2"] and champion == champion_left
    assert client.get_model_version(name, "2").tags["gate.decision"] == decision_left
    assert registry_problems(client, name, "champion") != []  # the kill did leave something to repair

    # The killed child held the registry lock: the kernel released it, so this gate does not wait.
    outcome = lab.gate(settings, lab.strong_b)
    assert any(line.startswith(repair) for line in outcome.repairs), outcome.repairs
    assert outcome.promoted is rerun_promotes and outcome.version == "3"
    client, versions, champion = _state(settings)
    assert champion == ("3" if rerun_promotes else "2")
    assert registry_problems(client, name, "champion") == []
    if point == crash.VERSION_CREATED:
        tags = client.get_model_version(name, "2").tags
        assert tags["gate.decision"] == "interrupted" and "never was champion" in tags["gate.reconciled"]


def test_a_training_killed_with_its_run_open_is_marked_killed_by_the_next_training(lab):
    settings = lab.settings("crash-training")
    process, _ = _start(
        train_in_child,
        {"settings": settings, "sets": lab.sets, "contract": lab.contract, "lineage": lab.lineage, "run_name": "killed", "kill_at": crash.CANDIDATE_RUN_OPEN},
    )
    _killed(process)
    client = tracking.mlflow_client(settings)
    experiment = tracking.experiment_id(settings, "ml-training")
    [killed] = client.search_runs([experiment], filter_string=f"tags.`opsfabric.owner.pid` = '{process.pid}'")
    assert killed.info.status == "RUNNING" and "eval_roc_auc" in killed.data.metrics  # died after its metrics, before its model

    train_and_log(settings, lab.sets, lab.contract, lineage=lab.lineage, run_name="after-the-kill")
    after = client.get_run(killed.info.run_id)
    assert after.info.status == "KILLED" and "died" in after.data.tags["opsfabric.reconciled"]
    assert list_versions(client, "crash-training") == []  # training registers nothing


# ------------------------------------------------------------------------------------------------
# Roll back and threshold
# ------------------------------------------------------------------------------------------------
def test_roll_back_restores_the_alias_only_if_it_still_points_where_the_gate_put_it(lab):
    name = "roll-back"
    settings = lab.with_champion(name)
    client = tracking.mlflow_client(settings)
    ours = client.create_model_version(name, source=lab.strong_a.model_uri, run_id=lab.strong_a.run_id).version
    theirs = client.create_model_version(name, source=lab.strong_b.model_uri, run_id=lab.strong_b.run_id).version
    # Someone else's promotion landed after ours (only possible if a lock lease expired): keep it.
    client.set_registered_model_alias(name, "champion", theirs)
    promotion._roll_back(client, name, "champion", str(ours), "1", False, True, lab.strong_a.run_id)
    assert get_champion(client, name, "champion").version == str(theirs)
    assert [ref.version for ref in model_versions(client, name)] == ["1", str(theirs)]
    # Our own move is undone: back to the champion we judged against.
    promotion._roll_back(client, name, "champion", str(theirs), "1", False, True, lab.strong_b.run_id)
    assert get_champion(client, name, "champion").version == "1"


def test_the_decision_threshold_is_recorded_with_the_version_and_scores_with_it(lab, churn_dir, tmp_path):
    from opsfabric.ml.champion import load_champion
    from opsfabric.ml.scoring import score_batch_file

    settings = lab.settings("threshold", decision_threshold=0.3)
    candidate = train_and_log(settings, lab.sets, lab.contract, lineage=lab.lineage, run_name="threshold-0.3")
    assert lab.gate(settings, candidate).promoted
    client = tracking.mlflow_client(settings)
    assert client.get_run(candidate.run_id).data.params["decision_threshold"] == "0.3"
    assert client.get_model_version("threshold", "1").tags["decision_threshold"] == "0.3"
    # The champion scores with its own recorded threshold, whatever the current setting says.
    champion = load_champion(lab.settings("threshold", decision_threshold=0.9))
    assert champion.decision_threshold == 0.3 and champion.version == "1"
    path = score_batch_file(
        champion.model, lab.contract.spec, churn_dir / "batch_01.parquet", tmp_path / "s.parquet", threshold=champion.decision_threshold
    )
    scored = pd.read_parquet(path)
    between = scored[(scored.prediction_proba >= 0.3) & (scored.prediction_proba < 0.5)]
    assert len(between) > 0 and (between.prediction == 1).all()


def test_production_code_has_no_test_kill_hook():
    # A hook that makes a process SIGKILL itself must not exist where production runs: the crash
    # tests arm their kill points inside their own child processes (registry_support.arm).
    root = Path(__file__).parents[2]
    files = [p for folder in ("opsfabric", "tasks", "flows") for p in (root / folder).rglob("*.py")]
    hooked = [str(p.relative_to(root)) for p in files if ("kill_point" in p.read_text() or "OPSFABRIC_TEST_KILL_AT" in p.read_text())]
    assert hooked == []


def test_the_gate_refuses_eval_data_of_the_same_length_but_other_rows(lab):
    name = "other-eval-rows"
    settings = lab.settings(name)
    other = lab.sets.train.iloc[: len(lab.sets.evaluation)].reset_index(drop=True)  # same length and columns
    assert len(other) == lab.strong_a.n_eval and list(other.columns) == list(lab.sets.evaluation.columns)
    with pytest.raises(EvaluationMismatchError, match="same data") as info:
        promotion.gate_and_register(settings, lab.strong_a, other, lab.contract.spec, lineage=lab.lineage)
    assert isinstance(info.value, ValueError) and lab.strong_a.run_id in str(info.value)
    assert list_versions(tracking.mlflow_client(settings), name) == []  # refused before writing anything
    # The candidate's own eval rows pass, whatever object or index carries them.
    shifted = lab.sets.evaluation.copy().set_axis(range(100, 100 + len(lab.sets.evaluation)))
    judgement = promotion.judge_candidate(settings, lab.strong_a, shifted, lab.contract.spec)
    assert judgement.decision.approved


def test_a_roll_back_whose_alias_restore_fails_keeps_the_champion_and_says_it_is_incomplete(lab, monkeypatch):
    from mlflow import MlflowClient

    name = "roll-back-incomplete"
    settings = lab.with_champion(name)
    real_set_alias = MlflowClient.set_registered_model_alias

    def restore_fails(self, model, alias, version):
        if str(version) == "1":  # the move to version 2 works, the move back to 1 does not
            raise RuntimeError("registry unavailable")
        return real_set_alias(self, model, alias, version)

    def record_fails(*args, **kwargs):
        raise RuntimeError("tracking store unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", restore_fails)
        patch.setattr(promotion, "record_on_run", record_fails)
        with pytest.raises(RegistrationError) as info:
            lab.gate(settings, lab.strong_a)
    message = str(info.value)
    assert "roll back incomplete: restore alias failed (RuntimeError: registry unavailable)" in message
    assert "delete version skipped" in message and "rolled back" not in message
    # The version was not deleted (MLflow would have deleted the alias with it): the registry is as a
    # gate killed after confirming the version leaves it, never without a champion.
    client, versions, champion = _state(settings)
    assert versions == ["1", "2"] and champion == "2"
    assert client.get_model_version(name, "2").tags["gate.decision"] == "promoted"

    outcome = lab.gate(settings, lab.strong_b)  # e.g. the Prefect retry
    assert "version 2: decision 'promoted' copied to its run " + lab.strong_a.run_id in outcome.repairs, outcome.repairs
    assert not outcome.promoted and outcome.champion_version == "2"  # judged against the real champion
    assert registry_problems(client, name, "champion") == []


def test_a_gate_whose_version_was_reconciled_under_it_rolls_back_its_alias_move(lab, tmp_path):
    name = "lock-lost"
    settings = lab.with_champion(name)
    ready, go = tmp_path / "ready", tmp_path / "go"
    process, results = _start(gate_in_child, lab.gate_args(settings, lab.strong_a, pause_at=(crash.VERSION_CREATED, str(ready), str(go))))
    _wait_for_file(ready, process)  # the child holds the lock, version 2 is tagged promoting
    # With the Prefect lock, a stalled holder's lease expires and the next gate takes the lock and
    # reconciles first thing. That reconcile, here without the lock the child still holds:
    client = tracking.mlflow_client(settings)
    repairs = promotion.reconcile_registry(client, name, "champion")
    assert any(line.startswith("version 2: promoting -> interrupted") for line in repairs), repairs
    go.touch()

    outcome = _finish(process, results)
    assert outcome.get("error") == "RegistryLockLostError", outcome
    assert "'interrupted'" in outcome["message"] and "champion stays 1" in outcome["message"]
    client, versions, champion = _state(settings)
    assert champion == "1" and versions == ["1"]  # the alias move and the version were rolled back
    assert registry_problems(client, name, "champion") == []


def test_a_gate_after_a_version_whose_run_was_garbage_collected_skips_that_run_and_says_so(lab):
    name = "run-collected"
    settings = lab.settings(name)
    doomed = train_and_log(
        lab.settings(name, model={"hyperparameters": {"n_estimators": 1, "max_depth": 1}}), lab.sets, lab.contract, lineage=lab.lineage, run_name="doomed"
    )
    assert lab.gate(settings, doomed).version == "1"
    client = tracking.mlflow_client(settings)
    client.delete_run(doomed.run_id)
    gc = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", settings.tracking_uri, "--run-ids", doomed.run_id]
    subprocess.run(gc, check=True, capture_output=True, timeout=CHILD_TIMEOUT)
    with pytest.raises(Exception, match="not found|does not exist"):
        client.get_run(doomed.run_id)

    outcome = lab.gate(settings, lab.strong_a)
    assert f"version 1: its run {doomed.run_id} was deleted; decision 'promoted' kept on the version only" in outcome.repairs
    assert outcome.version == "2" and outcome.promoted
    assert get_champion(client, name, "champion").version == "2"
