"""The RAG baseline with the real embedding model: chunking limits, index/retrieve, errors, persistence."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loradock.rag.errors import CollectionNotFound, RagError
from loradock.rag.index import INDEX_FILE, RagStore, chunk_text

FAQ_DOCS = Path(__file__).resolve().parents[2] / "data" / "faq_docs"


def _pdf(path: Path, lines: list[str]) -> None:
    """Write a minimal one-page PDF with Helvetica text (what pypdf extracts)."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RagStore:
    return RagStore(tmp_path_factory.mktemp("rag"))


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("docs")
    (src / "warranty.md").write_text("# Warranty\n\nThe Zephyr-9 has a 2-year limited warranty.\n")
    (src / "colours.txt").write_text("The Zephyr-9 comes in Graphite Grey and Arctic White.\n")
    _pdf(src / "battery.pdf", ["Battery: 5200 mAh lithium-ion.", "A charge runs for 180 minutes on Eco."])
    (src / "notes.csv").write_text("ignored,because,not,a,document\n")
    (src / ".hidden.md").write_text("The Zephyr-9 warranty is 99 years.\n")
    return src


def test_chunks_respect_the_word_piece_limit_and_overlap(store: RagStore) -> None:
    sentences = [f"Sentence {i} says the Zephyr-9 {'dock ' * (i % 17)}works." for i in range(300)]
    text = "# Manual\n\n" + " ".join(sentences) + "\n\n" + "unbrokenwordwithoutanyspaces " * 400
    chunks = chunk_text(text, store.tokenizer, max_tokens=200, overlap=40)

    lengths = [len(store.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(lengths) <= 200
    assert min(lengths[:-1]) > 100, "chunks should be filled, not one sentence each"
    # Every sentence survives whole in some chunk, and neighbours share text (the overlap).
    assert all(any(s in c for c in chunks) for s in sentences)
    sentence_chunks = [c for c in chunks if "Sentence" in c]
    for a, b in zip(sentence_chunks, sentence_chunks[1:], strict=False):
        first_of_b = re.match(r"Sentence \d+", b).group(0)
        assert first_of_b + " " in a, "consecutive chunks must overlap"
    assert any("unbrokenword" in c for c in chunks)


def test_chunk_text_handles_empty_text(store: RagStore) -> None:
    assert chunk_text("  \n\n ", store.tokenizer) == []


def test_index_and_retrieve_txt_md_pdf(store: RagStore, docs: Path) -> None:
    stats = store.index(docs, "zephyr")
    assert stats["files"] == 3 and stats["chunks"] == 3
    assert (store.root / "zephyr" / INDEX_FILE).is_file()
    assert store.collections() == ["zephyr"]

    best = store.retrieve("zephyr", "How long is the warranty?", top_k=2)
    assert [p.source for p in best][0] == "warranty.md"
    assert "2-year" in best[0].text
    assert best[0].score >= best[1].score
    assert -1.0 <= best[1].score <= best[0].score <= 1.0

    battery = store.retrieve("zephyr", "How many minutes does the battery last?", top_k=1)[0]
    assert battery.source == "battery.pdf" and "180 minutes" in battery.text

    assert len(store.retrieve("zephyr", "colours", top_k=20)) == 3  # top_k above the chunk count


def test_index_persists_and_a_new_store_reads_it(store: RagStore, docs: Path) -> None:
    store.index(docs, "persisted")
    fresh = RagStore(store.root)
    q = "Which colours are available?"
    assert fresh.retrieve("persisted", q, 3) == store.retrieve("persisted", q, 3)
    assert fresh.retrieve("persisted", q, 1)[0].source == "colours.txt"


def test_reindex_replaces_the_collection(store: RagStore, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("The Zephyr-9 weighs 3.6 kg.")
    store.index(tmp_path, "replace-me")
    assert "3.6 kg" in store.retrieve("replace-me", "weight", 1)[0].text
    (tmp_path / "a.md").write_text("The Zephyr-9 weighs 4.1 kg after the redesign.")
    store.index(tmp_path, "replace-me")
    assert "4.1 kg" in store.retrieve("replace-me", "weight", 1)[0].text  # the cache sees the new file
    assert [p.name for p in (store.root / "replace-me").iterdir()] == [INDEX_FILE]  # no temp files left


def test_unchanged_documents_keep_the_index_unless_forced(store: RagStore, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("The Zephyr-9 has 2.4 GHz Wi-Fi only.")
    assert store.index(tmp_path, "stable")["unchanged"] is False
    index_file = store.root / "stable" / INDEX_FILE
    before = index_file.stat().st_mtime_ns
    again = store.index(tmp_path, "stable")
    assert again["unchanged"] is True and again["chunks"] == 1
    assert index_file.stat().st_mtime_ns == before
    assert store.index(tmp_path, "stable", force=True)["unchanged"] is False
    assert index_file.stat().st_mtime_ns != before


def test_unknown_collection_is_refused_listing_the_existing_ones(store: RagStore, docs: Path) -> None:
    store.index(docs, "zephyr")
    with pytest.raises(CollectionNotFound) as err:
        store.retrieve("no-such", "warranty", 4)
    assert err.value.code == "collection_not_found" and err.value.param == "rag.collection"
    assert "zephyr" in err.value.message and "loradock rag index" in err.value.message


@pytest.mark.parametrize("name", ["../etc", "Faq", "", "a" * 65, "has space"])
def test_invalid_collection_name_is_refused(store: RagStore, name: str) -> None:
    with pytest.raises(RagError) as err:
        store.retrieve(name, "warranty", 4)
    assert not isinstance(err.value, CollectionNotFound) and "collection name" in err.value.message


def test_index_refuses_a_folder_without_documents(store: RagStore, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(RagError, match="no .txt, .md"):
        store.index(tmp_path, "empty")
    assert "empty" not in store.collections()


def test_concurrent_retrieval_from_threads(store: RagStore, docs: Path) -> None:
    store.index(docs, "zephyr")
    questions = ["warranty length", "battery minutes", "available colours"] * 4
    with ThreadPoolExecutor(6) as pool:
        sources = list(pool.map(lambda q: store.retrieve("zephyr", q, 1)[0].source, questions))
    assert sources == ["warranty.md", "battery.pdf", "colours.txt"] * 4


def test_demo_faq_collection_answers_product_questions(store: RagStore) -> None:
    store.index(FAQ_DOCS, "faq")
    assert store.retrieve("faq", "What does error E4 mean?", 1)[0].source == "troubleshooting.md"
    assert store.retrieve("faq", "What does ZephyrCare cost per year?", 1)[0].source == "pricing.md"
