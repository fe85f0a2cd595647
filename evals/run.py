"""Running `loradock eval` end to end: every approach, the forgetting check, the printed verdict."""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.progress import Progress

from loradock.evals.scoring import (
    Approach,
    EvalItem,
    cheapest_that_works,
    forgetting_check,
    run_approach,
    served_models,
)
from loradock.evals.tables import eval_examples, eval_scores, forgetting_table

log = logging.getLogger(__name__)


def approaches(base: str, adapter: str, rag_collection: str | None, rag_top_k: int) -> list[Approach]:
    """The lesson's ladder, cheapest first: prompting, RAG (the prompt plus passages), fine-tuning."""
    ladder = [
        Approach("base", "prompting: base as is", base),
        Approach("prompted", "prompting: base + system prompt", base, use_system=True),
    ]
    if rag_collection:
        ladder.append(
            Approach(
                "rag",
                f"RAG: base + '{rag_collection}' passages",
                base,
                use_system=True,
                rag={"collection": rag_collection, "top_k": rag_top_k},
            )
        )
    ladder.append(Approach("adapter", f"fine-tune: adapter {adapter}", adapter))
    return ladder


def evaluate_all(
    console: Console,
    server: str,
    api_key: str,
    adapter: str,
    items: list[EvalItem],
    general: list[EvalItem],
    rag_collection: str | None,
    threshold: float,
    max_tokens: int,
    concurrency: int,
    rag_top_k: int,
) -> dict[str, Any]:
    """Run everything against the server, print the tables and the verdict, return the numbers."""
    import openai

    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per request would bury the tables
        logging.getLogger(noisy).setLevel(logging.WARNING)
    client = openai.OpenAI(base_url=server.rstrip("/") + "/v1", api_key=api_key, max_retries=2, timeout=300)
    base, _ = served_models(client, adapter)
    ladder = approaches(base, adapter, rag_collection, rag_top_k)
    metrics = sorted({i.metric for i in items})
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("querying the server", total=len(items) * len(ladder) + 2 * len(general))

        def advance(n: int) -> None:
            progress.advance(task, n)

        results = [run_approach(client, a, items, max_tokens, concurrency, advance) for a in ladder]
        general_base = run_approach(client, ladder[0], general, max_tokens, concurrency, advance)
        general_adapter = run_approach(client, ladder[-1], general, max_tokens, concurrency, advance)

    forgetting = forgetting_check(general_base, general_adapter, general)
    console.print(eval_scores(results, f"{', '.join(metrics)} over {len(items)} held-out prompts"))
    console.print(eval_examples(items, results))
    console.print(forgetting_table(forgetting))
    winner, reason = cheapest_that_works(results, threshold)
    if winner is not None and winner.approach.key == "adapter" and forgetting.forgot:
        reason += "; but the adapter forgets general answers: lower the LR/epochs or mix in general examples"
    style = "green" if winner is not None else "yellow"
    console.print(
        f"[bold {style}]cheapest that works:[/bold {style}] {winner.approach.label if winner else 'none'} ({reason})"
    )
    return {
        "adapter": adapter,
        "base": base,
        "threshold": threshold,
        "metrics": metrics,
        "approaches": {
            r.approach.key: {
                "label": r.approach.label,
                "passed": r.passed,
                "total": r.total,
                "score": round(r.score, 4),
                "median_words": r.median_words,
                "skipped": r.skipped,
            }
            for r in results
        },
        "forgetting": {
            "total": forgetting.total,
            "base_correct": forgetting.base_correct,
            "adapter_correct": forgetting.adapter_correct,
            "kept": forgetting.kept,
            "lost": forgetting.lost,
            "same_answers": forgetting.same_answers,
            "forgot": forgetting.forgot,
            "answers": [{"question": q, "base": b, "adapter": a} for q, b, a in forgetting.examples],
        },
        "cheapest_that_works": winner.approach.key if winner else None,
        "reason": reason,
        "samples": [
            {
                "prompt": i.messages[-1]["content"],
                **{r.approach.key: r.outputs[n] for r in results if not r.skipped},
            }
            for n, i in enumerate(items[:5])
        ],
    }
