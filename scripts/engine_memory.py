"""Engine memory under varied batch shapes, in one process: does the engine's RSS stay flat?

Runs vLLM (with loradock's plugin and engine arguments) in this process and sends batches of 16 greedy
requests whose prompt lengths and adapters vary, while adapters are added and removed (``--churn``). It
prints RSS every ``--every`` batches. Run it twice to compare oneDNN primitive cache sizes:

    flock /tmp/loradock-engine.lock .venv/bin/python scripts/engine_memory.py --cache 64
    flock /tmp/loradock-engine.lock .venv/bin/python scripts/engine_memory.py --cache 1024   # oneDNN's default
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=int, default=None, help="ONEDNN_PRIMITIVE_CACHE_CAPACITY (default: "
                    "loradock's onednn_primitive_cache setting)")
    ap.add_argument("--batches", type=int, default=150, help="batches of 16 requests to send")
    ap.add_argument("--every", type=int, default=25, help="print RSS every this many batches")
    ap.add_argument("--no-churn", dest="churn", action="store_false", help="keep the same 4 adapters loaded")
    args = ap.parse_args()

    from loradock.core.engine_args import engine_env, engine_kwargs
    from loradock.core.settings import load_settings

    settings = load_settings()
    env = engine_env(settings)
    if args.cache is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(args.cache)
    os.environ.update(env, VLLM_ENABLE_V1_MULTIPROCESSING="0")  # read by oneDNN and vLLM when they start

    import psutil
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from loradock.core.base_model import load_base_info
    from loradock.core.store import AdapterStore
    from loradock.core.synthetic import make_synthetic_adapters

    work = Path(tempfile.mkdtemp(prefix="loradock-engine-memory-"))
    sources = make_synthetic_adapters(AdapterStore(work / "store"), load_base_info(settings.base_model),
                                      [f"w{i}" for i in range(4)])
    kwargs = engine_kwargs(settings, enable_lora=True)
    kwargs.pop("distributed_executor_backend", None)  # LLM runs the model in this process anyway
    llm = LLM(**kwargs)
    rng, proc, params = random.Random(0), psutil.Process(), SamplingParams(max_tokens=16, temperature=0)

    def load(i: int) -> LoRARequest:
        path = work / "versions" / f"v{i}"
        shutil.copytree(rng.choice(sources), path)
        request = LoRARequest(f"a{i}", 1000 + i, str(path))
        llm.llm_engine.add_lora(request)
        return request

    live = [load(i) for i in range(4)]
    start, t0 = proc.memory_info().rss >> 20, time.monotonic()
    print(f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={env['ONEDNN_PRIMITIVE_CACHE_CAPACITY']} churn={args.churn}")
    print(f"batch 0: rss {start} MiB")
    for i in range(4, 4 + args.batches):
        if args.churn:
            old = live.pop(0)
            llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path)
            live.append(load(i))
        requests = [rng.choice([*live, None]) for _ in range(16)]
        prompts = ["Write one sentence about the sea." + " more" * rng.randrange(20) for _ in requests]
        llm.generate(prompts, params, lora_request=requests, use_tqdm=False)
        if (i - 3) % args.every == 0:
            rss = proc.memory_info().rss >> 20
            print(f"batch {i - 3}: rss {rss} MiB ({rss - start:+d}), {time.monotonic() - t0:.0f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
