"""`loradock eval`: the lesson's decision rule, measured. Prompting, RAG or fine-tuning: which is the
cheapest approach that works on held-out prompts, and does the adapter forget general knowledge?

Everything goes through the running server with the official ``openai`` client at temperature 0.

Eval rows (JSONL): ``messages`` (or ``prompt``) ending with the user's turn, ``expected`` (a string or a list
of acceptable strings), ``metric`` (exact | contains | json), optional ``system`` (the instruction the
prompting approach gets), ``json_keys`` (the exact keys a json answer must have) and ``max_words`` (a length
limit on top of the metric). A row whose messages end with an assistant turn uses that turn as ``expected``.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from loradock.core.io import JSONLineError, iter_jsonl

log = logging.getLogger(__name__)
METRICS = ("exact", "contains", "json")
SAME_ANSWER_RATIO = 0.9  # difflib similarity above which two answers count as the same answer


class EvalError(ValueError):
    """Eval data or server state that prevents the evaluation; the message says what to change."""


@dataclass
class EvalItem:
    """One held-out prompt and how to score the answer."""

    messages: list[dict[str, str]]
    expected: list[str]
    metric: str
    system: str | None = None
    json_keys: list[str] | None = None
    max_words: int | None = None


@dataclass
class Approach:
    """One way to get the behaviour, in the lesson's order of cost."""

    key: str
    label: str
    model: str
    use_system: bool = False
    rag: dict[str, Any] | None = None


@dataclass
class ApproachResult:
    """Scores of one approach over the eval set (or why it was skipped)."""

    approach: Approach
    passed: int = 0
    total: int = 0
    outputs: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def score(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def median_words(self) -> float | None:
        """Median length of the answers in words (what a length preference such as `concise` moves)."""
        return statistics.median(len(o.split()) for o in self.outputs) if self.outputs else None


# ---------------------------------------------------------------- data and scoring


def load_items(path: Path, default_metric: str | None = None, default_system: str | None = None) -> list[EvalItem]:
    """Read eval rows; errors name the line to fix."""
    items = []
    try:
        for lineno, row in iter_jsonl(path):
            try:
                items.append(_item(row, default_metric, default_system))
            except (ValueError, KeyError, TypeError) as e:
                raise EvalError(f"{path}:{lineno}: {e}") from e
    except JSONLineError as e:
        raise EvalError(str(e)) from e
    if not items:
        raise EvalError(f"{path}: no eval rows")
    return items


def _item(row: dict[str, Any], default_metric: str | None, default_system: str | None) -> EvalItem:
    if "messages" in row:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    elif "prompt" in row:
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    else:
        raise ValueError("needs 'messages' or 'prompt'")
    expected = row.get("expected", row.get("completion"))
    if messages and messages[-1]["role"] == "assistant":
        expected = expected if expected is not None else messages[-1]["content"]
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message")
    metric = row.get("metric") or default_metric or "contains"
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if expected is None:
        expected = []
    expected = [expected] if isinstance(expected, str) else [str(e) for e in expected]
    if metric != "json" and not expected:
        raise ValueError(f"metric {metric!r} needs 'expected'")
    max_words = row.get("max_words")
    if max_words is not None and (not isinstance(max_words, int) or max_words <= 0):
        raise ValueError("max_words must be a positive integer")
    system = row.get("system") or default_system
    return EvalItem(messages, expected, metric, system, row.get("json_keys"), max_words)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!?\"'")


def score(item: EvalItem, output: str) -> bool:
    """Does the output pass the item's metric (and its word limit, if any)?"""
    if item.max_words is not None and len(output.split()) > item.max_words:
        return False
    if item.metric == "exact":
        return any(_norm(output) == _norm(e) for e in item.expected)
    if item.metric == "contains":
        return any(_norm(e) in _norm(output) for e in item.expected)
    try:
        obj = json.loads(output.strip())
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    if item.json_keys is not None and set(obj) != set(item.json_keys):
        return False
    return not item.expected or any(_norm(e) in _norm(json.dumps(obj)) for e in item.expected)


def same_answer(a: str, b: str) -> bool:
    """Two answers are the same when their texts are near-identical."""
    return SequenceMatcher(None, _norm(a), _norm(b)).ratio() >= SAME_ANSWER_RATIO


# ---------------------------------------------------------------- talking to the server


def served_models(client: Any, adapter: str, wait_s: float = 15.0) -> tuple[str, list[str]]:
    """(base id, adapter ids) from /v1/models; waits a little for a just-published adapter to appear."""
    deadline = time.monotonic() + wait_s
    while True:
        models = client.models.list().data
        base = next((m.id for m in models if getattr(m, "parent", None) is None), None)
        adapters = [m.id for m in models if getattr(m, "parent", None) is not None]
        if adapter in adapters or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if base is None:
        raise EvalError("the server lists no base model (no model with parent null in /v1/models)")
    if adapter not in adapters:
        raise EvalError(
            f"adapter {adapter!r} is not served (the server has {adapters or 'none'}); publish it with "
            "`loradock train ...` into the store the server watches, then check `loradock adapters validate`"
        )
    return base, adapters


def chat(client: Any, approach: Approach, item: EvalItem, max_tokens: int) -> str:
    """One temperature-0 chat completion for an item under an approach."""
    messages = list(item.messages)
    if approach.use_system and item.system:
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": item.system + "\n" + messages[0]["content"]}
        else:
            messages.insert(0, {"role": "system", "content": item.system})
    extra = {"rag": approach.rag} if approach.rag else None
    resp = client.chat.completions.create(
        model=approach.model, messages=messages, temperature=0, max_tokens=max_tokens, extra_body=extra
    )
    return resp.choices[0].message.content or ""


def run_approach(
    client: Any,
    approach: Approach,
    items: list[EvalItem],
    max_tokens: int,
    concurrency: int,
    advance: Callable[[int], None] = lambda n: None,
) -> ApproachResult:
    """Score one approach on every item. A server that refuses RAG (400) marks the column skipped."""
    import openai

    result = ApproachResult(approach, total=len(items))
    if approach.use_system and not approach.rag and not any(i.system for i in items):
        result.skipped = "no system prompt declared (add 'system' to the eval rows or pass --system)"
        advance(len(items))
        return result
    if approach.rag:
        try:
            first = chat(client, approach, items[0], max_tokens)
        except (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError) as e:
            result.skipped = f"server refused RAG ({e.status_code}): {e.message}"
            advance(len(items))
            return result
        advance(1)
        rest = _parallel(client, approach, items[1:], max_tokens, concurrency, advance)
        result.outputs = [first, *rest]
    else:
        result.outputs = _parallel(client, approach, items, max_tokens, concurrency, advance)
    result.passed = sum(score(i, o) for i, o in zip(items, result.outputs, strict=True))
    return result


def _parallel(
    client: Any,
    approach: Approach,
    items: list[EvalItem],
    max_tokens: int,
    concurrency: int,
    advance: Callable[[int], None],
) -> list[str]:
    def one(item: EvalItem) -> str:
        out = chat(client, approach, item, max_tokens)
        advance(1)
        return out

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, items))


# ---------------------------------------------------------------- forgetting and the decision


@dataclass
class Forgetting:
    """General questions answered by the base and by the adapter, compared question by question."""

    total: int
    base_correct: int
    adapter_correct: int
    same_answers: int
    lost: list[str]  # questions the base answered correctly and the adapter does not
    examples: list[tuple[str, str, str]]

    @property
    def kept(self) -> int:
        """Questions the base got right that the adapter still gets right."""
        return self.base_correct - len(self.lost)

    @property
    def forgot(self) -> bool:
        """More than one general question (or 10%) the base got right is now answered wrong."""
        return len(self.lost) > max(1, self.total // 10)


def forgetting_check(base: ApproachResult, adapter: ApproachResult, items: list[EvalItem]) -> Forgetting:
    """Compare adapter and base answers to the shipped general questions, per question."""
    examples = [(i.messages[-1]["content"], b, a) for i, b, a in zip(items, base.outputs, adapter.outputs, strict=True)]
    same = sum(same_answer(b, a) for _, b, a in examples)
    lost = [q for item, (q, b, a) in zip(items, examples, strict=True) if score(item, b) and not score(item, a)]
    return Forgetting(len(items), base.passed, adapter.passed, same, lost, examples)


def cheapest_that_works(results: list[ApproachResult], threshold: float) -> tuple[ApproachResult | None, str]:
    """The first approach (in cost order) whose score reaches the threshold, with a one-line reason."""
    ran = [r for r in results if r.skipped is None]
    for r in ran:
        if r.score >= threshold:
            reason = f"reaches {r.score:.0%} (>= {threshold:.0%}); costlier approaches are not needed"
            return r, reason
    if not ran:
        return None, "no approach could run"
    best = max(ran, key=lambda r: r.score)
    return None, (
        f"no approach reaches {threshold:.0%}; the best is {best.approach.label} at {best.score:.0%}. "
        "Improve the data (more, cleaner examples) or the prompt before trusting any of them"
    )
