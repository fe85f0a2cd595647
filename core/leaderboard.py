"""The leaderboard: Bradley-Terry ratings with 95% intervals (LMArena's `arena-rank`) and head-to-head tables.

Input is :meth:`loradock.core.feedback.FeedbackStore.battles`: votes grouped and counted in SQL. A vote for a
side is a win for it; a tie or a both-bad vote counts half to each side (LMArena's rule). One virtual tie per
pair that met keeps ratings finite when one side wins every vote (an add-one prior; it pulls ratings slightly
together, never apart). Head-to-head win rates get a Wilson score interval, computed here because ties make
the win count fractional.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Literal, get_args

Level = Literal["approach", "adapter", "version"]
LEVELS: tuple[str, ...] = get_args(Level)
PRIOR_TIES = 1.0
Z_95 = 1.959963984540054


def competitor(side: dict[str, Any], level: str) -> str:
    """Who a side was at this level: the approach; or the adapter (approaches of the base keep their approach
    name); or the adapter version (``name@version``)."""
    approach, model, version = side.get("approach") or "app", side.get("model"), side.get("version")
    if level == "approach" or approach not in ("adapter", "app") or not model:
        return approach
    return f"{model}@{version}" if level == "version" and version else model


def wilson(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: ties count half)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def head_to_head(battles: list[dict[str, Any]], level: str) -> list[dict[str, Any]]:
    """Votes per pair (the names in alphabetical order), with the first's win rate and its 95% interval."""
    table: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"a_wins": 0, "b_wins": 0, "ties": 0})
    for b in battles:
        winner, loser = competitor(b["chosen"], level), competitor(b["rejected"], level)
        if winner == loser:
            continue
        pair = (min(winner, loser), max(winner, loser))
        if b["verdict"] in ("a", "b"):
            table[pair]["a_wins" if winner == pair[0] else "b_wins"] += b["count"]
        else:
            table[pair]["ties"] += b["count"]
    rows = []
    for (a, b_name), t in sorted(table.items()):
        votes = t["a_wins"] + t["b_wins"] + t["ties"]
        score = t["a_wins"] + t["ties"] / 2
        low, high = wilson(score, votes)
        rows.append({"a": a, "b": b_name, "votes": int(votes), "a_wins": int(t["a_wins"]),
                     "b_wins": int(t["b_wins"]), "ties": int(t["ties"]), "a_win_rate": round(score / votes, 4),
                     "lower": round(low, 4), "upper": round(high, 4)})
    return rows


def bradley_terry(battles: list[dict[str, Any]], level: str, significance: float = 0.05) -> list[dict[str, Any]]:
    """Ratings (Elo scale: 400 points = 10:1 odds, mean near 1000) with (1 - significance) intervals."""
    counts: dict[tuple[str, str, float], float] = defaultdict(float)
    votes: dict[str, int] = defaultdict(int)
    for b in battles:
        winner, loser = competitor(b["chosen"], level), competitor(b["rejected"], level)
        if winner == loser:
            continue
        counts[(winner, loser, 1.0 if b["verdict"] in ("a", "b") else 0.5)] += b["count"]
        votes[winner] += b["count"]
        votes[loser] += b["count"]
    if len(votes) < 2:
        return [{"name": n, "rating": None, "lower": None, "upper": None, "votes": v} for n, v in votes.items()]
    for a, b_name in {(min(w, lo), max(w, lo)) for w, lo, _ in list(counts)}:
        counts[(a, b_name, 0.5)] += PRIOR_TIES

    import jax.numpy as jnp
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    names = sorted(votes)
    index = {n: i for i, n in enumerate(names)}
    keys = sorted(counts)
    weights = jnp.ones(len(keys), dtype=jnp.float64)
    n = jnp.array([counts[k] for k in keys], dtype=jnp.float64)
    dataset = PairDataset(competitors=names, pairs=jnp.array([[index[k[0]], index[k[1]]] for k in keys],
                                                              dtype=jnp.int32),
                          outcomes=jnp.array([k[2] for k in keys], dtype=jnp.float64), counts=n,
                          weights=weights, opt_weights=weights * n)
    result = BradleyTerry(n_competitors=len(names)).compute_ratings_and_cis(dataset, significance_level=significance)
    rows = [{"name": name, "rating": round(float(result["ratings"][i]), 1),
             "lower": round(float(result["rating_lower"][i]), 1), "upper": round(float(result["rating_upper"][i]), 1),
             "votes": votes[name]} for i, name in enumerate(names)]
    return sorted(rows, key=lambda r: -(r["rating"] or 0))


def leaderboard(battles: list[dict[str, Any]], level: str = "adapter") -> dict[str, Any]:
    """Ratings and head-to-head tables for one level (approach, adapter or version)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    return {"object": "leaderboard", "level": level, "votes": sum(b["count"] for b in battles),
            "ratings": bradley_terry(battles, level), "pairs": head_to_head(battles, level),
            "method": "Bradley-Terry (arena-rank), 95% sandwich intervals; ties and both-bad count half; "
                      f"{PRIOR_TIES:g} virtual tie per pair; head-to-head: Wilson 95% intervals"}
