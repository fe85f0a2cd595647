"""Votes to DPO rows, from the preference database or from a server's admin export route, with quality flags.

`loradock data export` and `loradock train dpo --from-votes` share this: the same filters, the same flags
(contradictory votes dropped by default, near-duplicate prompts and low-agreement annotators on request),
and a report of how many pairs were written, dropped and kept.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from loradock.core.feedback import FeedbackFilter
from loradock.core.feedback_quality import QualityOptions


class VotesError(RuntimeError):
    """The votes could not be read; the message says where and what to change."""


ServerOpt = typer.Option(None, "--server", help="Read votes from this loradock server's admin export route "
                                                "(key: --admin-key or LORADOCK_ADMIN_KEY) instead of --db-url.",
                         rich_help_panel="Votes")
AdminKeyOpt = typer.Option(None, "--admin-key", envvar="LORADOCK_ADMIN_KEY", help="Admin key for --server.",
                           rich_help_panel="Votes", show_default=False)
DbUrlOpt = typer.Option(None, "--db-url", help="SQLAlchemy URL of the preference database "
                                               "(default: LORADOCK_DB_URL).", rich_help_panel="Votes")
ModelOpt = typer.Option(None, "--votes-model", help="Only votes where either side is this model.",
                        rich_help_panel="Votes")
AnnotatorOpt = typer.Option(None, "--annotator", help="Only votes by this annotator.", rich_help_panel="Votes")
PromptSetOpt = typer.Option(None, "--prompt-set", help="Only votes on this prompt set.", rich_help_panel="Votes")
SinceOpt = typer.Option(None, "--since", help="Only votes at or after this date/time (UTC).",
                        rich_help_panel="Votes", formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"])
UntilOpt = typer.Option(None, "--until", help="Only votes before this date/time (UTC).",
                        rich_help_panel="Votes", formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"])
BlindOpt = typer.Option(None, "--blind/--named", help="Only blind (arena) votes, or only named ones "
                                                      "(default: both).", rich_help_panel="Votes")
ContradictoryOpt = typer.Option(True, "--drop-contradictory/--keep-contradictory",
                                help="Drop votes whose prompt and pair got opposite verdicts.",
                                rich_help_panel="Data quality")
NearDupOpt = typer.Option(False, "--drop-near-duplicates/--keep-near-duplicates",
                          help="Drop votes on prompts that nearly repeat an earlier prompt.",
                          rich_help_panel="Data quality")
AgreementOpt = typer.Option(0.0, "--min-agreement", min=0.0, max=1.0,
                            help="Drop annotators who agree with the others less often (0-1) on repeated pairs.",
                            rich_help_panel="Data quality")


def vote_filter(model: str | None = None, annotator: str | None = None, prompt_set: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                blind: bool | None = None) -> FeedbackFilter:
    """The filter from the command-line values (None = not given)."""
    return FeedbackFilter(model=model, annotator=annotator, prompt_set=prompt_set, since=since, until=until,
                          blind=blind)


def collect(filters: FeedbackFilter, quality: QualityOptions, db_url: str | None = None,
            server: str | None = None, admin_key: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(DPO rows, report) from ``server`` when given (its admin export route), else from the database."""
    if server:
        return _from_server(server.rstrip("/"), admin_key, filters, quality)
    from loradock.core.feedback import FeedbackStore
    from loradock.core.feedback_quality import select_pairs
    from loradock.core.settings import load_settings

    with FeedbackStore(db_url or load_settings().db_url) as store:
        return select_pairs(store.pairs(filters), quality)


def _from_server(url: str, admin_key: str | None, filters: FeedbackFilter,
                 quality: QualityOptions) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import httpx

    body = {"filters": filters.model_dump(mode="json", exclude_none=True), "quality": quality.model_dump()}
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    try:
        r = httpx.post(f"{url}/v1/feedback/export", json=body, headers=headers, timeout=300)
    except httpx.HTTPError as e:
        raise VotesError(f"cannot reach the server at {url}: {e}") from e
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        hint = "; pass the admin key (--admin-key or LORADOCK_ADMIN_KEY)" if r.status_code == 401 else ""
        raise VotesError(f"{url}/v1/feedback/export answered {r.status_code}: {message}{hint}")
    data = r.json()
    return data["data"], data["report"]


def export_path(name: str, output_dir: str | None) -> Path:
    """Where ``train dpo --from-votes`` writes the exported pairs: beside the run's checkpoint folder."""
    out = Path(output_dir) if output_dir else Path("var/train") / name
    return out.parent / f"{out.name}.votes.jsonl"


def train_from_votes(recipe: str | None, overrides: dict[str, Any], filters: FeedbackFilter,
                     quality: QualityOptions, db_url: str | None = None, server: str | None = None,
                     admin_key: str | None = None) -> Path:
    """Export the votes, check them, train DPO on them and publish; returns the adapter folder.

    Progress (the export report, each logged loss, the published adapter or the error) goes to
    ``--progress-file`` when one is given, so a UI can follow the job.
    """
    from rich.console import Console

    from loradock.core.dpo_files import write_dpo
    from loradock.core.feedback_quality import report_line
    from loradock.train.common import check_file, load_tokenizer
    from loradock.train.config import build_config
    from loradock.train.data import DataError
    from loradock.train.dpo import run_dpo
    from loradock.train.progress import write_event
    from loradock.train.tables import data_problems, data_summary

    console = Console()
    if recipe is None and overrides.get("name") is None:
        overrides = {**overrides, "name": "votes-dpo"}
    cfg = build_config("dpo", recipe, overrides)
    assert cfg.name is not None  # a recipe names its adapter; without one the default above applies
    path = export_path(cfg.name, cfg.output_dir)
    cfg = build_config("dpo", recipe, {**overrides, "data": str(path)})
    progress = cfg.progress_file
    try:
        # --- export: the filtered votes, flagged ones dropped or kept
        rows, report = collect(filters, quality, db_url, server, admin_key)
        write_event(progress, "export", path=str(path), **{k: report[k] for k in ("pairs", "written", "dropped")})
        console.print(f"votes: {report_line(report)}")
        if not rows:
            raise DataError("no preference pairs match the filters (ties and both-bad votes are never pairs)")
        write_dpo(rows, path)
        # --- check: the same data check training runs, shown before the run starts
        tokenizer = load_tokenizer(Path(cfg.base_model) if cfg.base_model else _base_model())
        checked = check_file(path, "dpo", tokenizer, cfg.max_length)
        console.print(data_summary(checked))
        if not checked.ok and not cfg.drop_invalid:
            console.print(data_problems(checked))
            raise DataError(f"{path}: the exported pairs fail the data check; pass --drop-invalid to train on the "
                            "rows that pass")
        # --- train and publish
        folder = run_dpo(cfg)
    except Exception as e:
        write_event(progress, "error", message=str(e))
        raise
    write_event(progress, "published", name=cfg.name, path=str(folder))
    return folder


def _base_model() -> Path:
    from loradock.core.settings import load_settings

    return load_settings().base_model
