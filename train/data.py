"""Training data: read JSONL / CSV / saved HF datasets, normalize the three formats, and check them.

Normalized rows:
- SFT: ``{"messages": [...]}`` (``prompt`` + ``completion`` rows become a conversation).
- DPO: ``{"prompt": [...messages], "chosen": [assistant], "rejected": [assistant]}`` (TRL's conversational
  preference format).

:func:`check_rows` finds what the lesson calls bad records: schema errors (by line), empty turns, exact
duplicates, contradictions (same prompt, different answers) and rows that ``max_length`` would truncate.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradock.core.io import JSONLineError, iter_jsonl
from loradock.core.template import TemplateError, normalize_messages

log = logging.getLogger(__name__)

KINDS = ("schema", "empty", "duplicate", "contradiction", "too_long")
KIND_LABELS = {
    "schema": "schema errors",
    "empty": "empty / whitespace turns",
    "duplicate": "exact duplicates",
    "contradiction": "contradictions",
    "too_long": "longer than max_length",
}


class DataError(ValueError):
    """Data that cannot be read or trained on; the message says what to change."""


@dataclass
class Record:
    """One row as read from the file: its 1-based line (row number for HF datasets) and raw value."""

    line: int
    raw: Any


@dataclass
class Problem:
    """One defect found by the check."""

    kind: str
    line: int
    message: str


@dataclass
class Row:
    """A row that passed the schema: normalized data plus its token length."""

    line: int
    data: dict[str, Any]
    tokens: int = 0


@dataclass
class DataReport:
    """What `data check` found in one file."""

    path: Path
    method: str
    total: int
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    max_length: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind (every kind present, zeros included)."""
        out = dict.fromkeys(KINDS, 0)
        for p in self.problems:
            out[p.kind] += 1
        return out

    def clean_rows(self) -> list[Row]:
        """Rows with no problem of any kind (what training uses with --drop-invalid)."""
        bad = {p.line for p in self.problems}
        return [r for r in self.rows if r.line not in bad]


# ---------------------------------------------------------------- reading


def read_records(path: Path) -> list[Record]:
    """Read rows from a .jsonl/.json-lines file, a .csv file, or a folder saved with ``save_to_disk``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_hf(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return _read_jsonl(path)
    raise DataError(f"{path}: unsupported format; use .jsonl, .csv, or a folder saved with Dataset.save_to_disk")


def _read_jsonl(path: Path) -> list[Record]:
    def unparsable(e: JSONLineError) -> _Unparsable:
        return _Unparsable(f"not valid JSON ({e.error.msg} at column {e.error.colno})")

    return [Record(lineno, value) for lineno, value in iter_jsonl(path, on_error=unparsable)]


def _read_csv(path: Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            # Cells holding JSON lists (conversations) are decoded; plain strings stay strings.
            parsed = {}
            for key, value in row.items():
                text = (value or "").strip()
                if text.startswith(("[", "{")):
                    try:
                        parsed[key] = json.loads(text)
                        continue
                    except json.JSONDecodeError:
                        pass
                parsed[key] = value
            records.append(Record(reader.line_num, parsed))
    return records


def _read_hf(path: Path) -> list[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict needs a 'train' split; it has {list(ds)}")
        ds = ds["train"]
    return [Record(i + 1, row) for i, row in enumerate(ds)]


def read_split(path: Path, split: str) -> list[Record] | None:
    """Rows of a named split of a saved DatasetDict (e.g. 'validation'), or None when there is none."""
    import datasets

    if not Path(path).is_dir():
        return None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict) and split in ds:
        return [Record(i + 1, row) for i, row in enumerate(ds[split])]
    return None


@dataclass
class _Unparsable:
    reason: str


def data_sha256(path: Path) -> str:
    """SHA-256 of a data file, or of every file of a dataset folder (names and bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- normalizing


def detect_method(records: Sequence[Record]) -> str:
    """'dpo' when the first object row has chosen/rejected, else 'sft'."""
    for r in records:
        if isinstance(r.raw, dict):
            return "dpo" if "chosen" in r.raw or "rejected" in r.raw else "sft"
    return "sft"


def _as_messages(value: Any, what: str, default_role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, list) and value:
        try:
            return normalize_messages(value)
        except (TemplateError, TypeError, ValueError) as e:
            raise DataError(f"{what}: {e}") from e
    raise DataError(f"{what} must be a string or a non-empty list of messages")


def normalize(raw: Any, method: str) -> dict[str, Any]:
    """Return the normalized row or raise DataError saying what is wrong with it."""
    if isinstance(raw, _Unparsable):
        raise DataError(raw.reason)
    if not isinstance(raw, dict):
        raise DataError(f"each row must be a JSON object, got {type(raw).__name__}")
    if method == "dpo":
        return _normalize_preference(raw)
    if "chosen" in raw or "rejected" in raw:
        raise DataError("this is preference data (chosen/rejected); train it with `loradock train dpo`")
    if "messages" in raw:
        messages = _as_messages(raw["messages"], "messages", "user")
    elif "prompt" in raw and "completion" in raw:
        prompt = _as_messages(raw["prompt"], "prompt", "user")
        completion = _as_messages(raw["completion"], "completion", "assistant")
        messages = normalize_messages(prompt + completion)
    else:
        raise DataError(f"needs 'messages', or 'prompt' and 'completion'; found keys {sorted(raw)}")
    if messages[-1]["role"] != "assistant":
        raise DataError("the last message must be the assistant's: it is what the model learns to say")
    return {"messages": messages}


def _normalize_preference(raw: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in raw]
    if missing:
        raise DataError(f"preference rows need prompt, chosen and rejected; missing {missing}")
    prompt = _as_messages(raw["prompt"], "prompt", "user")
    if prompt[-1]["role"] == "assistant":
        raise DataError("prompt must end with a user message; the answers go in chosen/rejected")
    out: dict[str, Any] = {"prompt": prompt}
    for key in ("chosen", "rejected"):
        answer = _as_messages(raw[key], key, "assistant")
        if len(answer) != 1 or answer[0]["role"] != "assistant":
            raise DataError(f"{key} must be one assistant message (or a string)")
        out[key] = answer
    normalize_messages(prompt + out["chosen"])  # the system-first rule applies to the whole conversation
    return out


def conversation(row: dict[str, Any], answer: str = "chosen") -> list[dict[str, str]]:
    """The full conversation of a normalized row (for preference rows: prompt + the chosen answer)."""
    return row["messages"] if "messages" in row else row["prompt"] + row[answer]


# ---------------------------------------------------------------- checking


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def check_rows(
    records: Sequence[Record],
    method: str,
    count_tokens: Callable[[list[dict[str, str]]], int] | None,
    max_length: int,
    path: Path,
) -> DataReport:
    """Run every check; ``count_tokens(messages)`` measures a rendered conversation (None skips length)."""
    report = DataReport(path=Path(path), method=method, total=len(records), max_length=max_length)
    for rec in records:
        try:
            data = normalize(rec.raw, method)
        except (DataError, TemplateError) as e:
            report.problems.append(Problem("schema", rec.line, str(e)))
            continue
        row = Row(rec.line, data)
        report.rows.append(row)
        for m in _all_messages(data):
            if not m["content"].strip():
                report.problems.append(Problem("empty", rec.line, f"{m['_where']} ({m['role']}) is empty"))
                break
        if count_tokens is not None:
            row.tokens = max(count_tokens(conversation(data, a)) for a in _answers(data))
            if row.tokens > max_length:
                report.problems.append(
                    Problem(
                        "too_long",
                        rec.line,
                        f"{row.tokens} tokens > max_length {max_length}; "
                        "it would be truncated (shorten it or raise --max-length)",
                    )
                )
    _find_duplicates(report)
    _find_contradictions(report)
    report.problems.sort(key=lambda p: (p.line, KINDS.index(p.kind)))
    return report


def _answers(data: dict[str, Any]) -> tuple[str, ...]:
    return ("chosen", "rejected") if "chosen" in data else ("chosen",)


def _all_messages(data: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in data:
        return [{**m, "_where": f"messages[{i}]"} for i, m in enumerate(data["messages"])]
    out = [{**m, "_where": f"prompt[{i}]"} for i, m in enumerate(data["prompt"])]
    return out + [{**data[k][0], "_where": k} for k in ("chosen", "rejected")]


def _find_duplicates(report: DataReport) -> None:
    first: dict[str, int] = {}
    for row in report.rows:
        key = _key(row.data)
        if key in first:
            report.problems.append(Problem("duplicate", row.line, f"exact duplicate of line {first[key]}"))
        else:
            first[key] = row.line


def _find_contradictions(report: DataReport) -> None:
    """SFT: one prompt, different answers. DPO: a pair preferred one way here and the other way there, or
    chosen == rejected. Exact duplicates are reported once, as duplicates."""
    duplicates = {p.line for p in report.problems if p.kind == "duplicate"}
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in report.rows:
        if row.line in duplicates:
            continue
        d = row.data
        if "messages" in d:
            groups[_key(d["messages"][:-1])].append((row.line, d["messages"][-1]["content"].strip()))
            continue
        chosen, rejected = d["chosen"][0]["content"].strip(), d["rejected"][0]["content"].strip()
        if chosen == rejected:
            report.problems.append(Problem("contradiction", row.line, "chosen and rejected are the same answer"))
        groups[_key(d["prompt"])].append((row.line, _key([chosen, rejected])))
    for entries in groups.values():
        for line, answer in entries:
            if report.method == "sft":
                others = [str(x) for x, a in entries if a != answer]
                if others:
                    message = f"same prompt as line(s) {', '.join(others)} with a different answer"
                    report.problems.append(Problem("contradiction", line, message))
                continue
            chosen, rejected = json.loads(answer)
            flipped = [str(x) for x, a in entries if a == _key([rejected, chosen]) and chosen != rejected]
            if flipped:
                message = f"line(s) {', '.join(flipped)} prefer the other answer for the same prompt"
                report.problems.append(Problem("contradiction", line, message))


def usable_rows(report: DataReport, drop_invalid: bool) -> tuple[list[Row], dict[str, int]]:
    """Rows to train on. Refuses failing data unless ``drop_invalid``; then returns drop counts per kind."""
    counts = report.counts()
    if report.ok:
        return report.rows, counts
    summary = ", ".join(f"{n} {KIND_LABELS[k]}" for k, n in counts.items() if n)
    if not drop_invalid:
        first = report.problems[0]
        raise DataError(
            f"{report.path} fails `loradock data check`: {summary} "
            f"(first: line {first.line}: {first.message}). "
            "Fix the file, or pass --drop-invalid to train on the clean rows only"
        )
    clean = report.clean_rows()
    log.warning("--drop-invalid: dropped %d of %d rows (%s)", report.total - len(clean), report.total, summary)
    return clean, counts
