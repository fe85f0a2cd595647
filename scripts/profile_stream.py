"""Where one chat stream's time per token goes, from py-spy samples of a running loradock server.

It streams one long request to ``--model`` while py-spy samples the API process and the engine-core process
(with loradock's CPU settings the model runs there too), then sorts every sample into a category by its
stack and prints milliseconds per token for each (the measured inter-token latency split by those shares).

    .venv/bin/python scripts/profile_stream.py --server http://127.0.0.1:8000 --model pirate --json split.json

py-spy must be installed (``pip install py-spy``); the server must be this machine's. Short: ~15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loradock.bench.load import percentile, run_load, server_pid

# Engine-core categories, first match wins (frames are "function (file:line)", matched by substring).
ENGINE = [
    ("LoRA: loradock kernels", ("plugin/packed.py", "plugin/ops.py", "plugin/state.py")),
    ("LoRA: step plan", ("plugin/plan.py", "patch_punica_wrapper.<locals>.update_metadata")),
    ("LoRA: vLLM layer wrappers", ("_apply_lora_to_output", "punica_wrapper", "lora/layers/")),
    ("lm_head (logits)", ("compute_logits",)),
    ("model: attention", ("Attention.forward", "unified_attention", "attention/backends")),
    ("model: matmuls", ("cpu_unquantized_gemm", "onednn_mm", "UnquantizedLinearMethod.apply")),
    ("model: norms, rotary, activation", ("RMSNorm", "rms_norm", "rotary", "Rotary", "SiluAndMul", "silu")),
    ("model: other", ("LlamaModel.forward", "LlamaDecoderLayer", "LlamaForCausalLM.forward")),
    ("sampler", ("sampler", "Sampler", "sample_tokens")),
    ("input preparation", ("_prepare_inputs", "_update_states", "prepare_inputs", "_preprocess",
                           "set_active_loras", "_set_active_loras")),
    ("scheduler", ("scheduler.py", "Scheduler.")),
    ("engine-core I/O", ("process_input_sockets", "process_output_sockets", "zmq", "msgspec", "serial_utils")),
    ("waiting for work", ("sched_yield", "Condition.wait", "queue.py", "_process_input_queue")),
]
API = [
    ("API: detokenize + output processing", ("output_processor", "detokenizer", "OutputProcessor")),
    ("API: loradock SSE + JSON", ("serve/generation.py", "serve/chat.py", "serve/engine.py", "json")),
    ("API: HTTP (uvicorn, starlette)", ("uvicorn", "h11", "starlette", "anyio")),
    ("API: engine client I/O", ("core_client", "zmq", "msgspec")),
    ("API: event loop", ("asyncio",)),
]


def categorize(raw: Path, rules: list[tuple[str, tuple[str, ...]]], other: str, root: str) -> collections.Counter:
    """Samples per category from a py-spy ``--format raw --threads`` file, of the thread whose stacks contain
    ``root`` (the engine's busy loop, the API's event loop): with ``--idle`` every tick is one sample of it,
    so shares are shares of wall time. The deepest matching frame decides the category."""
    threads: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        threads[frames[0]].append((frames[1:], int(n)))
    main = max(threads.values(), key=lambda rows: sum(n for frames, n in rows if any(root in f for f in frames)))
    counts: collections.Counter = collections.Counter()
    for frames, n in main:
        label = other
        for frame in reversed(frames):
            hit = next((name for name, keys in rules if any(k in frame for k in keys)), None)
            if hit:
                label = hit
                break
        counts[label] += n
    return counts


def _child(pid: int, name: str) -> int | None:
    import psutil

    for child in psutil.Process(pid).children(recursive=True):
        if name in child.name() or name in " ".join(child.cmdline()):
            return child.pid
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=6.0, help="sampling window (inside the stream)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    api = server_pid(args.server)
    if api is None:
        sys.exit(f"no process of this machine listens at {args.server}")
    engine = _child(api, "EngineCore")
    if engine is None:
        sys.exit("the server has no EngineCore child process")
    out = Path(tempfile.mkdtemp(prefix="profile-stream-"))
    result: dict = {}

    def stream() -> None:
        result["run"] = asyncio.run(run_load(args.server, [args.model], 1, args.tokens, args.api_key))[0]

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(1.5)  # past the prefill
    spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r", "200", "-f", "raw",
                               "--nonblocking", "--idle", "--threads", "-o", str(out / f"{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in (("api", api), ("engine", engine))]
    for p in spies:
        p.wait()
    worker.join()
    run = result["run"]
    if not run.ok or not run.itl:
        sys.exit(f"the stream failed: {run.error}")
    itl_ms = (percentile(run.itl, 50) or 0.0) * 1000
    split = {}
    for name, rules, other, root in (("engine", ENGINE, "engine: other", "run_busy_loop"),
                                     ("api", API, "API: other", "run_until_complete")):
        counts = categorize(out / f"{name}.txt", rules, other, root)
        total = sum(counts.values()) or 1
        split[name] = {k: round(itl_ms * v / total, 2) for k, v in counts.most_common()}
    report = {"model": args.model, "itl_p50_ms": round(itl_ms, 2),
              "decode_tok_s": round(len(run.itl) / sum(run.itl), 1), "ms_per_token": split}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
