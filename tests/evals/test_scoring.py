"""`loradock eval` scoring: the task metrics, the per-question forgetting check and the decision rule."""

from __future__ import annotations

import json

import pytest

from loradock.evals.scoring import (
    Approach,
    ApproachResult,
    EvalError,
    cheapest_that_works,
    forgetting_check,
    load_items,
    score,
)


def _items(tmp_path, rows):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_items(path)


def test_metrics_exact_contains_json_and_word_limit(tmp_path):
    exact, contains, js, short = _items(
        tmp_path,
        [
            {"prompt": "2+2?", "expected": "4", "metric": "exact"},
            {"messages": [{"role": "user", "content": "Capital?"}], "expected": ["Paris"], "metric": "contains"},
            {"prompt": "as json", "metric": "json", "json_keys": ["answer"], "expected": "blue"},
            {"prompt": "short", "expected": "yes", "metric": "contains", "max_words": 3},
        ],
    )
    assert score(exact, " 4. ") and not score(exact, "It is 4")
    assert score(contains, "The capital is paris.") and not score(contains, "Lyon")
    assert score(js, '{"answer": "Blue"}')
    assert not score(js, '{"answer": "blue", "extra": 1}'), "json_keys are exact"
    assert not score(js, "answer: blue"), "prose is not JSON"
    assert score(short, "yes, it is") and not score(short, "yes it is true indeed")


def test_eval_rows_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "expected": "x"}) + "\n" + json.dumps({"expected": "x"}) + "\n")
    with pytest.raises(EvalError, match="bad.jsonl:2: .*'messages' or 'prompt'"):
        load_items(path)


def _result(key, items, outputs):
    r = ApproachResult(Approach(key, key, key), total=len(items), outputs=outputs)
    r.passed = sum(score(i, o) for i, o in zip(items, outputs, strict=True))
    return r


def test_forgetting_is_counted_per_question_not_net(tmp_path):
    items = _items(tmp_path, [{"prompt": f"q{n}", "expected": f"a{n}", "metric": "contains"} for n in range(4)])
    base = _result("base", items, ["a0", "a1", "a2", "nope"])
    # The adapter gains q3 but loses q0 and q1: the net score hides two lost answers.
    adapter = _result("adapter", items, ["wrong", "wrong", "a2", "a3"])
    f = forgetting_check(base, adapter, items)
    assert (f.base_correct, f.adapter_correct) == (3, 2)
    assert f.lost == ["q0", "q1"] and f.kept == 1
    assert f.forgot, "two lost answers out of four is forgetting"
    same = forgetting_check(base, _result("adapter", items, ["a0", "a1", "a2", "a3"]), items)
    assert same.lost == [] and not same.forgot and same.same_answers == 3


def test_cheapest_that_works_takes_the_first_in_cost_order(tmp_path):
    items = _items(tmp_path, [{"prompt": "q", "expected": "a", "metric": "contains"}])
    base, prompted, adapter = (_result(k, items, [o]) for k, o in [("base", "x"), ("prompted", "a"), ("adapter", "a")])
    winner, reason = cheapest_that_works([base, prompted, adapter], 0.8)
    assert winner is prompted and "costlier approaches are not needed" in reason
    winner, reason = cheapest_that_works([base], 0.8)
    assert winner is None and "no approach reaches 80%" in reason


def test_median_words_reports_answer_length(tmp_path):
    items = _items(tmp_path, [{"prompt": f"q{n}", "expected": "x", "metric": "contains"} for n in range(3)])
    r = _result("adapter", items, ["one two", "one two three four", "x"])
    assert r.median_words == 2
    assert ApproachResult(Approach("a", "a", "a")).median_words is None
