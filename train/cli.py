"""CLI for training: `train sft|dpo|plan` (the `data` group lives in data_cli.py).

Every recipe key is also a flag (``lora_r`` -> ``--lora-r``): the flags are generated from
:class:`loradock.train.config.TrainConfig`, so a new key is a new flag with its one-line doc as help.
Heavy imports (torch, transformers, TRL) happen inside the commands.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from loradock.train import votes
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


def new_console() -> Console:
    # Built per command (no module state), so COLUMNS and output redirection apply when the command runs.
    return Console()


def fail(message: str) -> typer.Exit:
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
        raise fail(str(e)) from e
    new_console().print(f"[green]published[/green] {cfg.name} -> {path}  (a running server picks it up within seconds)")


@train_app.command("sft")
@_with_recipe_flags
def sft_cmd(recipe: str | None = RecipeOpt, **overrides: Any) -> None:
    """Supervised fine-tuning on `messages` or `prompt`+`completion` rows; publishes the adapter."""
    _run("sft", recipe, overrides)


@train_app.command("dpo")
@_with_recipe_flags
def dpo_cmd(
    recipe: str | None = RecipeOpt,
    from_votes: bool = typer.Option(False, "--from-votes", rich_help_panel="Votes",
                                    help="Export the votes (filters below), check them and train on them."),
    server: str | None = votes.ServerOpt,
    admin_key: str | None = votes.AdminKeyOpt,
    db_url: str | None = votes.DbUrlOpt,
    votes_model: str | None = votes.ModelOpt,
    annotator: str | None = votes.AnnotatorOpt,
    prompt_set: str | None = votes.PromptSetOpt,
    since: datetime | None = votes.SinceOpt,
    until: datetime | None = votes.UntilOpt,
    blind: bool | None = votes.BlindOpt,
    drop_contradictory: bool = votes.ContradictoryOpt,
    drop_near_duplicates: bool = votes.NearDupOpt,
    min_agreement: float = votes.AgreementOpt,
    **overrides: Any,
) -> None:
    """Preference training (DPO) on `prompt`/`chosen`/`rejected` rows; publishes the adapter.

    With --from-votes the rows are the stored votes: exported (filtered, flagged ones dropped), checked and
    trained on in one command.
    """
    if not from_votes:
        _run("dpo", recipe, overrides)
        return
    from loradock.core.feedback_quality import QualityOptions
    from loradock.core.validate import AdapterInvalid
    from loradock.train.data import DataError

    filters = votes.vote_filter(votes_model, annotator, prompt_set, since, until, blind)
    quality = QualityOptions(drop_contradictory=drop_contradictory, drop_near_duplicates=drop_near_duplicates,
                             min_agreement=min_agreement)
    try:
        path = votes.train_from_votes(recipe, overrides, filters, quality, db_url, server, admin_key)
    except (RecipeError, DataError, AdapterInvalid, FileExistsError, votes.VotesError) as e:
        raise fail(str(e)) from e
    new_console().print(f"[green]published[/green] {path.name} -> {path}  (a running server picks it up within "
                        "seconds)")


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
        raise fail(str(e)) from e
    settings = load_settings()
    base_path = Path(cfg.base_model) if cfg.base_model else settings.base_model
    console = new_console()
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
