"""Rich tables for `loradock eval` (presentation only)."""

from __future__ import annotations

from rich.table import Table

from loradock.evals.scoring import ApproachResult, EvalItem, Forgetting


def eval_scores(results: list[ApproachResult], metric_line: str) -> Table:
    """One row per approach, in the lesson's order of cost."""
    table = Table(title=f"held-out task metric ({metric_line})")
    table.add_column("approach")
    table.add_column("model")
    table.add_column("passed", justify="right")
    table.add_column("score", justify="right")
    table.add_column("median words", justify="right")
    for r in results:
        if r.skipped:
            table.add_row(r.approach.label, r.approach.model, "-", f"[yellow]skipped: {r.skipped}[/yellow]", "-")
        else:
            table.add_row(r.approach.label, r.approach.model, f"{r.passed}/{r.total}", f"{r.score:.0%}",
                          f"{r.median_words:g}" if r.median_words is not None else "-")
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
