"""CLI for serving."""

import typer

rag_app = typer.Typer(help="RAG collections.", no_args_is_help=True)


def serve_cmd() -> None:
    """Run the server."""
    raise NotImplementedError


def demo_cmd() -> None:
    """Run the demo."""
    raise NotImplementedError


def bench_cmd() -> None:
    """Run the benchmark."""
    raise NotImplementedError
