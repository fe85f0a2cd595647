"""`loradock rag index | list | query`: manage RAG collections on disk (the server reads the same folder)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

rag_app = typer.Typer(help="RAG collections: index documents, list them, query them.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", help="YAML settings file (keys as in core/settings.py).")
RagDirOpt = typer.Option(None, "--rag-dir", help="Collections root (default: LORADOCK_RAG_DIR or var/rag).")


def _store(config: Path | None, rag_dir: Path | None):  # noqa: ANN202 - RagStore is imported lazily
    from loradock.core.settings import load_settings
    from loradock.rag.index import RagStore

    return RagStore(load_settings(config, rag_dir=rag_dir).rag_dir)


def _fail(message: str) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(1)


@rag_app.command("index")
def index_cmd(
    src: Path = typer.Argument(..., help="Folder (or file) of .txt, .md and .pdf documents."),
    collection: str = typer.Option(..., "--collection", "-c", help="Collection name, e.g. faq."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the documents did not change."),
    rag_dir: Path | None = RagDirOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Chunk, embed (all-MiniLM-L6-v2, offline) and store documents as a collection; replaces an old one.

    A collection already built from the same documents and settings is kept as it is (use --force).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from loradock.rag.errors import RagError

    store = _store(config, rag_dir)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task(f"embedding {src}", total=None)
        try:
            stats = store.index(src, collection, force=force, progress=lambda done, total: progress.update(
                task, completed=done, total=total))
        except RagError as e:
            _fail(e.message)
    if stats["unchanged"]:
        typer.echo(f"collection {collection!r} is up to date ({stats['chunks']} chunks from {stats['files']} "
                   f"files) -> {stats['path']}")
        return
    typer.echo(f"collection {collection!r}: {stats['chunks']} chunks from {stats['files']} files "
               f"in {stats['seconds']} s -> {stats['path']}")


@rag_app.command("list")
def list_cmd(rag_dir: Path | None = RagDirOpt, config: Path | None = ConfigOpt) -> None:
    """List indexed collections with their chunk and file counts."""
    from rich.console import Console
    from rich.table import Table

    store = _store(config, rag_dir)
    names = store.collections()
    if not names:
        typer.echo(f"no collections in {store.root}; "
                   "create one with `loradock rag index DIR --collection NAME`")
        return
    table = Table(title=f"RAG collections in {store.root}")
    for col in ("name", "chunks", "files", "source", "model"):
        table.add_column(col)
    for name in names:
        meta = store.info(name)
        table.add_row(name, str(meta["chunks"]), str(meta["files"]), meta.get("source_dir", "?"),
                      meta.get("model", "?"))
    Console().print(table)


@rag_app.command("query")
def query_cmd(
    collection: str = typer.Argument(..., help="Collection to search."),
    question: str = typer.Argument(..., help="The question (quote it)."),
    top_k: int = typer.Option(4, "--top-k", "-k", min=1, max=20, help="Passages to return."),
    as_json: bool = typer.Option(False, "--json", help="Print the passages as JSON."),
    rag_dir: Path | None = RagDirOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Show the passages the server would put into the prompt for this question."""
    from loradock.rag.errors import RagError

    try:
        passages = _store(config, rag_dir).retrieve(collection, question, top_k)
    except RagError as e:
        _fail(e.message)
    if as_json:
        typer.echo(json.dumps([p.model_dump() for p in passages], indent=2))
        return
    for i, p in enumerate(passages, 1):
        typer.secho(f"[{i}] {p.source} #{p.chunk}  score {p.score:.3f}", bold=True)
        typer.echo(p.text + "\n")
