"""CLI for training (`train sft|dpo|plan`), data (`data check`) and evaluation (`eval`).

Every recipe key is also a flag (``lora_r`` -> ``--lora-r``): the flags are generated from
:class:`loradock.train.config.TrainConfig`, so a new key is a new flag with its one-line doc as help.
Heavy imports (torch, transformers, TRL) happen inside the commands.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from loradock.train.config import (
    RecipeError,
    base_type,
    build_config,
    find_recipe,
    flag,
    key_types,
    keys,
    load_recipe,
)

log = logging.getLogger(__name__)

train_app = typer.Typer(help="Train SFT/DPO LoRA adapters with TRL + PEFT and publish them.", no_args_is_help=True)
data_app = typer.Typer(help="Check training data before training on it.", no_args_is_help=True)

RecipeOpt = typer.Option(None, "--recipe", help="Flat YAML recipe file, or a shipped recipe name (json-answer).")
_CLI_TYPES: dict[Any, Any] = {int: int | None, float: float | None, bool: bool | None}


def _with_recipe_flags(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command taking ``**overrides`` one ``--flag`` per recipe key (None = not given)."""
    sig = inspect.signature(fn)
    fixed = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    hints = key_types()
    generated = []
    for f in keys():
        inner, _ = base_type(hints[f.name])
        decl = f"{flag(f.name)}/--no-{flag(f.name)[2:]}" if inner is bool else flag(f.name)
        generated.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, decl, help=f.metadata["doc"], rich_help_panel="Recipe keys"),
                annotation=_CLI_TYPES.get(inner, str | None),
            )
        )
    fixed_names = [p.name for p in fixed]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        fixed_kwargs = {name: kwargs.pop(name) for name in fixed_names}
        fn(**fixed_kwargs, **kwargs)

    command.__signature__ = sig.replace(parameters=fixed + generated)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in fixed + generated}
    return command


def _console() -> Console:
    # Built per command (no module state), so COLUMNS and output redirection apply when the command runs.
    return Console()


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _run(method: str, recipe: str | None, overrides: dict[str, Any]) -> None:
    from loradock.core.validate import AdapterInvalid
    from loradock.train.data import DataError

    try:
        cfg = build_config(method, recipe, overrides)
        if method == "sft":
            from loradock.train.sft import run_sft as run
        else:
            from loradock.train.dpo import run_dpo as run
        path = run(cfg)
    except (RecipeError, DataError, AdapterInvalid, FileExistsError) as e:
        raise _fail(str(e)) from e
    _console().print(f"[green]published[/green] {cfg.name} -> {path}  (a running server picks it up within seconds)")


@train_app.command("sft")
@_with_recipe_flags
def sft_cmd(recipe: str | None = RecipeOpt, **overrides: Any) -> None:
    """Supervised fine-tuning on `messages` or `prompt`+`completion` rows; publishes the adapter."""
    _run("sft", recipe, overrides)


@train_app.command("dpo")
@_with_recipe_flags
def dpo_cmd(recipe: str | None = RecipeOpt, **overrides: Any) -> None:
    """Preference training (DPO) on `prompt`/`chosen`/`rejected` rows; publishes the adapter."""
    _run("dpo", recipe, overrides)


@train_app.command("plan")
@_with_recipe_flags
def plan_cmd(recipe: str | None = RecipeOpt, **overrides: Any) -> None:
    """Before training: trainable parameters, adapter size, and memory for full FT / LoRA / QLoRA."""
    from loradock.core.settings import load_settings
    from loradock.train.plan import make_plan
    from loradock.train.tables import plan_tables

    method = "sft"
    if recipe is not None:
        for candidate in ("sft", "dpo"):
            try:
                method = load_recipe(find_recipe(recipe, candidate)).get("method", candidate)
                break
            except RecipeError:
                continue
    try:
        cfg = build_config(method, recipe, overrides)
    except RecipeError as e:
        raise _fail(str(e)) from e
    settings = load_settings()
    base_path = Path(cfg.base_model) if cfg.base_model else settings.base_model
    console = _console()
    if cfg.lora_r > settings.max_lora_rank:
        console.print(
            f"[yellow]warning:[/yellow] --lora-r {cfg.lora_r} is above the server's max LoRA rank "
            f"{settings.max_lora_rank}; training will refuse it"
        )
    plan = make_plan(cfg, base_path, base_path.resolve().name)
    line = (
        f"{cfg.method} r={cfg.lora_r} alpha={cfg.lora_alpha:g} on {','.join(cfg.target_modules)}, "
        f"quantization {cfg.quantization}"
    )
    for table in plan_tables(plan, line, cfg.batch_size, cfg.max_length):
        console.print(table)


@data_app.command("check")
def data_check_cmd(
    file: Path = typer.Argument(..., help="JSONL, CSV, or a saved HF dataset folder."),
    method: str = typer.Option("auto", "--method", help="auto, sft or dpo (auto: chosen/rejected -> dpo)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Token limit (default: recipe's, or 256)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Take --max-length and the base from this recipe."),
    base_model: Path | None = typer.Option(None, "--base-model", help="Tokenizer folder (default: the base)."),
) -> None:
    """Find schema errors, empty turns, duplicates, contradictions and too-long rows; exit 1 if any."""
    from loradock.core.settings import load_settings
    from loradock.train.common import load_tokenizer
    from loradock.train.data import DataError, check_rows, detect_method, read_records
    from loradock.train.masking import count_tokens
    from loradock.train.tables import data_problems, data_summary

    try:
        records = read_records(file)
    except DataError as e:
        raise _fail(str(e)) from e
    method = detect_method(records) if method == "auto" else method
    if method not in ("sft", "dpo"):
        raise _fail("--method must be auto, sft or dpo")
    recipe_values = load_recipe(find_recipe(recipe, method)) if recipe else {}
    limit = max_length or int(recipe_values.get("max_length", 256))
    base = base_model or Path(recipe_values.get("base_model") or load_settings().base_model)
    report = check_rows(records, method, count_tokens(load_tokenizer(base)), limit, file)
    console = _console()
    console.print(data_summary(report))
    if not report.ok:
        console.print(data_problems(report))
        raise typer.Exit(1)


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
    console = _console()
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
