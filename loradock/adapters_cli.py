"""`loradock adapters`: inspect, validate, remove, and move between the versions of the adapter store.

These commands work on the store's files; a running server that watches the same store follows within
its poll interval (``LORADOCK_STORE_POLL_SECONDS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

adapters_app = typer.Typer(help="Inspect, validate and version the adapter store.", no_args_is_help=True)
console = Console()
ConfigOpt = typer.Option(None, "--config", help="YAML settings file (keys as in core/settings.py).")
DirOpt = typer.Option(None, "--adapters-dir", help="Adapter store root (default: LORADOCK_ADAPTERS_DIR or adapters/).")


def _store(config: Path | None, adapters_dir: Path | None) -> Any:
    from loradock.core.settings import load_settings
    from loradock.core.store import AdapterStore

    return AdapterStore(load_settings(config, adapters_dir=adapters_dir).adapters_dir)


def _context(config: Path | None, adapters_dir: Path | None) -> tuple[Any, Any, Any]:
    from loradock.core.base_model import load_base_info
    from loradock.core.settings import load_settings
    from loradock.core.store import AdapterStore
    from loradock.core.validate import ValidationLimits

    settings = load_settings(config, adapters_dir=adapters_dir)
    base = load_base_info(settings.base_model, settings.served_base_name)
    limits = ValidationLimits(max_rank=settings.max_lora_rank, max_bytes=settings.max_adapter_bytes)
    return AdapterStore(settings.adapters_dir), base, limits


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(1)


@adapters_app.command("list")
def adapters_list(config: Path | None = ConfigOpt, adapters_dir: Path | None = DirOpt) -> None:
    """List adapters in the store with their current version and validation status against the base."""
    from loradock.core.validate import AdapterInvalid, validate_adapter

    store, base, limits = _context(config, adapters_dir)
    table = Table(title=f"adapters in {store.root}  (base {base.name})")
    for col in ("name", "version", "method", "rank", "targets", "created", "status"):
        table.add_column(col)
    for entry in store.entries():
        if entry.name is None:
            table.add_row(entry.entry, "", "", "", "", "", f"[red]{entry.refusal.code}[/red]")
            continue
        current = store.versions.current(entry.name)
        try:
            m = validate_adapter(store.path(entry.name), base, limits)
            status = "[green]ok[/green]"
        except AdapterInvalid as e:
            status = f"[red]{e.code}[/red]"
            try:
                m = store.read_manifest(entry.name)
            except ValueError:
                table.add_row(entry.name, str(current.number) if current else "", "?", "?", "?", "?", status)
                continue
        table.add_row(entry.name, str(current.number) if current else "-", m.provenance.method, str(m.rank),
                      ",".join(m.target_modules), m.created.strftime("%Y-%m-%d %H:%M"), status)
    console.print(table)


@adapters_app.command("show")
def adapters_show(name: str, config: Path | None = ConfigOpt, adapters_dir: Path | None = DirOpt) -> None:
    """Print an adapter's manifest as JSON."""
    try:
        typer.echo(_store(config, adapters_dir).read_manifest(name).model_dump_json(indent=2))
    except ValueError as e:
        raise _fail(str(e)) from e


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
            validate_adapter(store.root / name, base, limits)
            typer.secho(f"ok       {name}", fg="green")
        except AdapterInvalid as e:
            failed += 1
            typer.secho(f"refused  {name}: [{e.code}] {e}", fg="red")
    if failed:
        raise typer.Exit(1)


@adapters_app.command("remove")
def adapters_remove(name: str, config: Path | None = ConfigOpt, adapters_dir: Path | None = DirOpt) -> None:
    """Stop serving an adapter and delete its folder; a server drains requests on it, then unloads it.

    Its kept versions stay until garbage-collected, so `loradock adapters rollback NAME` can undo this.
    """
    try:
        _store(config, adapters_dir).remove(name)
    except ValueError as e:
        raise _fail(str(e)) from e
    typer.echo(f"removed {name}")


@adapters_app.command("history")
def adapters_history(name: str, config: Path | None = ConfigOpt, adapters_dir: Path | None = DirOpt) -> None:
    """List the kept versions of an adapter, newest first; `name@N` pins one in a request."""
    from loradock.core.versions import read_version_manifest

    store = _store(config, adapters_dir)
    try:
        kept, current = store.history(name)
    except ValueError as e:
        raise _fail(str(e)) from e
    if not kept:
        raise _fail(f"adapter {name!r} has no versions yet in {store.root} (a server or `loradock train` "
                    "makes one when it publishes)")
    table = Table(title=f"versions of {name}  (current: {current if current is not None else 'none'})")
    for col in ("version", "sha256", "created", "method", "description", ""):
        table.add_column(col)
    for record in reversed(kept):
        try:
            m = read_version_manifest(record)
            created, method, description = m.created.strftime("%Y-%m-%d %H:%M"), m.provenance.method, m.description
        except ValueError:
            created, method, description = "?", "?", "(unreadable manifest)"
        table.add_row(str(record.number), record.sha12, created, method, description,
                      "current" if record.number == current else "")
    console.print(table)


@adapters_app.command("rollback")
def adapters_rollback(
    name: str,
    to: int = typer.Option(None, "--to", help="Version to make current (default: the one before the current)."),
    config: Path | None = ConfigOpt,
    adapters_dir: Path | None = DirOpt,
) -> None:
    """Make an older (or any kept) version current, atomically; requests in flight finish on theirs."""
    try:
        record = _store(config, adapters_dir).versions.rollback(name, to)
    except ValueError as e:
        raise _fail(str(e)) from e
    typer.echo(f"{name}: version {record.number} ({record.sha12}) is current")
