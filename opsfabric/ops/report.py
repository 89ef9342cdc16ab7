"""The ops report: one page across ML, RAG and agents (collect → build → render).

* :func:`collect_state` reads the stores into an :class:`OpsState` (records only; the edge);
* :func:`build_report` turns a state into an :class:`OpsReport` (pure: what is live, how it scores,
  trends, and everything failing: failed or killed runs, a gate that said no, regression failures);
* :func:`render_html` (with matplotlib plots as embedded PNGs) and :func:`render_markdown` (the
  Prefect artifact) print it. Empty states (no champion, no index, no regression run) render as
  "none yet".
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from opsfabric.ops.records import IndexRegistryRecord, Links, RunRecord, VersionRecord

NONE_YET = "none yet"
# Experiments by short name (the tracking prefix is added by the reader).
ML_TRAINING, ML_MONITORING, RAG_INDEX, RAG_EVAL, AGENT_REGRESSION, OPS_REPORT = (
    "ml-training", "ml-monitoring", "rag-index", "rag-eval", "agent-regression", "ops-report",
)
EXPERIMENTS = (ML_TRAINING, ML_MONITORING, RAG_INDEX, RAG_EVAL, AGENT_REGRESSION, OPS_REPORT)
GATE_SAID_NO = {"rejected", "live-failing", "stale"}  # rag.gate.outcome values that are a "no"
RAG_HEADLINE = ("holdout.hit_at_5", "holdout.mrr", "holdout.context_recall", "latency_ms", "cost_usd")


# ---- what is read -------------------------------------------------------------------------------
@dataclass
class OpsState:
    """Everything the report is built from, as read at ``read_at``."""

    read_at: datetime
    model_name: str
    champion_alias: str
    gate_metric: str
    drift_threshold: float
    versions: list[VersionRecord] = field(default_factory=list)
    runs: dict[str, list[RunRecord]] = field(default_factory=dict)  # by short experiment name, newest first
    registry: IndexRegistryRecord = field(default_factory=lambda: IndexRegistryRecord("docs-live"))
    agent_verdicts: dict[str, dict[str, str]] = field(default_factory=dict)  # run id -> scenario -> verdict
    links: Links = field(default_factory=Links)

    def experiment(self, name: str) -> list[RunRecord]:
        return self.runs.get(name, [])


def collect_state(source: Any, settings: Any, *, max_runs: int = 200) -> OpsState:
    """Read the MLflow store (runs of every OpsFabric experiment, model versions), the index registry and
    the verdicts of the newest agent regression run. ``source`` is a ``PlatformRecords``."""
    runs = {name: source.mlflow.runs(name, max_results=max_runs) for name in EXPERIMENTS}
    verdicts = {}
    for run in runs[AGENT_REGRESSION][:1]:
        text = source.mlflow.artifact_text(run.run_id, "verdicts.json")
        if text:
            verdicts[run.run_id] = json.loads(text)
    return OpsState(
        read_at=datetime.now(timezone.utc),
        model_name=settings.ml.registered_model,
        champion_alias=settings.ml.champion_alias,
        gate_metric=settings.ml.gate.metric,
        drift_threshold=settings.ml.drift.drift_share_threshold,
        versions=source.mlflow.versions(settings.ml.registered_model),
        runs=runs,
        registry=source.index_registry(),
        agent_verdicts=verdicts,
        links=source.links,
    )


# ---- the report model ---------------------------------------------------------------------------
@dataclass
class Link:
    """A run or flow run a reader can open: a URL when a UI is known, the id always."""

    label: str
    id: str
    url: str | None = None


@dataclass
class ChampionStatus:
    name: str
    alias: str
    version: str
    age_days: float
    registered: str
    score: str
    reasons: str
    run: Link | None
    flow_run: Link | None


@dataclass
class DriftRow:
    batch: str
    checked: str
    champion_version: str
    drift_share: float | None
    retrain: bool | None
    current_score: float | None
    run: Link


@dataclass
class IndexStatus:
    collection: str
    alias: str
    built_at: str | None
    scores: dict[str, float]
    decision: str
    eval_run: Link | None
    answers_by: str = ""  # the model that wrote the evaluated answers (file and digest), or "extractive"


@dataclass
class AgentStatus:
    pass_rate: float
    scenarios: int
    failed: int
    status: str
    when: str
    failing: list[str]
    run: Link
    flow_run: Link | None
    model: str = ""  # what decided: the offline planner, or a model with its file and digest


@dataclass
class Problem:
    """Something failing: a failed/killed run, a gate that said no, a regression."""

    area: str  # ML | RAG | Agents | Ops
    what: str
    when: str
    link: Link | None = None
    flow_run: Link | None = None


@dataclass
class Series:
    """A trend: points (time, value) of one quantity, oldest first."""

    name: str
    unit: str
    points: list[tuple[datetime, float]] = field(default_factory=list)


@dataclass
class OpsReport:
    generated_at: datetime
    since: datetime
    champion: ChampionStatus | None
    versions: list[dict[str, Any]]
    drift: list[DriftRow]
    index: IndexStatus | None
    index_versions: list[dict[str, Any]]
    agents: AgentStatus | None
    problems: list[Problem]
    trends: dict[str, list[Series]]  # plot title -> series
    mlflow_ui: str | None
    prefect_ui: str | None

    def summary(self) -> dict[str, Any]:
        """The headline numbers (logged as MLflow metrics/tags, returned by the flow)."""
        return {
            "champion_version": self.champion.version if self.champion else None,
            "champion_age_days": round(self.champion.age_days, 2) if self.champion else None,
            "live_index": self.index.collection if self.index else None,
            "agent_pass_rate": self.agents.pass_rate if self.agents else None,
            "batches_to_retrain": [d.batch for d in self.drift if d.retrain],
            "problems": len(self.problems),
        }


def _when(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else "?"


def _run_link(run: RunRecord, links: Links) -> Link:
    return Link(f"{run.experiment}/{run.name}", run.run_id, links.run_url(run))


def _flow_link(run: RunRecord, links: Links) -> Link | None:
    if not run.flow_run_id:
        return None
    return Link(run.tags.get("prefect.flow_run_name") or "flow run", run.flow_run_id, links.flow_run_url(run.flow_run_id, run.tags.get("prefect.flow_run_url")))


def build_report(state: OpsState, *, since_days: float = 30.0, now: datetime | None = None) -> OpsReport:
    """The report of ``state``: status of each discipline, trends and problems of the last ``since_days``."""
    now = now or state.read_at
    since = now - timedelta(days=since_days)
    links = state.links
    recent = {name: [r for r in runs if r.started and r.started >= since] for name, runs in state.runs.items()}
    runs_by_id = {r.run_id: r for runs in state.runs.values() for r in runs}
    return OpsReport(
        generated_at=now,
        since=since,
        champion=_champion(state, now, runs_by_id),
        versions=[
            {"version": v.version, "aliases": ", ".join(v.aliases), "decision": v.decision or "?",
             "score": v.tags.get(f"eval_{state.gate_metric}", "?"), "registered": _when(v.created)}
            for v in reversed(state.versions)
        ],
        drift=_drift(state),
        index=_index(state, runs_by_id),
        index_versions=[
            {"collection": v.collection, "status": v.status,
             **{k: round(v.eval_scores[k], 4) for k in RAG_HEADLINE if k in v.eval_scores}, "built": v.built_at or "?"}
            for v in reversed(state.registry.versions)
        ],
        agents=_agents(state),
        problems=_problems(state, recent, since),
        trends=_trends(state, recent),
        mlflow_ui=links.mlflow_ui,
        prefect_ui=links.prefect_ui,
    )


def _champion(state: OpsState, now: datetime, runs_by_id: dict[str, RunRecord]) -> ChampionStatus | None:
    champion = next((v for v in state.versions if state.champion_alias in v.aliases), None)
    if champion is None:
        return None
    run = runs_by_id.get(champion.run_id or "")
    return ChampionStatus(
        name=champion.name,
        alias=state.champion_alias,
        version=champion.version,
        age_days=(now - champion.created).total_seconds() / 86400 if champion.created else float("nan"),
        registered=_when(champion.created),
        score=f"{state.gate_metric} {champion.tags.get(f'eval_{state.gate_metric}', '?')}",
        reasons=champion.tags.get("gate.reasons", ""),
        run=_run_link(run, state.links) if run else (Link("training run", champion.run_id) if champion.run_id else None),
        flow_run=_flow_link(run, state.links) if run else None,
    )


def _drift(state: OpsState) -> list[DriftRow]:
    """The newest monitoring verdict per batch, in batch order."""
    latest: dict[str, RunRecord] = {}
    for run in state.experiment(ML_MONITORING):  # newest first
        if run.status == "FINISHED" and (batch := run.tags.get("opsfabric.batch")):
            latest.setdefault(batch, run)
    rows = []
    for batch, run in sorted(latest.items()):
        score = run.metrics.get(f"current_{state.gate_metric}")
        retrain = run.tags.get("drift.retrain")
        rows.append(DriftRow(batch, _when(run.started), run.tags.get("opsfabric.champion_version", "?"), run.metrics.get("drift_share"),
                             None if retrain is None else retrain == "True", score, _run_link(run, state.links)))
    return rows


def _index(state: OpsState, runs_by_id: dict[str, RunRecord]) -> IndexStatus | None:
    live = state.registry.live
    if live is None:
        return None
    eval_run = runs_by_id.get(live.eval_run_id or "")
    return IndexStatus(
        collection=live.collection,
        alias=state.registry.alias,
        built_at=live.built_at,
        scores={k: live.eval_scores[k] for k in RAG_HEADLINE if k in live.eval_scores},
        decision="; ".join(live.decision.get("reasons", [])) if live.decision else "",
        eval_run=_run_link(eval_run, state.links) if eval_run else (Link("eval run", live.eval_run_id) if live.eval_run_id else None),
        answers_by=_answers_by(eval_run.tags) if eval_run else "",
    )


def _answers_by(tags: dict[str, str]) -> str:
    model = tags.get("rag.answer.model", "")
    if not tags.get("rag.answer.model_file"):
        return model
    return f"{model} ({tags['rag.answer.model_file']} sha256:{tags.get('rag.answer.model_sha256', '')[:8]}…, {tags.get('rag.answer.server', '')})"


def _agents(state: OpsState) -> AgentStatus | None:
    runs = state.experiment(AGENT_REGRESSION)
    if not runs:
        return None
    run = runs[0]
    verdicts = state.agent_verdicts.get(run.run_id, {})
    return AgentStatus(
        pass_rate=run.metrics.get("pass_rate", float("nan")),
        scenarios=int(run.metrics.get("scenarios", len(verdicts))),
        failed=int(run.metrics.get("failed", 0)),
        status=run.status,
        when=_when(run.started),
        failing=sorted(s for s, v in verdicts.items() if v != "pass"),
        run=_run_link(run, state.links),
        flow_run=_flow_link(run, state.links),
        model=model_label(run.tags),
    )


def model_label(tags: dict[str, str]) -> str:
    """``smollm2-135m-instruct (SmolLM2-135M-Instruct.Q4_1.gguf sha256:b179c952…, llama-cpp-python 0.3.36, T=0.0, seed 0)``."""
    model = tags.get("gen_ai.request.model")
    if model == "offline-planner" or (not model and tags.get("opsfabric.agent.model") == "offline"):
        return "offline planner (deterministic, not a language model)"
    if not model:
        return ""
    details = [f"{tags['opsfabric.model.file']} sha256:{tags.get('opsfabric.model.sha256', '')[:8]}…" if tags.get("opsfabric.model.file") else "",
               tags.get("opsfabric.server", ""),
               f"T={tags['gen_ai.request.temperature']}" if "gen_ai.request.temperature" in tags else "",
               f"seed {tags['gen_ai.request.seed']}" if "gen_ai.request.seed" in tags else ""]
    details = [d for d in details if d]
    return f"{model} ({', '.join(details)})" if details else model


def _problems(state: OpsState, recent: dict[str, list[RunRecord]], since: datetime) -> list[Problem]:
    links = state.links
    area = {ML_TRAINING: "ML", ML_MONITORING: "ML", RAG_INDEX: "RAG", RAG_EVAL: "RAG", AGENT_REGRESSION: "Agents", OPS_REPORT: "Ops"}
    problems = []
    for name, runs in recent.items():
        for run in runs:
            if run.status in ("FAILED", "KILLED"):
                why = "failed" if run.status == "FAILED" else "killed (its process died while running)"
                problems.append(Problem(area.get(name, name), f"run {run.experiment}/{run.name} {why}", _when(run.started),
                                        _run_link(run, links), _flow_link(run, links)))
            outcome = run.tags.get("rag.gate.outcome")
            if name == RAG_EVAL and outcome in GATE_SAID_NO:
                reason = run.tags.get("rag.gate.stale_reason", "")
                problems.append(Problem("RAG", f"index gate said no to {run.tags.get('rag.collection', '?')}: {outcome}"
                                        + (f" ({reason[:200]})" if reason else ""), _when(run.started), _run_link(run, links), _flow_link(run, links)))
            if name == AGENT_REGRESSION and run.status == "FINISHED" and run.metrics.get("failed", 0) > 0:
                failing = sorted(s for s, v in state.agent_verdicts.get(run.run_id, {}).items() if v != "pass")
                problems.append(Problem("Agents", f"{int(run.metrics['failed'])} golden-trace scenario(s) failed"
                                        + (f": {', '.join(failing)}" if failing else ""), _when(run.started), _run_link(run, links), _flow_link(run, links)))
    for version in state.versions:
        if version.created and version.created >= since and version.decision in ("rejected", "interrupted"):
            what = (f"model gate said no to {version.name} v{version.version}: {version.tags.get('gate.reasons', '')}"
                    if version.decision == "rejected" else f"promotion of {version.name} v{version.version} was interrupted: {version.tags.get('gate.reconciled', '')}")
            problems.append(Problem("ML", what, _when(version.created), Link(f"{version.name} v{version.version}", version.ref, links.model_url(version.name, version.version))))
    for index in state.registry.versions:
        if index.status == "failed":
            problems.append(Problem("RAG", f"index build {index.collection} failed", index.created_at or "?"))
    if state.registry.pending_move:
        problems.append(Problem("RAG", f"an alias move was left half-done: {state.registry.pending_move} (the next index operation repairs it)", "?"))
    return sorted(problems, key=lambda p: p.when, reverse=True)


def _trends(state: OpsState, recent: dict[str, list[RunRecord]]) -> dict[str, list[Series]]:
    def series(name: str, unit: str, runs: list[RunRecord], metric: str | None = None, *, seconds: bool = False) -> Series:
        points = []
        for run in sorted(runs, key=lambda r: r.start_ms or 0):
            value = run.seconds if seconds else run.metrics.get(metric or "")
            if run.started and value is not None:
                points.append((run.started, float(value)))
        return Series(name, unit, points)

    rag_eval = [r for r in recent.get(RAG_EVAL, []) if r.status == "FINISHED"]
    agents = [r for r in recent.get(AGENT_REGRESSION, []) if r.status == "FINISHED"]
    training = [r for r in recent.get(ML_TRAINING, []) if r.status == "FINISHED"]
    return {
        "Agent golden-trace pass rate": [series("pass rate", "", agents, "pass_rate")],
        "RAG evaluation (holdout + all questions)": [series("hit@5", "", rag_eval, "hit_at_5"), series("MRR", "", rag_eval, "mrr")],
        "Latency": [series("RAG answer latency", "ms", rag_eval, "latency_ms"), series("agent suite", "s", agents, "suite_seconds"),
                    series("training run", "s", training, seconds=True)],
        "Cost": [series("RAG eval cost", "USD", rag_eval, "cost_usd"), series("agent suite cost", "USD", agents, "total_cost_usd")],
    }


# ---- rendering ----------------------------------------------------------------------------------
def render_plots(report: OpsReport) -> dict[str, str]:
    """One PNG (base64) per plot with data: drift share per batch, then each trend. Plots without data are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    pngs: dict[str, str] = {}

    def save(fig: Any, title: str) -> None:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        pngs[title] = base64.b64encode(buffer.getvalue()).decode()

    rows = [d for d in report.drift if d.drift_share is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.bar([d.batch for d in rows], [d.drift_share for d in rows], color=["#c0392b" if d.retrain else "#2e86c1" for d in rows])
        ax.set_ylabel("share of drifted features")
        ax.set_ylim(0, 1)
        ax.set_title("Drift per batch (red: retrain verdict)")
        save(fig, "Drift per batch")
    for title, all_series in report.trends.items():
        drawn = [s for s in all_series if s.points]
        if not drawn:
            continue
        fig, axes = plt.subplots(1, len(drawn), figsize=(3.2 * len(drawn) + 1, 2.8), squeeze=False)
        for ax, s in zip(axes[0], drawn):
            ax.plot([p[0] for p in s.points], [p[1] for p in s.points], marker="o")
            if len(s.points) == 1:  # one point: a two-hour window, not matplotlib's default of several years
                ax.set_xlim(s.points[0][0] - timedelta(hours=1), s.points[0][0] + timedelta(hours=1))
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
            ax.set_title(f"{s.name}" + (f" ({s.unit})" if s.unit else ""), fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        fig.suptitle(title, fontsize=10)
        save(fig, title)
    return pngs


class _Html(str):
    """Text that is already HTML (a table cell that must not be escaped again)."""


def _a(link: Link | None) -> _Html:
    if link is None:
        return _Html(NONE_YET)
    text = f"{html.escape(link.label)} <code>{html.escape(link.id)}</code>"
    return _Html(f'<a href="{html.escape(link.url)}">{text}</a>' if link.url else text)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"<p><em>{NONE_YET}</em></p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{v if isinstance(v, _Html) else html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "?" if value is None or value != value else format(value, spec)


def render_html(report: OpsReport, plots: dict[str, str] | None = None) -> str:
    """A self-contained HTML page (plots embedded as base64 PNGs)."""
    plots = plots or {}
    c, i, a = report.champion, report.index, report.agents
    where = (f"MLflow UI {html.escape(report.mlflow_ui)}" if report.mlflow_ui else "MLflow: embedded store (run ids below; open with <code>make mlflow-ui</code>)")
    where += "; " + (f"Prefect UI {html.escape(report.prefect_ui)}" if report.prefect_ui else "Prefect: no UI configured (flow run ids below; <code>make ui</code>)")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>OpsFabric ops report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}h2{border-bottom:1px solid #ddd}"
        ".bad{color:#c0392b}.ok{color:#1e8449}code{font-size:12px}</style></head><body>",
        f"<h1>OpsFabric ops report</h1><p>Generated {_when(report.generated_at)}; problems and trends since {_when(report.since)}. {where}.</p>",
        "<h2>Problems</h2>",
        _table([{"area": p.area, "what": p.what, "when": p.when, "MLflow": _a(p.link), "Prefect": _a(p.flow_run)} for p in report.problems])
        if report.problems else "<p class='ok'>Nothing failing.</p>",
        "<h2>ML: champion and drift</h2>",
        (f"<p>Champion <b>{html.escape(c.name)} v{c.version}</b> (@{html.escape(c.alias)}), {c.score}, registered {c.registered}, "
         f"age {_fmt(c.age_days, '.1f')} days. Gate: {html.escape(c.reasons)}<br>Run: {_a(c.run)}; flow run: {_a(c.flow_run)}</p>")
        if c else f"<p>Champion: <em>{NONE_YET}</em></p>",
        _table(report.versions),
        "<h3>Drift verdicts (newest per batch)</h3>",
        _table([{"batch": d.batch, "checked": d.checked, "champion": d.champion_version, "drift share": _fmt(d.drift_share, ".2f"),
                 "retrain": _Html("<span class='bad'>yes</span>") if d.retrain else "no", "current score": _fmt(d.current_score), "run": _a(d.run)}
                for d in report.drift]),
        "<h2>RAG: live index</h2>",
        (f"<p>Alias <b>{html.escape(i.alias)}</b> → <b>{html.escape(i.collection)}</b>, built {i.built_at}. "
         + ", ".join(f"{k} {_fmt(v, '.4f')}" for k, v in i.scores.items()) + f"<br>Gate: {html.escape(i.decision)}"
         + (f"<br>Answers by: {html.escape(i.answers_by)}" if i.answers_by else "") + f"<br>Eval run: {_a(i.eval_run)}</p>")
        if i else f"<p>Live index: <em>{NONE_YET}</em></p>",
        _table(report.index_versions),
        "<h2>Agents: golden-trace regression</h2>",
        (f"<p>Latest suite {a.when}: pass rate <b class='{'ok' if a.failed == 0 else 'bad'}'>{_fmt(a.pass_rate)}</b> "
         f"({a.scenarios} scenarios, {a.failed} failed, run {a.status}). "
         + (f"Failing: {html.escape(', '.join(a.failing))}. " if a.failing else "")
         + (f"<br>Decided by: {html.escape(a.model)}" if a.model else "") + f"<br>Run: {_a(a.run)}; flow run: {_a(a.flow_run)}</p>")
        if a else f"<p>Regression suite: <em>{NONE_YET}</em></p>",
        "<h2>Trends</h2>",
    ]
    if not plots:
        parts.append(f"<p><em>{NONE_YET}</em></p>")
    for title, png in plots.items():
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md(link: Link | None) -> str:
    if link is None:
        return NONE_YET
    return f"[{link.label} `{link.id}`]({link.url})" if link.url else f"{link.label} `{link.id}`"


def render_markdown(report: OpsReport, html_location: str | None = None) -> str:
    """The short version for the Prefect UI (markdown artifact ``ops-report``)."""
    c, i, a = report.champion, report.index, report.agents
    lines = [f"# OpsFabric ops report ({_when(report.generated_at)})", ""]
    if html_location:
        lines += [f"Full report with plots: {html_location}", ""]
    lines += [f"## Problems since {_when(report.since)}", ""]
    lines += [f"- **{p.area}** {p.what} ({p.when}) {_md(p.link)}" + (f", flow run {_md(p.flow_run)}" if p.flow_run else "") for p in report.problems] or ["Nothing failing."]
    champion = f"{c.name} v{c.version}, {c.score}, {_fmt(c.age_days, '.1f')} days old, run {_md(c.run)}" if c else NONE_YET
    retrain = [d.batch for d in report.drift if d.retrain]
    drift = ", ".join(f"{d.batch} {_fmt(d.drift_share, '.2f')}" for d in report.drift) or NONE_YET
    drift += f"; retrain: {', '.join(retrain)}" if retrain else ""
    index = (f"{i.collection} (" + ", ".join(f"{k} {v:.3f}" for k, v in i.scores.items()) + ")"
             + (f", answers by {i.answers_by}" if i.answers_by else "")) if i else NONE_YET
    agents = (f"pass rate {_fmt(a.pass_rate)} ({a.failed} failed of {a.scenarios})" + (f", decided by {a.model}" if a.model else "")
              + f", run {_md(a.run)}") if a else NONE_YET
    lines += ["", "## Status", "", "| | |", "|---|---|", f"| ML champion | {champion} |", f"| drift share per batch | {drift} |",
              f"| live index | {index} |", f"| agent regression | {agents} |"]
    return "\n".join(lines)
