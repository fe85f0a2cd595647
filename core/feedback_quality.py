"""Data quality for DPO exports: contradictory votes, per-annotator agreement, near-duplicate prompts.

Votes are grouped by prompt and by the unordered pair of what answered (approach, model and version on each
side). A group whose decisive votes name different winners is **contradictory**: for DPO its pairs cancel out,
so an export drops them by default. An annotator's **agreement** is the share of their votes on repeated
groups that pick the winner most of the *other* votes in the group picked. A prompt whose normalised text is
nearly the same as an earlier, different prompt's is a **near-duplicate**.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from loradock.core.feedback import PreferenceRecord, dpo_row

NEAR_DUPLICATE_SIMILARITY = 0.9  # Jaccard similarity of character trigrams of the normalised prompts
MIN_WORDS_FUZZY = 8  # shorter prompts are near-duplicates only when their normalised words are the same
FLAGS = ("contradictory", "near_duplicate", "low_agreement")


class QualityOptions(BaseModel):
    """What an export drops. Every flagged record is counted whether it is dropped or kept."""

    drop_contradictory: bool = Field(default=True, description="Drop votes in groups whose verdicts disagree.")
    drop_near_duplicates: bool = Field(default=False, description="Drop votes on near-duplicate prompts.")
    min_agreement: float = Field(default=0.0, ge=0, le=1, description="Drop annotators whose agreement is lower.")


@dataclass
class QualityReport:
    """Flags per record id, and what they add up to."""

    flags: dict[str, list[str]] = field(default_factory=dict)
    contradictory_groups: int = 0
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    near_duplicates: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Records carrying each flag."""
        counter = Counter(flag for flags in self.flags.values() for flag in flags)
        return {flag: counter.get(flag, 0) for flag in FLAGS}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: counts, contradictory groups, agreement per annotator, near-duplicate examples."""
        return {"flagged": self.counts(), "contradictory_groups": self.contradictory_groups,
                "agreement": self.agreement, "near_duplicates": self.near_duplicates[:50]}


def side_id(approach: str, model: str | None, version: str | None) -> str:
    """One side's identity: approach, model and version (``adapter:concise@2``)."""
    return f"{approach}:{model or '?'}" + (f"@{version}" if version else "")


def prompt_key(prompt: list[dict[str, str]]) -> str:
    """A stable hash of a conversation (the exact messages)."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:20]


def _group_key(r: PreferenceRecord) -> tuple[str, tuple[str, str]]:
    chosen = side_id(r.chosen_approach, r.chosen_model, r.chosen_version)
    rejected = side_id(r.rejected_approach, r.rejected_model, r.rejected_version)
    return prompt_key(r.prompt), (min(chosen, rejected), max(chosen, rejected))


def _winner(r: PreferenceRecord) -> str:
    return side_id(r.chosen_approach, r.chosen_model, r.chosen_version)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what near-duplicate detection compares."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _trigrams(text: str) -> set[str]:
    padded = f"  {text} "
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def near_duplicate_prompts(texts: Iterable[str], threshold: float = NEAR_DUPLICATE_SIMILARITY) -> dict[str, str]:
    """``{text: earlier text it nearly repeats}`` over distinct prompt texts, in first-seen order.

    Near-duplicates: the same words once case, punctuation and spacing are normalised; and, for prompts of
    at least ``MIN_WORDS_FUZZY`` words, character-trigram Jaccard similarity >= ``threshold`` (a typo or one
    changed word). Short prompts that differ in a word ("2+2" vs "2+3") are different questions. Candidates
    share a word (an inverted index), so prompts with no word in common are never compared.
    """
    first: dict[str, str] = {}  # normalised text -> first raw text seen with it
    grams: dict[str, set[str]] = {}
    by_word: dict[str, list[str]] = defaultdict(list)
    repeats: dict[str, str] = {}
    for raw in texts:
        norm = normalise(raw)
        if not norm or raw in repeats or first.get(norm) == raw:
            continue
        if norm in first:
            repeats[raw] = first[norm]
            continue
        first[norm] = raw
        words = set(norm.split())
        if len(norm.split()) < MIN_WORDS_FUZZY:
            continue
        mine = grams[norm] = _trigrams(norm)
        candidates = {other for word in words for other in by_word[word]}
        best = max(((len(mine & grams[o]) / len(mine | grams[o]), o) for o in candidates), default=(0.0, ""))
        if best[0] >= threshold:
            repeats[raw] = first[best[1]]
        for word in words:
            by_word[word].append(norm)
    return repeats


def assess(records: list[PreferenceRecord]) -> QualityReport:
    """Flag the decisive votes (verdict a/b) in ``records``; see the module docstring for the rules."""
    report = QualityReport(flags={r.id: [] for r in records})
    groups: dict[tuple[str, tuple[str, str]], list[PreferenceRecord]] = defaultdict(list)
    for r in records:
        groups[_group_key(r)].append(r)

    agree: Counter[str] = Counter()
    disagree: Counter[str] = Counter()
    votes: Counter[str] = Counter(r.annotator or "(anonymous)" for r in records)
    for members in groups.values():
        if len({_winner(r) for r in members}) > 1:
            report.contradictory_groups += 1
            for r in members:
                report.flags[r.id].append("contradictory")
        if len(members) < 2:
            continue
        for r in members:
            others = Counter(_winner(o) for o in members if o.id != r.id).most_common(2)
            if len(others) == 2 and others[0][1] == others[1][1]:
                continue  # the others are split: no majority to agree with
            who = r.annotator or "(anonymous)"
            (agree if others[0][0] == _winner(r) else disagree)[who] += 1
    for who in sorted(votes):
        repeated = agree[who] + disagree[who]
        report.agreement[who] = {"votes": votes[who], "repeated": repeated,
                                 "agreement": round(agree[who] / repeated, 4) if repeated else None}

    last_user = {r.id: r.prompt[-1]["content"] for r in records}
    repeats = near_duplicate_prompts(last_user.values())
    seen = set()
    for r in records:
        text = last_user[r.id]
        if text in repeats:
            report.flags[r.id].append("near_duplicate")
            if text not in seen:
                seen.add(text)
                report.near_duplicates.append({"prompt": text, "repeats": repeats[text]})
    return report


def select_pairs(records: list[PreferenceRecord], options: QualityOptions | None = None,
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The DPO rows an export writes, and a report of what was flagged, dropped and kept."""
    options = options or QualityOptions()
    report = assess(records)
    low = {who for who, a in report.agreement.items()
           if a["agreement"] is not None and a["agreement"] < options.min_agreement}
    for r in records:
        if (r.annotator or "(anonymous)") in low:
            report.flags[r.id].append("low_agreement")
    dropping = {"contradictory": options.drop_contradictory, "near_duplicate": options.drop_near_duplicates,
                "low_agreement": bool(low)}
    dropped: Counter[str] = Counter()  # by the first reason, so each dropped record counts once
    kept: Counter[str] = Counter()
    rows, seen, duplicates = [], set(), 0
    for r in records:
        reasons = [f for f in report.flags[r.id] if dropping[f]]
        if reasons:
            dropped[reasons[0]] += 1
            continue
        row = dpo_row(r)
        key = json.dumps(row, sort_keys=True)
        if key in seen:  # the same pair voted again: one row (`data check` refuses exact duplicates)
            duplicates += 1
            continue
        seen.add(key)
        rows.append(row)
        kept.update(report.flags[r.id])
    summary = {"pairs": len(records), "written": len(rows), "duplicates_merged": duplicates,
               "dropped": {f: dropped.get(f, 0) for f in FLAGS},
               "kept_flagged": {f: kept.get(f, 0) for f in FLAGS}, **report.summary()}
    return rows, summary


def report_line(summary: dict[str, Any]) -> str:
    """One line saying how many pairs were written, dropped and kept with a flag."""
    dropped = ", ".join(f"{n} {f.replace('_', '-')}" for f, n in summary["dropped"].items() if n) or "none"
    kept = ", ".join(f"{n} {f.replace('_', '-')}" for f, n in summary["kept_flagged"].items() if n) or "none"
    merged = f"; {summary['duplicates_merged']} exact repeats merged" if summary.get("duplicates_merged") else ""
    return (f"{summary['written']} of {summary['pairs']} pairs written; dropped: {dropped}; "
            f"kept although flagged: {kept}{merged}")
