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

# Categories in priority order: a sample goes to the first category any frame of its stack matches (frames are
# "function (file:line)", matched by substring); IDLE leaves (a thread waiting) go to the idle category first.
ENGINE = [
    ("LoRA: loradock kernels", ("plugin/packed.py", "plugin/ops.py", "plugin/state.py")),
    ("LoRA: step plan", ("plugin/plan.py", "patch_punica_wrapper.<locals>.update_metadata")),
    ("lm_head (logits)", ("compute_logits",)),
    ("sampler", ("sampler", "Sampler", "sample_tokens")),
    ("model: matmuls", ("cpu_unquantized_gemm", "onednn_mm", "UnquantizedLinearMethod.apply")),
    ("model: attention", ("Attention.forward", "unified_attention", "attention/backends")),
    ("model: norms, rotary, activation", ("RMSNorm", "rms_norm", "rotary", "Rotary", "SiluAndMul", "silu")),
    ("LoRA: vLLM layer wrappers", ("_apply_lora_to_output", "punica_wrapper", "lora/layers/")),
    ("model: other", ("LlamaModel.forward", "LlamaDecoderLayer", "LlamaForCausalLM.forward")),
    ("input preparation", ("_prepare_inputs", "_update_states", "prepare_inputs", "_preprocess",
                           "set_active_loras", "_set_active_loras", "lora_model_runner_mixin")),
    ("scheduler", ("scheduler.py", "Scheduler.")),
    ("engine-core output and I/O", ("process_input_sockets", "process_output_sockets", "zmq", "msgspec",
                                    "serial_utils", "EngineCoreOutputs", "put_nowait")),
]
API = [
    ("API: detokenize + output processing", ("output_processor", "detokenizer", "OutputProcessor")),
    ("API: loradock SSE + JSON", ("serve/generation.py", "serve/chat.py", "serve/engine.py")),
    ("API: HTTP (uvicorn, starlette)", ("uvicorn/protocols", "h11", "starlette", "anyio")),
    ("API: engine client I/O", ("core_client", "zmq", "msgspec")),
]
IDLE = ("Condition.wait", "queue.py", "Poller.poll", "select (", "poll (", "sched_yield", "Runner.run (")


def categorize(raw: Path, rules: list[tuple[str, tuple[str, ...]]], idle: str, other: str) -> collections.Counter:
    """Samples per category of the main thread in a py-spy ``--format raw --threads --idle`` file: with
    ``--idle`` every tick is one sample of that thread, so shares are shares of wall time."""
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0]:
            continue
        frames = frames[1:]
        if not frames or any(k in frames[-1] for k in IDLE):  # a bare thread line: not running Python
            label = idle
        else:
            label = next((name for name, keys in rules if any(k in f for f in frames for k in keys)), other)
        counts[label] += int(n)
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
    ap.add_argument("--seconds", type=int, default=6, help="sampling window (inside the stream)")
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
    spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(round(args.seconds)), "-r", "200", "-f", "raw",
                               "--nonblocking", "--idle", "--threads", "-o", str(out / f"{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, pid in (("api", api), ("engine", engine))]
    for p in spies:
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"py-spy failed: {err.strip()[-500:]}")
    worker.join()
    run = result["run"]
    if not run.ok or not run.itl:
        sys.exit(f"the stream failed: {run.error}")
    itl_ms = (percentile(run.itl, 50) or 0.0) * 1000
    split = {}
    for name, rules, idle, other in (
            ("engine", ENGINE, "engine: waiting for work", "engine: other"),
            ("api", API, "API: idle (or inside uvloop's native loop)", "API: other")):
        counts = categorize(out / f"{name}.txt", rules, idle, other)
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
