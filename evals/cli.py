"""`loradock eval`: base vs prompted base vs RAG vs an adapter, through the running server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Held-out eval rows (JSONL with expected + metric)."),
    adapter: str = typer.Option(..., "--adapter", help="Adapter name as served."),
    server: str = typer.Option("http://127.0.0.1:8000", "--server", help="Server URL (without /v1)."),
    rag_collection: str | None = typer.Option(None, "--rag-collection", help="Also try RAG on this collection."),
    rag_top_k: int = typer.Option(2, "--rag-top-k", min=1, max=16, help="Passages per question for RAG."),
    system: str | None = typer.Option(None, "--system", help="System prompt for the prompting approach."),
    metric: str | None = typer.Option(None, "--metric", help="exact, contains or json (rows may declare it)."),
    general: Path = typer.Option(Path("data/general_questions.jsonl"), "--general", help="Forgetting-check set."),
    threshold: float = typer.Option(0.8, "--threshold", help="Score an approach needs to count as working."),
    max_tokens: int = typer.Option(96, "--max-tokens", help="Answer length limit per request."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N eval rows."),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer key (default: LORADOCK_API_KEY)."),
    output: Path | None = typer.Option(None, "--output", help="Also write the results as JSON here."),
) -> None:
    """Compare base, base + system prompt, RAG and an adapter on held-out prompts through the server."""
    from loradock.evals.run import evaluate_all
    from loradock.evals.scoring import EvalError, load_items

    try:
        items = load_items(data, metric, system)[:limit]
        general_items = load_items(general, "contains")
    except (EvalError, OSError) as e:
        raise _fail(str(e)) from e
    key = api_key or os.environ.get("LORADOCK_API_KEY") or "none"
    console = Console()
    try:
        results = evaluate_all(
            console,
            server,
            key,
            adapter,
            items,
            general_items,
            rag_collection,
            threshold,
            max_tokens,
            concurrency,
            rag_top_k,
        )
    except EvalError as e:
        raise _fail(str(e)) from e
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        console.print(f"results written to {output}")
