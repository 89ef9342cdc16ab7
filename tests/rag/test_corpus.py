"""Loading and cleaning documents; every bad document is a named error (file + reason)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsfabric.rag.corpus import discover_documents, load_corpus, load_document
from opsfabric.rag.errors import BadDocumentError, CorpusError
from tests.rag.pdf_writer import write_text_pdf

pytestmark = pytest.mark.unit
ALL = ["**/*"]


def _bad(corpus: Path, rel: str, max_bytes: int = 10_000) -> BadDocumentError:
    with pytest.raises(BadDocumentError) as info:
        load_document(corpus / rel, corpus, max_bytes=max_bytes)
    assert info.value.path == rel and str(info.value).startswith(f"{rel}: ")
    return info.value


def test_bad_documents_raise_errors_that_name_the_file_and_reason(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "empty.md").write_bytes(b"")
    (corpus / "binary.txt").write_bytes(b"text\x00\x01\x02more")
    (corpus / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    (corpus / "big.md").write_text("word " * 5000)
    (corpus / "blank.html").write_text("<html><script>var x = 1;</script><body>  </body></html>")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (corpus / "image.png").write_bytes(b"\x89PNG")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the corpus")
    os.symlink(outside, corpus / "link.txt")

    assert "empty file" in _bad(corpus, "empty.md").reason
    assert "NUL byte at offset 4" in _bad(corpus, "binary.txt").reason
    assert "not valid UTF-8: byte 0xe9 at offset 3" in _bad(corpus, "latin1.txt").reason
    assert "oversize: 25000 bytes > rag.corpus.max_bytes=10000" in _bad(corpus, "big.md").reason
    assert "no text after cleaning" in _bad(corpus, "blank.html").reason
    assert "not a readable PDF" in _bad(corpus, "broken.pdf").reason
    assert "unsupported format '.png'" in _bad(corpus, "image.png").reason
    link = _bad(corpus, "link.txt")
    assert "symlink points outside the corpus folder" in link.reason and str(outside) in link.reason


def test_a_symlink_inside_the_corpus_is_fine(tmp_path: Path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "sub" / "a.md").write_text("# Title\n\nSome real text here.")
    os.symlink(corpus / "sub" / "a.md", corpus / "alias.md")
    assert load_document(corpus / "alias.md", corpus, max_bytes=1000).text.endswith("Some real text here.")


def test_load_corpus_collects_bad_documents_and_loads_the_rest(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.md").write_text("# Good\n\nA [link](http://x) and ![badge](http://b.svg) text.")
    (corpus / "bad.txt").write_bytes(b"\xff\xfe\x00")
    (corpus / "SOURCES.md").write_text("not a document")
    loaded = load_corpus(corpus, ALL, ["SOURCES.md"], max_bytes=1000)
    assert [d.doc_id for d in loaded.documents] == ["good.md"]
    assert loaded.documents[0].text == "Good\n\nA link and text." and loaded.documents[0].title == "Good"
    assert [b.path for b in loaded.bad_documents] == ["bad.txt"]


def test_html_and_pdf_are_cleaned_to_text(tmp_path: Path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "p.html").write_text(
        "<html><head><title>T</title><style>p{}</style></head><body><nav>menu</nav><p>First <b>bold</b> para.</p><p>Second.</p></body></html>"
    )
    write_text_pdf(corpus / "d.pdf", "Portable text in a PDF page.\nSecond line.", title="PDF title")
    html = load_document(corpus / "p.html", corpus, max_bytes=10_000)
    assert html.title == "T" and "menu" not in html.text and "First bold para." in html.text
    pdf = load_document(corpus / "d.pdf", corpus, max_bytes=10_000)
    assert pdf.title == "PDF title" and "Portable text in a PDF page." in pdf.text and pdf.format == "pdf"


def test_include_and_exclude_globs_select_files(tmp_path: Path):
    corpus = tmp_path / "c"
    (corpus / "d").mkdir(parents=True)
    for name in ("a.md", "d/b.txt", "d/c.html", "SOURCES.md"):
        (corpus / name).write_text("x")
    found = [p.relative_to(corpus).as_posix() for p in discover_documents(corpus, ["**/*.md", "**/*.txt"], ["SOURCES.md"])]
    assert found == ["a.md", "d/b.txt"]
    with pytest.raises(CorpusError, match="corpus folder not found"):
        discover_documents(tmp_path / "missing", ["**/*"], [])


def test_content_hash_and_corpus_hash_follow_bytes_only(tmp_path: Path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("alpha beta gamma")
    first = load_corpus(corpus, ALL, [], max_bytes=1000)
    again = load_corpus(corpus, ALL, [], max_bytes=1000)
    (corpus / "a.txt").write_text("alpha beta delta")
    changed = load_corpus(corpus, ALL, [], max_bytes=1000)
    assert first.corpus_hash == again.corpus_hash != changed.corpus_hash
