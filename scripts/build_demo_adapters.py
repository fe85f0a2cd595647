"""Rebuild the demo adapters in adapters/ from the shipped recipes and data (seeded, reproducible).

    .venv/bin/python scripts/build_demo_adapters.py                 # all of them
    .venv/bin/python scripts/build_demo_adapters.py pirate concise  # some of them

Each adapter is trained by the same code path as `loradock train sft|dpo --recipe NAME`, published
atomically with its manifest and loss curve, and validated like the server validates it. The data comes from
scripts/make_demo_data.py (already committed under data/).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# adapter name -> (method, shipped recipe)
DEMOS = {
    "json-answer": ("sft", "json-answer"),
    "pirate": ("sft", "pirate"),
    "zephyr-faq": ("sft", "zephyr-faq"),
    "concise": ("dpo", "concise"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"Adapters to build: {', '.join(DEMOS)} (default: all).")
    parser.add_argument("--adapters-dir", default=str(REPO / "adapters"), help="Store to publish into.")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(DEMOS))
    if unknown:
        parser.error(f"unknown demo adapter(s) {unknown}; choose from {', '.join(DEMOS)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.chdir(REPO)  # recipes name their data relative to the repository root

    from loradock.train.config import build_config
    from loradock.train.dpo import run_dpo
    from loradock.train.sft import run_sft

    for name in args.names or list(DEMOS):
        method, recipe = DEMOS[name]
        cfg = build_config(method, recipe, {"name": name, "adapters_dir": args.adapters_dir, "overwrite": True})
        start = time.monotonic()
        path = (run_sft if method == "sft" else run_dpo)(cfg)
        print(f"built {name} ({method}) in {time.monotonic() - start:.0f} s -> {path}")


if __name__ == "__main__":
    main()
