"""The local chat model on this machine: server start, memory, tokens/s, latency, and the agent's tool choices.

Measures the models ``make llm`` serves through llama-cpp-python (SmolLM2-135M-Instruct, and
Gemma-3-270M **base**), every figure labelled with the GGUF file, its sha256 and the server version.
These are the scores of a 135M / 270M model on this machine (2 shared cores, ``n_threads: 1``),
not what a deployment's model would score.

1. Server start: the server of ``configs/profiles/local-llm.yaml`` started and stopped 3 times:
   seconds to the first ``/v1/models`` answer (the launcher polls every 0.2 s), stop time, and the
   server process's resident memory (``/proc/<pid>/status`` VmRSS at ready; for the server of
   sections 2-4, VmRSS after each part and the VmHWM peak).
2. Tokens/s per model (``/v1/completions``, the server's reported ``usage``): prompt throughput
   from long prompts cut at varied places of the sample corpus (so llama.cpp's prompt cache
   cannot reuse a prefix) with ``max_tokens=1``; generation throughput from short prompts with
   ``max_tokens=128``: completion tokens / (time - prompt tokens / prompt throughput). Median over
   the rounds; the model order alternates round by round; a model swap is warmed up first (its load
   time is printed, not counted).
3. Latency: per agent request (all 36 golden requests, approvals replayed as the scenario records
   them) and per RAG answer (golden questions, retrieval timed separately), median and p90, for
   SmolLM2 with ``tool_calling: json_schema`` (the profile's configuration).
4. The agent's tool choices on the golden requests (``data/golden/agent``), side by side: the
   offline planner, SmolLM2 json_schema with and without few-shot examples, SmolLM2 through the
   server's native ``tools`` path (the ``-native-tools`` alias), Gemma-3-270M base json_schema with
   few-shot. Right first tool (a scenario expecting no tool call is right when none is proposed),
   right first tool AND arguments (the project's matcher, ``opsfabric.agents.matching.compare_call``;
   the call's outcome is not compared), the whole golden verdict, Wilson 95% intervals over
   scenarios, latency and tokens per request; then paired exact McNemar tests (two-sided binomial
   test on the discordant scenarios). Temperature 0, seed 0: greedy decoding, one trial per
   scenario is the whole distribution (a few scenarios are repeated to check that).

Temporary state folders only; every server started here is stopped. About 10 minutes on 2 busy
cores, 4 of them the 20 RAG answers (~1,850-token prompts, ~13 s each); the time per part is
printed. ``--quick`` is a smoke run of a few requests (~2 minutes); ``--requests N`` takes N golden
scenarios spread over the suite.

    .venv/bin/python benchmarks/local_model.py [--requests N] [--rag-questions N] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROFILE = "configs/profiles/local-llm.yaml"
SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m-base"
NATIVE_SUFFIX = "-native-tools"
PROMPT_CHARS = 2000  # ~450-700 tokens of corpus text per prompt-throughput request
GEN_TOKENS = 128


# ---- small statistics ---------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of b vs c discordant pairs at 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# ---- processes and HTTP ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB (empty when /proc cannot tell)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return out


def complete(base_url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, dict]:
    """One /v1/completions request at temperature 0, seed 0: (seconds, usage)."""
    import httpx

    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/completions", json=body, timeout=300)
    response.raise_for_status()
    seconds = time.perf_counter() - started
    return seconds, response.json().get("usage") or {}


def code_version() -> str:
    """The checkout's commit, and how many tracked files differ from it (what these figures were measured on)."""
    import subprocess

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown (no git)"
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    return f"commit {commit}" + (f" + uncommitted changes in {len(changed)} tracked file(s)" if changed else " (clean)")


def corpus_text() -> str:
    parts = [p.read_text(errors="replace") for p in sorted((ROOT / "data" / "corpus").rglob("*")) if p.suffix in (".md", ".txt")]
    return re.sub(r"\s+", " ", " ".join(parts))


def label(identity: dict) -> str:
    sha = identity.get("opsfabric.model.sha256") or "?"
    return (f"{identity.get('opsfabric.model.file', '?')} sha256:{sha[:16]} "
            f"({identity.get('opsfabric.model.kind', '?')}, {identity.get('opsfabric.model.distribution', '?')}); "
            f"server {identity.get('opsfabric.server', '?')}, n_threads {identity.get('opsfabric.server.n_threads', '?')}")


def fmt_s(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.2f} s, p90 {percentile(values, 90):.2f} s, max {max(values):.2f} s"


# ---- 1. server start ------------------------------------------------------------------------------
def server_starts(tmp: Path, count: int) -> None:
    from opsfabric.llm.launcher import served_aliases, start_server
    from opsfabric.settings import load_settings

    state = tmp / "starts"
    settings = load_settings(PROFILE, state_dir=state, llm={"server": {"port": free_port()}})
    served_aliases(settings)  # resolve the GGUF and cache its sha256 once: the starts below time the server itself
    ready, stops, rss = [], [], []
    for _ in range(count):
        port = free_port()
        started = time.perf_counter()
        server = start_server(settings, port=port)
        try:
            ready.append(time.perf_counter() - started)
            rss.append(memory_mb(server.child.process.pid).get("VmRSS", float("nan")))
        finally:
            t0 = time.perf_counter()
            server.stop()
            stops.append(time.perf_counter() - t0)
    print(f"\n== 1. Server start ({settings.llm.server.models}, n_threads {settings.llm.server.n_threads}, "
          f"{count} starts, each stopped) ==")
    print(f"to the first /v1/models answer (polled every 0.2 s): median {statistics.median(ready):.2f} s, max {max(ready):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in ready)})")
    print(f"stop (SIGTERM to the process group, reaped): median {statistics.median(stops):.2f} s, max {max(stops):.2f} s")
    print(f"server resident memory at ready (VmRSS, the server process): median {statistics.median(rss):.0f} MB")


# ---- 2. throughput --------------------------------------------------------------------------------
def throughput(base_url: str, rounds: int, identities: dict[str, dict]) -> None:
    text = corpus_text()
    rng = random.Random(0)
    models = [SMOL, GEMMA]
    prompt_rates: dict[str, list[float]] = {m: [] for m in models}
    prompt_tokens: dict[str, list[int]] = {m: [] for m in models}
    gen_samples: dict[str, list[tuple[float, int, int]]] = {m: [] for m in models}  # (seconds, prompt tokens, completion tokens)
    loads: dict[str, list[float]] = {m: [] for m in models}
    stories = ["Once upon a time, in a small village by the sea,", "The history of the city begins with",
               "Here is a long explanation of how a computer works:", "In the spring of that year, the old library"]
    for round_no in range(rounds):
        order = models if round_no % 2 == 0 else list(reversed(models))
        for model in order:
            seconds, _ = complete(base_url, model, f"Warm-up {round_no}.", 1)  # the swap: the server loads the model
            loads[model].append(seconds)
            start = rng.randrange(0, len(text) - PROMPT_CHARS)
            seconds, usage = complete(base_url, model, f"[{model} round {round_no}] " + text[start:start + PROMPT_CHARS], 1)
            prompt_rates[model].append(usage["prompt_tokens"] / seconds)
            prompt_tokens[model].append(usage["prompt_tokens"])
            seconds, usage = complete(base_url, model, stories[round_no % len(stories)], GEN_TOKENS)
            gen_samples[model].append((seconds, usage["prompt_tokens"], usage["completion_tokens"]))
    print(f"\n== 2. Tokens/s per model (/v1/completions, usage reported by the server, temperature 0, seed 0; "
          f"median of {rounds} round(s), model order alternating) ==")
    for model in models:
        p_rate = statistics.median(prompt_rates[model])
        gen = [c / max(s - p / p_rate, 1e-6) for s, p, c in gen_samples[model]]
        print(f"{model}: {label(identities[model])}")
        print(f"  prompt (input): {p_rate:.0f} tok/s (per request {', '.join(f'{r:.0f}' for r in prompt_rates[model])}; "
              f"prompts of {min(prompt_tokens[model])}-{max(prompt_tokens[model])} tokens, max_tokens=1)")
        print(f"  generation (output): {statistics.median(gen):.1f} tok/s (per request {', '.join(f'{r:.1f}' for r in gen)}; "
              f"{', '.join(str(c) for _, _, c in gen_samples[model])} tokens generated of max {GEN_TOKENS})")
        print(f"  model swap (load on the first request naming it): median {statistics.median(loads[model]):.2f} s (not counted above)")


# ---- 3/4. the agent -------------------------------------------------------------------------------
@dataclass
class Outcome:
    scenario: str
    first: Any = None  # the first proposed ToolCall, or None
    right_tool: bool = False
    right_args: bool = False
    golden_pass: bool = False
    seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    model_calls: int = 0
    max_call_out: int = 0  # the longest single reply, in tokens
    estimated: bool = False
    status: str = ""
    error: str | None = None
    fingerprint: str = ""


@dataclass
class ConfigRun:
    name: str
    label: str
    outcomes: list[Outcome] = field(default_factory=list)


def first_candidates(spec: Any) -> list[Any]:
    """Expected calls a run may start with: the first (strict), any (unordered, subset, superset), or any not
    required to come after another (partial_order)."""
    if not spec.calls:
        return []
    if spec.mode == "strict":
        return [spec.calls[0]]
    if spec.mode == "partial_order":
        later = {c for _, c in spec.before}
        return [c for c in spec.calls if c.step_id not in later]
    return list(spec.calls)


def judge_first(spec: Any, first: Any) -> tuple[bool, bool]:
    """(right tool, right tool and arguments) of the first proposed call under the project's matcher."""
    from opsfabric.agents.matching import compare_call

    candidates = first_candidates(spec)
    if not candidates:
        return first is None, first is None
    if first is None:
        return False, False
    right_tool = any(c.tool == first.name for c in candidates)
    right_args = any(not compare_call(c.model_copy(update={"outcome": None}), first) for c in candidates)
    return right_tool, right_args


def run_config(name: str, config: Any, scenarios: list[Any], tmp: Path, *, base_url: str | None = None,
               alias: str | None = None, warm_up: bool = True) -> ConfigRun:
    """Warm up (not counted), then every scenario with the golden runner (approvals replayed).

    The warm-up first waits for the server to be idle and to have loaded ``alias`` (a one-token completion with a
    long timeout: a runaway generation of an earlier request ends first), then runs one agent request so the
    prompt cache holds the configuration's system prompt, as it would on a server in use.
    """
    from opsfabric.agents.agent import build_agent, open_checkpointer, start_run
    from opsfabric.agents.golden import run_scenario
    from opsfabric.agents.replay import ReplayBackend
    from opsfabric.agents.trace import trajectory

    folder = tmp / re.sub(r"\W+", "-", name)
    warm = folder / "warm-up"
    warm.mkdir(parents=True, exist_ok=True)
    agent = build_agent(config, ReplayBackend(journal=warm / "journal.jsonl"), open_checkpointer(warm / "cp.sqlite"))
    if base_url and alias:
        complete(base_url, alias, "Hello", 1)
    if warm_up:
        try:
            start_run(agent, "what can you tell me about the platform?")
        except Exception as exc:  # noqa: BLE001 - a failed warm-up is said, the scenarios still run
            print(f"  ({name}: the warm-up request failed: {type(exc).__name__}: {str(exc)[:160]})")
    attrs = agent.labels
    if "opsfabric.model.file" in attrs:
        m = config.model
        label_text = label(attrs) + (f"; prompt {attrs.get('opsfabric.prompt.version')} sha256:{attrs.get('opsfabric.prompt.sha256')}"
                                     f", tool_calling {attrs.get('opsfabric.tool_calling')}, few_shot {attrs.get('opsfabric.prompt.few_shot')}"
                                     f", max_tokens {m.max_tokens}"
                                     + (f", cache_warmup {getattr(m, 'cache_warmup', 'n/a')}" if m.tool_calling == "json_schema" else "")
                                     + f", timeout {m.timeout_seconds:g} s")
    else:
        label_text = attrs.get("opsfabric.model.kind", "offline planner")
    run = ConfigRun(name, label_text)
    for scenario in scenarios:
        out = Outcome(scenario.id)
        started = time.perf_counter()
        try:
            result = run_scenario(scenario, config, folder / scenario.id)
        except Exception as exc:  # a failed request counts as wrong, and is named
            out.seconds, out.error = time.perf_counter() - started, f"{type(exc).__name__}: {str(exc)[:160]}"
            run.outcomes.append(out)
            continue
        trace = result.result.trace
        calls = trajectory(trace) if trace else []
        out.first = calls[0] if calls else None
        out.right_tool, out.right_args = judge_first(scenario.expect.trajectory, out.first)
        out.golden_pass, out.seconds, out.status = result.verdict.passed, result.seconds, result.result.status
        if trace:
            totals = trace["totals"]
            out.tokens_in, out.tokens_out = totals["gen_ai.usage.input_tokens"], totals["gen_ai.usage.output_tokens"]
            out.model_calls, out.estimated = totals["model_calls"], totals["opsfabric.usage.estimated"]
            out.max_call_out = max((e["attributes"]["gen_ai.usage.output_tokens"] for e in trace["events"] if e["kind"] == "model_call"), default=0)
            out.fingerprint = repr(([(c.name, sorted(c.args.items()), c.outcome) for c in calls], trace["answer"], out.tokens_in, out.tokens_out))
        run.outcomes.append(out)
    return run


def share(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k:>2}/{n} {k / n:>4.0%} [{lo:.2f},{hi:.2f}]" if n else "n/a"


def print_agent_tables(runs: list[ConfigRun], scenarios: list[Any]) -> None:
    n = len(scenarios)
    print(f"\n== 4. Agent tool choice on {n} golden requests (data/golden/agent), side by side ==")
    print("Temperature 0, seed 0: greedy decoding, deterministic on this server (checked below), so one trial per scenario "
          "is the whole distribution at T=0; the 95% intervals (Wilson) are over scenarios, not over sampling noise.")
    print("Right first tool: the first proposed call names a tool the golden trajectory can start with; a scenario "
          "expecting no call is right when none is proposed. +args: that call also matches the golden arguments "
          "(opsfabric.agents.matching.compare_call; outcome not compared). Both against the scenario's shared expected "
          "trajectory, the same for every configuration. Golden: the whole scenario verdict "
          "for that model (trajectory, answer checks, outcome class, approvals). Latency: the whole request, approvals replayed; tokens as reported.")
    for r in runs:
        print(f"  {r.name}: {r.label}")
    head = f"{'configuration':<34}{'right first tool':>26}{'right tool + args':>26}{'golden pass':>26}{'median s':>10}{'p90 s':>8}{'tok in':>8}{'tok out':>8}{'calls':>6}{'errors':>7}"
    print(head)
    for r in runs:
        o = r.outcomes
        secs = [x.seconds for x in o]
        est = "~" if any(x.estimated for x in o) else ""
        tok = lambda v: "-" if not any(x.tokens_in for x in o) else est + format(statistics.mean(v), ".0f")  # noqa: E731
        print(f"{r.name:<34}{share(sum(x.right_tool for x in o), len(o)):>26}{share(sum(x.right_args for x in o), len(o)):>26}"
              f"{share(sum(x.golden_pass for x in o), len(o)):>26}{statistics.median(secs):>10.2f}{percentile(secs, 90):>8.2f}"
              f"{tok([x.tokens_in for x in o]):>8}{tok([x.tokens_out for x in o]):>8}"
              f"{statistics.mean(x.model_calls for x in o):>6.1f}{sum(x.error is not None for x in o):>7}")
    if any(x.estimated for r in runs for x in r.outcomes):
        print("~: some token counts are estimated (the endpoint reported none for some calls)")
    print("(mean tokens in/out and model calls per request; the offline planner reports no tokens: it is not a language model)")
    for r in runs:
        for x in r.outcomes:
            if x.error:
                print(f"  error {r.name} / {x.scenario} ({x.seconds:.0f} s, counted as wrong): {x.error}")

    print("\nPer scenario (A: right tool and arguments, t: right tool, wrong arguments, x: wrong tool, -: no tool proposed "
          "where one was expected, =: correctly no tool, !: error), then the first tool proposed:")
    print(f"{'scenario':<31}" + "".join(f"{r.name[:25]:<26}" for r in runs))
    for i, scenario in enumerate(scenarios):
        cells = []
        for r in runs:
            x = r.outcomes[i]
            expected = bool(scenario.expect.trajectory.calls)
            code = "!" if x.error else ("=" if (not expected and x.first is None) else "A" if x.right_args else "t" if x.right_tool
                                        else "-" if x.first is None else "x")
            cells.append(f"{code} {(x.first.name if x.first else '')[:23]:<24}")
        print(f"{scenario.id[:30]:<31}" + "".join(cells))


def print_comparisons(pairs: list[tuple[ConfigRun, ConfigRun]]) -> None:
    k = 2 * len(pairs)
    print(f"\nPaired comparisons over the same scenarios: exact McNemar test (two-sided binomial test on the discordant "
          f"scenarios). b: right with the first only, c: right with the second only. p-values are per test, uncorrected "
          f"for the {k} tests printed (Bonferroni threshold {0.05 / k:.4f}); 'no difference shown' is not 'equal'.")
    for a, b in pairs:
        for metric, attr in (("right first tool", "right_tool"), ("right tool + args", "right_args")):
            xa = [getattr(o, attr) for o in a.outcomes]
            xb = [getattr(o, attr) for o in b.outcomes]
            only_a = sum(p and not q for p, q in zip(xa, xb))
            only_b = sum(q and not p for p, q in zip(xa, xb))
            p = mcnemar_exact(only_a, only_b)
            if p < 0.05:
                better = a.name if only_a > only_b else b.name
                verdict = f"{better} is right more often (p < 0.05{', and below the Bonferroni threshold' if p < 0.05 / k else ', not below the Bonferroni threshold'})"
            else:
                verdict = "no difference shown at 0.05"
            print(f"  {a.name} vs {b.name}, {metric}: {sum(xa)} vs {sum(xb)} of {len(xa)}; "
                  f"discordant b={only_a}, c={only_b}; p={p:.4f}{f' ({p:.1e})' if p < 0.0001 else ''}: {verdict}")


# ---- 3b. RAG answers ------------------------------------------------------------------------------
@dataclass
class RagIndex:
    config: Any
    retriever: Any
    embed_model: Any
    chunks: int
    seconds: float


def rag_index(settings: Any) -> RagIndex:
    from opsfabric.rag import ingest, qdrant
    from opsfabric.rag.embeddings import configured_embedding
    from opsfabric.rag.retrieval import Retriever
    from opsfabric.rag.settings import RagConfig

    config = RagConfig(settings)
    embed_model = configured_embedding(config)
    started = time.perf_counter()
    report = ingest.ingest_corpus(config, embed_model, show_progress=False)
    retriever = Retriever(qdrant.open_client(config), report.collection, embed_model, config.rag.retrieval)
    return RagIndex(config, retriever, embed_model, report.chunks_total, time.perf_counter() - started)


def rag_answers(index: RagIndex, count: int, identity: dict) -> None:
    from opsfabric.rag.answer import make_answerer
    from opsfabric.rag.golden import read_golden_source

    items = read_golden_source(index.config.golden_source)
    items = spread(items, count)
    answerer = make_answerer(index.config, index.embed_model)  # the model is loaded: the agent runs just before used it
    retrieval, latency, tin, tout, cited = [], [], [], [], []
    for item in items:
        started = time.perf_counter()
        chunks = index.retriever.search(item.question)
        retrieval.append(time.perf_counter() - started)
        answer = answerer.answer(item.question, chunks)
        latency.append(answer.latency_ms / 1000)
        tin.append(answer.prompt_tokens)
        tout.append(answer.completion_tokens)
        if getattr(answer, "citations", None) is not None:
            cited.append(bool(answer.citations))
    rag = index.config.rag
    print(f"RAG answer ({len(items)} golden questions spread over data/golden/rag_qa.jsonl; {answerer.__class__.__name__}, "
          f"{rag.llm.model}: {label(identity)}; temperature {rag.llm.temperature}, max_tokens {rag.llm.max_tokens}, "
          f"top {rag.retrieval.top_k} {rag.retrieval.mode} chunks of {rag.chunking.chunk_size} tokens, up to {rag.answer.max_context_chunks} in the prompt):")
    print(f"  answer (the model call, retrieval excluded): {fmt_s(latency)}; tokens per answer: in {statistics.mean(tin):.0f} "
          f"(median {statistics.median(tin):.0f}), out {statistics.mean(tout):.0f} (median {statistics.median(tout):.0f})")
    print(f"  retrieval (hybrid search, MiniLM query embedding, local Qdrant), separately: median {statistics.median(retrieval) * 1000:.0f} ms, "
          f"p90 {percentile(retrieval, 90) * 1000:.0f} ms")
    if cited:
        print(f"  answers citing at least one retrieved document: {sum(cited)}/{len(cited)} (a 135M model's answers: "
              f"not a quality figure for a real model)")


# ---- main -----------------------------------------------------------------------------------------
def spread(items: list[Any], count: int) -> list[Any]:
    if count >= len(items):
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None, help="golden agent requests per configuration, spread over the suite (default: all 36)")
    parser.add_argument("--rag-questions", type=int, default=20, help="golden RAG questions answered (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per model (default 3)")
    parser.add_argument("--starts", type=int, default=3, help="server starts timed (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 agent requests, 3 RAG questions, 1 round, 1 start")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rag_questions, args.rounds, args.starts = args.requests or 4, 3, 1, 1

    with tempfile.TemporaryDirectory(prefix="local-model-bench-") as tmp_name:
        tmp = Path(tmp_name)
        from opsfabric.runtime_env import configure_runtime_env

        configure_runtime_env(state_dir=tmp)  # Prefect home in the temporary folder, never the checkout's .opsfabric
        return run(args, tmp)


def run(args: argparse.Namespace, tmp: Path) -> int:
    from opsfabric.agents.golden import load_scenario, scenario_files
    from opsfabric.agents.settings import AgentsSettings
    from opsfabric.llm.identity import probe_identity
    from opsfabric.llm.launcher import served_aliases, start_server
    from opsfabric.rag import qdrant
    from opsfabric.settings import load_settings

    wall = time.perf_counter()
    phases: list[tuple[str, float]] = []
    mark = [wall]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases.append((name, now - mark[0]))
        mark[0] = now

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; "
          f"Python {sys.version.split()[0]}; code: {code_version()}")
    print("These are the figures of a 135M (SmolLM2) and a 270M base (Gemma-3) model on this machine, not what a "
          "deployment's model would score or how fast it would run.")
    scenarios = spread([load_scenario(p) for p in scenario_files(ROOT / "data" / "golden" / "agent")], args.requests or 10**6)

    server_starts(tmp, args.starts)
    phase("server starts")

    state = tmp / "main"
    port = free_port()
    settings = load_settings(PROFILE, state_dir=state, llm={"server": {"port": port, "models": [SMOL, GEMMA]}})

    def agents_config(model: str, tool_calling: str, few_shot: bool) -> Any:
        return load_settings(PROFILE, state_dir=state, llm={"server": {"port": port, "models": [SMOL, GEMMA]}},
                             agents={"model": {"model": model, "tool_calling": tool_calling, "few_shot": few_shot}}).agents

    started = time.perf_counter()
    served_aliases(settings)
    assembled = time.perf_counter() - started
    offline = run_config("offline planner", AgentsSettings(), scenarios, tmp / "agent")  # no server needed
    phase("Gemma assembly + offline planner")
    index = rag_index(settings)  # ingested before the server starts: the two do not share the cores
    phase("RAG ingest")
    server = None
    try:
        server = start_server(settings, port=port)
        pid = server.child.process.pid
        rss_ready = memory_mb(pid).get("VmRSS", float("nan"))
        identities = {alias: probe_identity(server.base_url, alias) for alias in server.aliases}
        print(f"\nModels served for sections 2-4 (temporary state folder; Gemma assembled from its PyPI part packages and "
              f"sha256-checked in {assembled:.1f} s, once per state folder):")
        for alias, ident in identities.items():
            print(f"  {alias}: {label(ident)}; chat_format {server.aliases[alias]['served_chat_format']}")

        memory = [("at ready, SmolLM2 loaded", rss_ready)]

        def note_memory(when: str) -> None:
            memory.append((when, memory_mb(pid).get("VmRSS", float("nan"))))

        url = server.base_url
        throughput(url, args.rounds, identities)
        phase("server start + tokens/s")
        note_memory(f"after section 2, {GEMMA if args.rounds % 2 == 1 else SMOL} last")

        # grouped by alias: the server swaps models when a request names another one
        smol_few = run_config("SmolLM2 json few-shot", agents_config(SMOL, "json_schema", True), scenarios, tmp / "agent",
                              base_url=url, alias=SMOL)
        smol_zero = run_config("SmolLM2 json zero-shot", agents_config(SMOL, "json_schema", False), scenarios, tmp / "agent",
                               base_url=url, alias=SMOL)
        repeat = run_config("SmolLM2 json few-shot (repeat)", agents_config(SMOL, "json_schema", True), scenarios[:3], tmp / "agent",
                            warm_up=False)
        same = sum(a.fingerprint == b.fingerprint and a.error is None for a, b in zip(smol_few.outcomes, repeat.outcomes))
        note_memory("after the SmolLM2 json_schema agent runs")
        phase("SmolLM2 json_schema agent runs (few-shot, zero-shot, repeat)")
        print("\n== 3. Latency (SmolLM2-135M, json_schema with few-shot: the profile's configuration) ==")
        secs = [o.seconds for o in smol_few.outcomes]
        print(f"agent request ({len(secs)} golden requests, whole request incl. replayed approvals and tool calls, one warm-up "
              f"request not counted; {statistics.mean(o.model_calls for o in smol_few.outcomes):.1f} model calls per request): {fmt_s(secs)}")
        rag_answers(index, args.rag_questions, identities[SMOL])
        note_memory("after the RAG answers (SmolLM2)")
        phase("RAG answers")
        smol_native = run_config("SmolLM2 native tools", agents_config(SMOL + NATIVE_SUFFIX, "native", False), scenarios,
                                 tmp / "agent", base_url=url, alias=SMOL + NATIVE_SUFFIX)
        note_memory("after the native-tools runs (SmolLM2, chatml-function-calling)")
        phase("SmolLM2 native-tools agent runs")
        gemma_few = run_config("Gemma-3 base json few-shot", agents_config(GEMMA, "json_schema", True), scenarios, tmp / "agent",
                               base_url=url, alias=GEMMA)
        note_memory("after the Gemma-3 runs")
        phase("Gemma-3 agent runs")

        runs = [offline, smol_few, smol_zero, smol_native, gemma_few]
        print_agent_tables(runs, scenarios)
        limit = agents_config(SMOL + NATIVE_SUFFIX, "native", False).model.max_tokens
        over = [o for o in smol_native.outcomes if o.max_call_out > limit]
        timeouts = [o for o in smol_native.outcomes if o.error and "Timeout" in o.error]
        if over or timeouts:
            import importlib.metadata

            print(f"  Note, native path: {len(over)} request(s) got a reply longer than agents.model.max_tokens={limit} (up to "
                  f"{max((o.max_call_out for o in over), default=0)} tokens) and {len(timeouts)} timed out: langchain-openai "
                  f"{importlib.metadata.version('langchain-openai')} sends the limit as max_completion_tokens, which "
                  f"llama-cpp-python 0.3.36 does not read, so a reply can run to the context size; a request that times out "
                  f"leaves the server generating, and the next request waits for it.")
        print(f"Determinism check: the first {len(repeat.outcomes)} scenarios of SmolLM2 json few-shot run again after the "
              f"zero-shot runs (another prompt in the server's cache): {same}/{len(repeat.outcomes)} identical (tool calls, arguments, outcomes, "
              "answer, token counts).")
        print_comparisons([(smol_few, offline), (smol_zero, offline), (smol_native, offline), (gemma_few, offline),
                           (smol_few, smol_native), (smol_few, smol_zero), (gemma_few, smol_few)])
        peak = memory_mb(pid).get("VmHWM", float("nan"))
        print(f"\nServer memory (VmRSS of the server process, llama-cpp-python holding one model at a time; n_ctx "
              f"{settings.llm.server.n_ctx}): " + "; ".join(f"{mb:.0f} MB {when}" for when, mb in memory) + f"; peak VmHWM {peak:.0f} MB")
    finally:
        if server is not None:
            server.stop()
        qdrant.close_client(index.config)
    load = os.getloadavg()
    print(f"RAG index for section 3: {index.chunks} chunks ingested in {index.seconds:.1f} s (MiniLM, local Qdrant, temporary folder).")
    print("time per part: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases))
    print(f"total wall time {time.perf_counter() - wall:.0f} s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
