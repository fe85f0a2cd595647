"""`loradock data check | export`: check training data before training on it; export votes as DPO pairs."""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import typer

from loradock.train import votes
from loradock.train.cli import fail, new_console
from loradock.train.config import find_recipe, load_recipe

log = logging.getLogger(__name__)
data_app = typer.Typer(help="Training data: check it before training; export votes as DPO pairs.",
                       no_args_is_help=True)
ConfigOpt = typer.Option(None, "--config", help="YAML settings file (keys as in core/settings.py).")
DbOpt = typer.Option(None, "--db-url", help="SQLAlchemy URL of the preference database "
                                            "(default: LORADOCK_DB_URL or sqlite:///var/loradock.db).")


class ExportFormat(StrEnum):
    dpo_jsonl = "dpo-jsonl"
    hf_parquet = "hf-parquet"


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
        raise fail(str(e)) from e
    method = detect_method(records) if method == "auto" else method
    if method not in ("sft", "dpo"):
        raise fail("--method must be auto, sft or dpo")
    recipe_values = load_recipe(find_recipe(recipe, method)) if recipe else {}
    limit = max_length or int(recipe_values.get("max_length", 256))
    base = base_model or Path(recipe_values.get("base_model") or load_settings().base_model)
    report = check_rows(records, method, count_tokens(load_tokenizer(base)), limit, file)
    console = new_console()
    console.print(data_summary(report))
    if not report.ok:
        console.print(data_problems(report))
        raise typer.Exit(1)


@data_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="File (dpo-jsonl) or folder (hf-parquet) to write, replaced "
                                                      "atomically."),
    fmt: ExportFormat = typer.Option(ExportFormat.dpo_jsonl, "--format",
                                     help="dpo-jsonl (TRL rows) or hf-parquet (a datasets folder)."),
    model: str | None = typer.Option(None, "--model", help="Only pairs where either side is this model."),
    annotator: str | None = votes.AnnotatorOpt,
    prompt_set: str | None = votes.PromptSetOpt,
    since: datetime | None = votes.SinceOpt,
    until: datetime | None = votes.UntilOpt,
    blind: bool | None = votes.BlindOpt,
    drop_contradictory: bool = votes.ContradictoryOpt,
    drop_near_duplicates: bool = votes.NearDupOpt,
    min_agreement: float = votes.AgreementOpt,
    server: str | None = votes.ServerOpt,
    admin_key: str | None = votes.AdminKeyOpt,
    db_url: str | None = DbOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Export preference pairs as TRL conversational rows (prompt/chosen/rejected) for `loradock train dpo`.

    Ties and both-bad votes stay in the database and are not exported. Contradictory votes are dropped
    unless --keep-contradictory; the report says how many pairs each flag dropped or kept.
    """
    from loradock.core.dpo_files import write_dpo
    from loradock.core.feedback_quality import QualityOptions, report_line
    from loradock.core.settings import load_settings

    quality = QualityOptions(drop_contradictory=drop_contradictory, drop_near_duplicates=drop_near_duplicates,
                             min_agreement=min_agreement)
    filters = votes.vote_filter(model, annotator, prompt_set, since, until, blind)
    try:
        rows, report = votes.collect(filters, quality, db_url or load_settings(config).db_url, server, admin_key)
    except votes.VotesError as e:
        raise fail(str(e)) from e
    try:
        write_dpo(rows, out, fmt.value)
    except ValueError as e:
        raise fail(f"{e} ({report_line(report)})") from e
    typer.echo(f"wrote {len(rows)} pairs to {out} ({fmt.value}); {report_line(report)}")
