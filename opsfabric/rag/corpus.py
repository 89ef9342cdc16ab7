"""Load and clean a folder of documents: Markdown, plain text, reStructuredText, HTML and PDF.

A document's id is its corpus-relative POSIX path, stable across runs and machines, so the
ingestion docstore can tell an unchanged file from a changed one by its content hash. Every bad
document is a :class:`BadDocumentError` naming the file and the reason.
"""

from __future__ import annotations

import fnmatch
import hashlib
import html
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from opsfabric.rag.errors import BadDocumentError, CorpusError

TEXT_FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".rst": "text", ".html": "html", ".htm": "html"}
PDF_FORMATS = {".pdf": "pdf"}


@dataclass(frozen=True)
class LoadedDocument:
    """One cleaned document, ready to chunk."""

    doc_id: str  # corpus-relative POSIX path
    title: str
    text: str
    content_hash: str  # sha256 of the file's bytes
    source_path: str
    format: str

    def metadata(self, pipeline_version: str) -> dict:
        return {
            "source_path": self.doc_id,
            "title": self.title,
            "content_hash": self.content_hash,
            "format": self.format,
            "pipeline_version": pipeline_version,
        }


@dataclass
class LoadedCorpus:
    documents: list[LoadedDocument] = field(default_factory=list)
    bad_documents: list[BadDocumentError] = field(default_factory=list)

    @property
    def corpus_hash(self) -> str:
        """Hash of (doc id, content hash) pairs: equal iff the same files with the same bytes."""
        digest = hashlib.sha256()
        for doc in sorted(self.documents, key=lambda d: d.doc_id):
            digest.update(f"{doc.doc_id}\0{doc.content_hash}\n".encode())
        for bad in sorted(self.bad_documents, key=lambda b: b.path):
            digest.update(f"bad:{bad.path}\n".encode())
        return digest.hexdigest()[:16]


def discover_documents(corpus_dir: Path, include: list[str], exclude: list[str]) -> list[Path]:
    """Files under ``corpus_dir`` matching ``include`` and not ``exclude`` (globs relative to the folder), sorted.

    Symlinks are listed (not followed for discovery) so that :func:`load_document` can reject those
    pointing out of the corpus folder with a clear error.

    Raises:
        CorpusError: the folder does not exist.
    """
    if not corpus_dir.is_dir():
        raise CorpusError(f"corpus folder not found: {corpus_dir} (rag.corpus.path)")
    found: set[Path] = set()
    for path in corpus_dir.rglob("*"):
        if not (path.is_file() or path.is_symlink()) or path.is_dir():
            continue
        rel = path.relative_to(corpus_dir).as_posix()
        if any(_glob_match(rel, pattern) for pattern in include) and not any(_glob_match(rel, p) for p in exclude):
            found.add(path)
    return sorted(found)


def _glob_match(rel: str, pattern: str) -> bool:
    # "**/*.md" must also match top-level files ("a.md"), which fnmatch alone does not do.
    return fnmatch.fnmatch(rel, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]))


def load_document(path: Path, corpus_dir: Path, *, max_bytes: int, cache_dir: Path | None = None) -> LoadedDocument:
    """Read, decode and clean one file (the cleaned text is cached by content hash in ``cache_dir``).

    Raises:
        BadDocumentError: symlink out of the corpus, unsupported format, oversize, empty, binary,
            undecodable, unreadable PDF or no text after cleaning. The message names the file.
    """
    corpus_dir = corpus_dir.resolve()
    rel = path.relative_to(corpus_dir).as_posix() if path.is_absolute() and path.is_relative_to(corpus_dir) else str(path)
    resolved = path.resolve()
    if not resolved.is_relative_to(corpus_dir):
        raise BadDocumentError(rel, f"symlink points outside the corpus folder {corpus_dir} (to {resolved})")
    suffix = path.suffix.lower()
    kind = TEXT_FORMATS.get(suffix) or PDF_FORMATS.get(suffix)
    if kind is None:
        raise BadDocumentError(rel, f"unsupported format {suffix!r} (supported: {sorted({**TEXT_FORMATS, **PDF_FORMATS})})")
    try:
        size = resolved.stat().st_size
    except OSError as exc:
        raise BadDocumentError(rel, f"cannot read: {exc}") from exc
    if size == 0:
        raise BadDocumentError(rel, "empty file (0 bytes)")
    if size > max_bytes:
        raise BadDocumentError(rel, f"oversize: {size} bytes > rag.corpus.max_bytes={max_bytes}")
    raw = resolved.read_bytes()
    content_hash = hashlib.sha256(raw).hexdigest()
    cached = _read_cache(cache_dir, kind, content_hash)
    if cached is not None:  # same bytes, same format, same cleaner: same text (content-addressed)
        return LoadedDocument(rel, cached[0] or Path(rel).stem, cached[1], content_hash, str(path), kind)
    if kind == "pdf":
        title, text = _pdf_text(raw, rel)
    else:
        if b"\x00" in raw:
            offset = raw.index(b"\x00")
            raise BadDocumentError(rel, f"binary content: NUL byte at offset {offset} in a {kind} file")
        try:
            decoded = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadDocumentError(rel, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from exc
        title, text = {"markdown": _clean_markdown, "text": _clean_text, "html": _clean_html}[kind](decoded)
    text = normalize_text(text)
    if not text.strip():
        raise BadDocumentError(rel, f"no text after cleaning ({kind}, {size} bytes)")
    _write_cache(cache_dir, kind, content_hash, title, text)
    return LoadedDocument(rel, title or Path(rel).stem, text, content_hash, str(path), kind)


# Bump when cleaning changes: cached texts of the old cleaner are then ignored, and (being part of
# the index config) the next ingestion rebuilds the index from the new text.
CLEANER_VERSION = "1"


def _cache_file(cache_dir: Path, kind: str, content_hash: str) -> Path:
    return cache_dir / f"v{CLEANER_VERSION}" / kind / content_hash[:2] / f"{content_hash}.json"


def _read_cache(cache_dir: Path | None, kind: str, content_hash: str) -> tuple[str, str] | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads(_cache_file(cache_dir, kind, content_hash).read_text(encoding="utf-8"))
        return data["title"], data["text"]
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(cache_dir: Path | None, kind: str, content_hash: str, title: str, text: str) -> None:
    if cache_dir is None:
        return
    from opsfabric.files import write_atomic

    write_atomic(_cache_file(cache_dir, kind, content_hash), json.dumps({"title": title, "text": text}))


def load_corpus(corpus_dir: Path, include: list[str], exclude: list[str], *, max_bytes: int, cache_dir: Path | None = None) -> LoadedCorpus:
    """Load every matching file; bad ones are collected (not raised) for the caller's policy."""
    corpus = LoadedCorpus()
    for path in discover_documents(corpus_dir, include, exclude):
        try:
            corpus.documents.append(load_document(path, corpus_dir, max_bytes=max_bytes, cache_dir=cache_dir))
        except BadDocumentError as bad:
            corpus.bad_documents.append(bad)
    return corpus


# ---- cleaning -------------------------------------------------------------------------------
_RULE_LINES = re.compile(r"^\s*([=\-~^*#`'\"]{3,})\s*$", re.M)  # rst underlines and other rule lines
_WS = re.compile(r"[ \t\f\v\u00a0]+")
# Control and format characters (Unicode categories Cc, Cf) except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufff9-\ufffb]")


def normalize_text(text: str) -> str:
    """NFKC, no control characters, single spaces, at most one blank line between paragraphs."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _clean_markdown(text: str) -> tuple[str, str]:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"```[a-zA-Z0-9_+-]*\n", "\n", text)  # keep code, drop fence language markers
    text = text.replace("```", "")
    text = re.sub(r"</?[a-zA-Z][^>]*>", "", text)  # inline HTML tags (often badge images inside links)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # images and badges
    text = re.sub(r"\[\s*\]\([^)]*\)", "", text)  # links left empty once their badge image is gone
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links -> their text
    text = html.unescape(text)
    title = ""
    for line in text.splitlines():
        match = re.match(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*$", line)
        if match:
            title = match.group(1).strip()
            break
    text = re.sub(r"^\s{0,3}#{1,6}\s+", "", text, flags=re.M)  # heading markers
    text = re.sub(r"^\s*(\|?\s*:?-{3,}:?\s*)+\|?\s*$", "", text, flags=re.M)  # table rules
    return title, text


def _clean_text(text: str) -> tuple[str, str]:
    title = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = _RULE_LINES.sub("", text)
    return title[:200], text


def _clean_html(text: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "form"]):
        tag.decompose()
    for tag in soup.select(".navigation, .nav-panel, hr"):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    if not title:
        heading = soup.find(["h1", "h2"])
        title = heading.get_text(" ", strip=True) if heading else ""
    for block in soup.find_all(["p", "div", "li", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "br", "dd", "dt", "table"]):
        block.insert_after("\n")
    for inline in soup.find_all(["code", "samp", "var", "a", "span", "em", "strong", "b", "i", "tt"]):
        inline.unwrap()
    return title, soup.get_text("")


def _pdf_text(raw: bytes, rel: str) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = str((reader.metadata or {}).get("/Title") or "")
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise BadDocumentError(rel, f"not a readable PDF: {exc}") from exc
    return title, _RULE_LINES.sub("", "\n\n".join(pages))
