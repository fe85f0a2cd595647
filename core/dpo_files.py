"""DPO rows on disk: TRL conversational JSON lines, or a Hugging Face `datasets` folder of parquet.

The parquet folder follows the Hub's layout (``data/train-00000-of-00001.parquet``), so
``datasets.load_dataset(folder)`` reads it as it is, and it can be pushed to a Hub dataset repository.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, get_args

from loradock.core.io import write_jsonl

DpoFormat = Literal["dpo-jsonl", "hf-parquet"]
FORMATS: tuple[str, ...] = get_args(DpoFormat)
PARQUET_FILE = "data/train-00000-of-00001.parquet"


def _schema() -> Any:
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema([("prompt", messages), ("chosen", messages), ("rejected", messages)])


def write_parquet_folder(rows: list[dict[str, Any]], folder: Path) -> Path:
    """Write ``rows`` as a datasets folder, replacing ``folder`` as a whole (written aside, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:  # `datasets` cannot read a parquet file without a row group
        raise ValueError(f"no pairs to write to {folder}; a datasets folder needs at least one row")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}.", dir=folder.parent))
    try:
        (tmp / PARQUET_FILE).parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp / PARQUET_FILE)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_dpo(rows: list[dict[str, Any]], out: Path, fmt: str = "dpo-jsonl") -> Path:
    """Write DPO rows in ``fmt`` (``dpo-jsonl``: one file; ``hf-parquet``: a folder); returns the path."""
    if fmt == "dpo-jsonl":
        write_jsonl(Path(out), rows)
        return Path(out)
    if fmt == "hf-parquet":
        return write_parquet_folder(rows, Path(out))
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
