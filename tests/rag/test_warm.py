"""The server's warm-up loads the embedding model only when there is a collection to search."""

from __future__ import annotations

from pathlib import Path

from loradock.rag.index import RagStore


def test_warm_without_a_collection_loads_no_embedding_model(tmp_path: Path) -> None:
    store = RagStore(tmp_path / "rag")
    store.warm()
    assert store._model is None
    assert store.collections() == []
