"""Answers with citations: an OpenAI-compatible LLM when configured, else an extractive answerer.

The offline default is :class:`ExtractiveAnswerer`: it copies the retrieved sentences most similar
to the question (MiniLM cosine similarity), each followed by its citation. It uses no language
model, never writes text of its own, and says so in ``Answer.method`` and ``Answer.note``.
With ``rag.llm.base_url`` set, :class:`LLMAnswerer` asks the endpoint to answer from a versioned
prompt template (``configs/prompts/``) whose hash is recorded with every answer.
Both keep retrieved text as data: see :mod:`opsfabric.rag.guard`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsfabric.rag.errors import EndpointError, RagError
from opsfabric.rag.guard import as_data_block, detect_injection, sentence_is_suspicious
from opsfabric.rag.retrieval import Chunk
from opsfabric.rag.settings import AnswerParams, LLMSettings

log = logging.getLogger(__name__)

EXTRACTIVE_NOTE = (
    "Extractive answer: sentences copied verbatim from the retrieved documents and ranked by similarity "
    "to the question; no language model was used (configure rag.llm.base_url for generated answers)."
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n\s*\n|\n(?=\s*[-*•>#]|\s*\d+\.)")


@dataclass
class Answer:
    """An answer, the chunks it cites, and what it cost."""

    question: str
    text: str
    method: str  # "extractive" | "llm"
    citations: list[dict]
    contexts: list[str]
    flagged_chunks: list[dict] = field(default_factory=list)
    note: str = ""
    model: str | None = None
    prompt_version: str | None = None
    prompt_hash: str | None = None
    latency_ms: float = 0.0
    retrieval_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        """Answer text, its note, and the numbered sources (what a user sees)."""
        sources = "\n".join(f"[{i}] {c['source_path']} (chunk {c['chunk_index']})" for i, c in enumerate(self.citations, start=1))
        note = f"\n({self.note})" if self.note else ""
        return f"{self.text}{note}\n\nSources:\n{sources}"


MAX_SENTENCE_WORDS = 80  # longer "sentences" are code or tables: poor answers, slow to embed


def split_sentences(text: str) -> list[str]:
    parts = [re.sub(r"\s+", " ", p).strip() for p in _SENTENCE_END.split(text)]
    return [p for p in parts if 4 <= len(p.split()) <= MAX_SENTENCE_WORDS]


def _flags(chunks: list[Chunk]) -> dict[str, list]:
    return {c.chunk_id: detect_injection(c.text) for c in chunks}


def _flagged_citations(chunks: list[Chunk], flags: dict[str, list]) -> list[dict]:
    """Citations of the chunks the injection detector flagged, with the rules that fired."""
    return [{**c.citation(), "rules": [f.rule for f in flags[c.chunk_id]]} for c in chunks if flags[c.chunk_id]]


class ExtractiveAnswerer:
    """Deterministic offline answerer: picks retrieved sentences, never generates text.

    Instruction-like paragraphs (see :mod:`opsfabric.rag.guard`) are never copied into an answer.
    """

    method = "extractive"

    def __init__(self, embed_model: Any, params: AnswerParams):
        self.embed_model, self.params = embed_model, params
        self._vectors: dict[str, list[float]] = {}  # sentence -> embedding (chunks recur across questions)

    def _embed(self, sentences: list[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(s for s in sentences if s not in self._vectors))
        if missing:
            self._vectors.update(zip(missing, self.embed_model.get_text_embedding_batch(missing)))
        return [self._vectors[s] for s in sentences]

    def answer(self, question: str, chunks: list[Chunk]) -> Answer:
        import numpy as np

        started = time.perf_counter()
        chunks = chunks[: self.params.max_context_chunks]
        flags = _flags(chunks)
        candidates: list[tuple[int, int, str]] = []  # (chunk position, sentence position, sentence)
        for ci, chunk in enumerate(chunks):
            # A flagged chunk may still hold facts: only its instruction-like paragraphs are dropped.
            clean = "\n\n".join(p for p in re.split(r"\n\s*\n", chunk.text) if not detect_injection(p))
            for si, sentence in enumerate(split_sentences(clean)):
                if not sentence_is_suspicious(sentence):
                    candidates.append((ci, si, sentence))
        chosen: list[tuple[int, int, str]] = []
        if candidates:
            q = np.asarray(self.embed_model.get_query_embedding(question))
            s = np.asarray(self._embed([c[2] for c in candidates]))
            scores = s @ q / (np.linalg.norm(s, axis=1) * np.linalg.norm(q) + 1e-12)
            order = sorted(range(len(candidates)), key=lambda i: (-round(float(scores[i]), 6), candidates[i][0], candidates[i][1]))
            seen: set[str] = set()
            for i in order:
                if candidates[i][2] not in seen:
                    chosen.append(candidates[i])
                    seen.add(candidates[i][2])
                if len(chosen) == self.params.max_sentences:
                    break
            chosen.sort(key=lambda c: (c[0], c[1]))  # document order reads better than score order
        cited = sorted({c[0] for c in chosen})
        number = {ci: n for n, ci in enumerate(cited, start=1)}
        text = " ".join(f"{sentence} [{number[ci]}]" for ci, _, sentence in chosen) or "The retrieved documents contain no answer."
        return Answer(
            question=question,
            text=text,
            method=self.method,
            citations=[chunks[ci].citation() for ci in cited],
            contexts=[c.text for c in chunks],
            flagged_chunks=_flagged_citations(chunks, flags),
            note=EXTRACTIVE_NOTE,
            latency_ms=(time.perf_counter() - started) * 1000,
        )


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    system: str
    user: str
    sha256: str
    path: str

    @classmethod
    def load(cls, path: Path) -> "PromptTemplate":
        """Raises RagError naming the file and the missing field."""
        try:
            raw = path.read_bytes()
            data = yaml.safe_load(raw)
        except (OSError, yaml.YAMLError) as exc:
            raise RagError(f"prompt template {path}: cannot read: {exc}") from exc
        missing = [k for k in ("name", "version", "system", "user") if not isinstance(data, dict) or k not in data]
        if missing:
            raise RagError(f"prompt template {path}: missing field(s) {missing}")
        for placeholder in ("{documents}", "{question}"):
            if placeholder not in data["user"]:
                raise RagError(f"prompt template {path}: field 'user' lacks the placeholder {placeholder}")
        return cls(data["name"], str(data["version"]), data["system"], data["user"], hashlib.sha256(raw).hexdigest()[:16], str(path))

    def messages(self, question: str, chunks: list[Chunk], flags: dict[str, list]) -> list[dict]:
        blocks = "\n".join(as_data_block(i, c.doc_id, c.text, bool(flags[c.chunk_id])) for i, c in enumerate(chunks, start=1))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user.format(documents=blocks, question=question)}]


class LLMAnswerer:
    """Chat completions on an OpenAI-compatible endpoint, from the versioned prompt template."""

    method = "llm"

    def __init__(self, llm: LLMSettings, template: PromptTemplate, api_key: str | None, params: AnswerParams):
        self.llm, self.template, self.api_key, self.params = llm, template, api_key, params

    def answer(self, question: str, chunks: list[Chunk]) -> Answer:
        import httpx

        started = time.perf_counter()
        chunks = chunks[: self.params.max_context_chunks]
        flags = _flags(chunks)
        url = f"{(self.llm.base_url or '').rstrip('/')}/chat/completions"
        body = {
            "model": self.llm.model,
            "messages": self.template.messages(question, chunks, flags),
            "temperature": self.llm.temperature,
            "max_tokens": self.llm.max_tokens,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=self.llm.timeout_seconds)
            response.raise_for_status()
            data = response.json()
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str) or not content.strip():
                raise ValueError(f"no answer text in the reply (content={content!r})")
            text = content.strip()
            usage = data.get("usage") or {}
            prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise EndpointError(f"chat endpoint {url} (rag.llm.base_url) failed: {exc}") from exc
        cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text) if 1 <= int(n) <= len(chunks)})
        return Answer(
            question=question,
            text=text,
            method=self.method,
            citations=[chunks[n - 1].citation() for n in cited],
            contexts=[c.text for c in chunks],
            flagged_chunks=_flagged_citations(chunks, flags),
            model=self.llm.model,
            prompt_version=f"{self.template.name}.v{self.template.version}",
            prompt_hash=self.template.sha256,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=prompt_tokens / 1000 * self.llm.price_per_1k_input_tokens + completion_tokens / 1000 * self.llm.price_per_1k_output_tokens,
        )


def make_answerer(config: Any, embed_model: Any) -> ExtractiveAnswerer | LLMAnswerer:
    """The configured answerer: LLM when ``rag.llm.base_url`` is set, else extractive (logged)."""
    rag = config.rag
    if rag.llm.configured:
        template = PromptTemplate.load(config.prompt_path)
        log.info("answerer: LLM %s at %s, prompt %s v%s sha256 %s", rag.llm.model, rag.llm.base_url, template.name, template.version, template.sha256)
        return LLMAnswerer(rag.llm, template, config.secret(rag.llm.api_key_env), rag.answer)
    log.info("answerer: extractive (no LLM endpoint configured; answers are retrieved sentences, not generated)")
    return ExtractiveAnswerer(embed_model, rag.answer)
