"""Leaderboard: arena-rank's Bradley-Terry with 95% intervals over SQL-grouped votes, head-to-head tables."""

from __future__ import annotations

import pytest

from loradock.core.feedback import FeedbackFilter, FeedbackStore
from loradock.core.leaderboard import competitor, head_to_head, leaderboard, wilson


def _add(store: FeedbackStore, winner: tuple[str, str, str | None], loser: tuple[str, str, str | None],
         verdict: str = "a", n: int = 1, **kw: object) -> None:
    for i in range(n):
        store.add({"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": f"w{i}", "rejected": f"l{i}",
                   "verdict": verdict, "chosen_approach": winner[0], "chosen_model": winner[1],
                   "chosen_version": winner[2], "rejected_approach": loser[0], "rejected_model": loser[1],
                   "rejected_version": loser[2], "blind": True, **kw})


BASE = ("base", "SmolLM2", None)
PROMPTING = ("prompting", "SmolLM2", None)
V1, V2 = ("adapter", "concise", "1"), ("adapter", "concise", "2")


@pytest.fixture
def store(db_url: str) -> FeedbackStore:
    with FeedbackStore(db_url) as s:
        yield s


def test_ratings_intervals_and_pairs_per_level(store: FeedbackStore) -> None:
    _add(store, V2, BASE, n=12)  # v2 wins every vote: the virtual tie keeps its rating finite
    _add(store, PROMPTING, BASE, n=6)
    _add(store, BASE, PROMPTING, n=4)
    _add(store, V1, BASE, verdict="tie", n=3)
    _add(store, V2, V1, n=2, prompt_set="other", annotator="bob")
    battles = store.battles(FeedbackFilter(blind=True))
    assert sum(b["count"] for b in battles) == 27

    board = leaderboard(battles, "version")
    ratings = {r["name"]: r for r in board["ratings"]}
    assert set(ratings) == {"concise@1", "concise@2", "base", "prompting"}
    assert board["ratings"][0]["name"] == "concise@2"
    for r in ratings.values():
        assert r["lower"] < r["rating"] < r["upper"]
    assert ratings["concise@2"]["lower"] > ratings["base"]["upper"]  # clearly ahead of the base
    pairs = {(p["a"], p["b"]): p for p in board["pairs"]}
    v2_base = pairs[("base", "concise@2")]
    assert (v2_base["votes"], v2_base["a_wins"], v2_base["b_wins"]) == (12, 0, 12)
    assert v2_base["upper"] < 0.5  # the base's win rate interval excludes 50%
    ties = pairs[("base", "concise@1")]
    assert ties["ties"] == 3 and ties["a_win_rate"] == 0.5 and ties["lower"] < 0.5 < ties["upper"]

    by_adapter = leaderboard(battles, "adapter")  # the two versions merge; their own games drop out
    assert {r["name"] for r in by_adapter["ratings"]} == {"concise", "base", "prompting"}
    assert sum(p["votes"] for p in by_adapter["pairs"]) == 25
    assert {r["name"] for r in leaderboard(battles, "approach")["ratings"]} == {"adapter", "base", "prompting"}

    only_bob = store.battles(FeedbackFilter(annotator="bob", prompt_set="other"))
    assert [p["votes"] for p in leaderboard(only_bob, "version")["pairs"]] == [2]
    assert leaderboard(store.battles(FeedbackFilter(blind=False)), "adapter")["ratings"] == []
    with pytest.raises(ValueError, match="level must be one of"):
        leaderboard(battles, "model")


def test_wilson_interval_and_competitor_names() -> None:
    low, high = wilson(10, 10)
    assert 0.69 < low < 0.73 and high == pytest.approx(1.0)
    low, high = wilson(5, 10)
    assert low == pytest.approx(1 - high) and low < 0.5 < high
    assert wilson(0, 0) == (0.0, 1.0)
    side = {"approach": "adapter", "model": "concise", "version": "3"}
    assert [competitor(side, lv) for lv in ("approach", "adapter", "version")] == ["adapter", "concise", "concise@3"]
    assert competitor({"approach": "rag", "model": "SmolLM2"}, "version") == "rag"
    assert head_to_head([], "adapter") == []
