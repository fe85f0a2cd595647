"""Rich tables for `data check` and `train plan` (presentation only)."""

from __future__ import annotations

import statistics

from rich.table import Table

from loradock.train.data import KIND_LABELS, DataReport
from loradock.train.plan import PRECISIONS, Plan, human

MAX_PROBLEMS_SHOWN = 30


def data_summary(report: DataReport) -> Table:
    """One row per check, plus row and token counts."""
    table = Table(title=f"data check: {report.path}  ({report.method})", show_header=True)
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("rows read", str(report.total))
    table.add_row("rows passing every check", str(len(report.clean_rows())))
    for kind, n in report.counts().items():
        label = KIND_LABELS[kind] + (f" ({report.max_length})" if kind == "too_long" else "")
        table.add_row(label, f"[red]{n}[/red]" if n else "[green]0[/green]")
    lengths = [r.tokens for r in report.rows if r.tokens]
    if lengths:
        table.add_row(
            "tokens per row (min / median / max)",
            f"{min(lengths)} / {int(statistics.median(lengths))} / {max(lengths)}",
        )
    status = "[green]ok[/green]" if report.ok else "[red]fails: fix the rows or train with --drop-invalid[/red]"
    table.add_row("status", status)
    return table


def data_problems(report: DataReport) -> Table:
    """The defects, by line."""
    table = Table(title="problems", show_header=True)
    table.add_column("line", justify="right")
    table.add_column("kind")
    table.add_column("what to fix")
    for p in report.problems[:MAX_PROBLEMS_SHOWN]:
        table.add_row(str(p.line), p.kind, p.message)
    if len(report.problems) > MAX_PROBLEMS_SHOWN:
        table.add_row("...", "", f"{len(report.problems) - MAX_PROBLEMS_SHOWN} more")
    return table


def plan_tables(plan: Plan, recipe_line: str, batch: int, max_length: int) -> list[Table]:
    """Parameters and adapter size; then the memory table (the lesson's, for the real base)."""
    params = Table(title=f"plan: {recipe_line}", show_header=False)
    params.add_column("what")
    params.add_column("value", justify="right")
    params.add_row("base", plan.base_name)
    params.add_row("base parameters", f"{plan.total - plan.trainable:,d}")
    params.add_row("trainable parameters", f"{plan.trainable:,d}")
    params.add_row("trainable %", f"{plan.trainable_percent:.4f}")
    params.add_row("adapter size on disk", human(plan.adapter_bytes))
    params.add_row("print_trainable_parameters", plan.trainable_line)

    memory = Table(title="estimated training memory (weights + grads + AdamW; activations below)")
    memory.add_column("method")
    for p in PRECISIONS:
        memory.add_column(p, justify="right")
    for method, cells in plan.memory.items():
        memory.add_row(method, *(human(cells[p]) for p in PRECISIONS))
    memory.caption = (
        f"activations at batch {batch} x {max_length} tokens (16-bit, fp32 logits): about "
        f"{human(plan.activations_bytes)} more. int8/int4 quantize the decoder's Linear layers only; "
        "'-' = not possible (quantized weights cannot take gradient steps)."
    )
    return [params, memory]
