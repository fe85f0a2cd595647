"""Retrieval's own errors. The server maps them to HTTP (serve/errors.py); the CLI prints them."""

from __future__ import annotations


class RagError(ValueError):
    """A retrieval or indexing request was refused; the message says what to change.

    ``param`` names the request field at fault (as the API spells it) and ``code`` is machine-readable.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class CollectionNotFound(RagError):
    """The named collection has not been indexed."""
