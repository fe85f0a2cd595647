"""Rich tables for `data check`, `train plan` and `eval` (presentation only)."""

from __future__ import annotations

import statistics

from rich.table import Table

from loradock.evals.scoring import ApproachResult, EvalItem, Forgetting
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


def eval_scores(results: list[ApproachResult], metric_line: str) -> Table:
    """One row per approach, in the lesson's order of cost."""
    table = Table(title=f"held-out task metric ({metric_line})")
    table.add_column("approach")
    table.add_column("model")
    table.add_column("passed", justify="right")
    table.add_column("score", justify="right")
    for r in results:
        if r.skipped:
            table.add_row(r.approach.label, r.approach.model, "-", f"[yellow]skipped: {r.skipped}[/yellow]")
        else:
            table.add_row(r.approach.label, r.approach.model, f"{r.passed}/{r.total}", f"{r.score:.0%}")
    return table


def eval_examples(items: list[EvalItem], results: list[ApproachResult], n: int = 3, width: int = 70) -> Table:
    """The first few answers side by side: judge on real outputs, not only on numbers."""
    ran = [r for r in results if not r.skipped]
    table = Table(title="sample answers", show_lines=True)
    table.add_column("prompt")
    for r in ran:
        table.add_column(r.approach.key)
    for i, item in enumerate(items[:n]):
        table.add_row(_cut(item.messages[-1]["content"], 40), *(_cut(r.outputs[i], width) for r in ran))
    return table


def forgetting_table(f: Forgetting) -> Table:
    """General questions: correctness of base vs adapter, and how many answers stayed the same."""
    table = Table(title="forgetting check (general questions, adapter vs base)")
    table.add_column("measure")
    table.add_column("base", justify="right")
    table.add_column("adapter", justify="right")
    table.add_row("correct", f"{f.base_correct}/{f.total}", f"{f.adapter_correct}/{f.total}")
    table.add_row("base's correct answers kept", "-", f"{f.kept}/{f.base_correct}")
    table.add_row("near-identical wording to base", "-", f"{f.same_answers}/{f.total}")
    verdict = "[red]forgets[/red]" if f.forgot else "[green]keeps general knowledge[/green]"
    table.add_row("verdict", "", verdict)
    for q in f.lost:
        table.add_row(f"[red]lost[/red] {_cut(q, 40)}", "right", "wrong")
    return table


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
