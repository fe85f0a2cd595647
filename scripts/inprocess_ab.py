"""In-process A/B comparisons behind docs/performance.md, each alternated inside one engine (or one engine
per variant, started in turn) so that a shared host's drift hits both sides alike.

Runs vLLM with loradock's plugin and engine arguments in this process (no HTTP), under the engine lock:

    flock /tmp/loradock-engine.lock .venv/bin/python scripts/inprocess_ab.py forward
    flock /tmp/loradock-engine.lock .venv/bin/python scripts/inprocess_ab.py delta
    flock /tmp/loradock-engine.lock .venv/bin/python scripts/inprocess_ab.py compile --pairs 2 --rounds 3

- ``forward``: vLLM's LoRA linear forward against loradock's lean one, switched in one engine (and the tokens
  of both checked equal);
- ``delta``: one stream's model time per step for the base, the all-linear ``concise`` adapter, and ``concise``
  with its LoRA matmuls skipped;
- ``compile``: eager (``enforce_eager``) against compiled (loradock's default: vLLM's CPU compilation with
  loradock's LoRA ops in the graph), one engine process each, alternated: one stream of the base, ``concise``
  and ``pirate``, 32 base streams, 32 streams over four adapters, and how many greedy tokens agree
  (``--no-lora``: the base on a LoRA-disabled engine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

PROMPT = "Write one sentence about the sea."


def _engine(enable_lora: bool, eager: bool = True, engine_process: bool = False, **overrides: Any) -> Any:
    """An engine with loradock's arguments, in this process (or, ``engine_process``, vLLM's engine core in its
    own process as the server runs it); eager by default (a compiled graph would ignore the forwards the
    comparisons switch)."""
    from loradock.core.engine_args import cpu_compilation, engine_env, engine_kwargs
    from loradock.core.settings import load_settings

    settings = load_settings()
    os.environ.update(engine_env(settings), VLLM_ENABLE_V1_MULTIPROCESSING="1" if engine_process else "0",
                      LORADOCK_COMPILE="false" if eager else "true")
    from vllm import LLM

    kwargs = engine_kwargs(settings, enable_lora=enable_lora, compilation_config=cpu_compilation(eager), **overrides)
    if not engine_process:
        kwargs.pop("distributed_executor_backend", None)  # one process: vLLM's default in-process executor
    return LLM(**kwargs)


def _run(llm: Any, prompts: list[str], tokens: int, lora: Any = None) -> tuple[float, list[list[int]]]:
    """Output tokens/s of one generate call, and the tokens."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    out = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in out) / (time.perf_counter() - start), \
        [list(o.outputs[0].token_ids) for o in out]


def _adapter(name: str, lora_id: int) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, f"adapters/{name}")


def forward(rounds: int) -> None:
    """vLLM's LoRA linear forward against loradock's lean one (plugin/forward.py), switched in one engine."""
    from vllm.lora.layers import column_parallel_linear, replicated_linear, row_parallel_linear

    llm = _engine(True)
    classes = [column_parallel_linear.ColumnParallelLinearWithLoRA, row_parallel_linear.RowParallelLinearWithLoRA,
               replicated_linear.ReplicatedLinearWithLoRA]
    lean = {cls: cls.__dict__["forward"] for cls in classes}
    variants = {"vllm": {cls: f.__wrapped__ for cls, f in lean.items()}, "loradock": lean}
    pirate = _adapter("pirate", 1)
    cases = {"1 base stream": ([PROMPT], 96, None), "1 pirate stream": ([PROMPT], 96, pirate),
             "32 base streams": ([PROMPT] * 32, 48, None)}
    best: dict[tuple[str, str], float] = {}
    tokens: dict[str, list[list[int]]] = {}
    for case in cases.values():
        _run(llm, *case)
    for r in range(rounds):
        for name in (("vllm", "loradock") if r % 2 == 0 else ("loradock", "vllm")):
            for cls, fn in variants[name].items():
                cls.forward = fn
            for case, args in cases.items():
                tps, ids = _run(llm, *args)
                best[(name, case)] = max(best.get((name, case), 0.0), tps)
                if tokens.setdefault(case, ids) != ids:
                    sys.exit(f"{case}: the two forwards produced different tokens")
    for case in cases:
        old, new = best[("vllm", case)], best[("loradock", case)]
        print(f"{case:16s} vLLM's forward {old:7.1f} tok/s  loradock's {new:7.1f}  ratio {new / old:.3f}")


def delta(rounds: int) -> None:
    """Per-step model time (p50) of one stream: base, `concise`, and `concise` with its LoRA matmuls skipped."""
    from loradock.plugin import forward as lean_forward
    from loradock.plugin import packed

    llm = _engine(True)
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    times: list[float] = []
    model_forward = type(model).forward

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = model_forward(self, *args, **kwargs)
        times.append(time.perf_counter() - start)
        return out

    type(model).forward = timed

    class Skipped:
        @staticmethod
        def lora_linear(*args: Any, **kwargs: Any) -> None:
            return None

    concise = _adapter("concise", 1)
    variants = [("base", None, packed), ("concise", concise, packed), ("concise, matmuls skipped", concise, Skipped)]
    best: dict[str, float] = {}
    for _, lora, _ in variants:
        _run(llm, [PROMPT], 16, lora)
    for r in range(rounds):
        for name, lora, impl in (variants if r % 2 else variants[::-1]):
            lean_forward.packed = impl  # type: ignore[assignment]
            times.clear()
            _run(llm, [PROMPT], 192, lora)
            p50 = sorted(times)[len(times) // 2] * 1000
            best[name] = min(best.get(name, p50), p50)
    lean_forward.packed = packed
    for name, ms in best.items():
        print(f"{name:26s} model forward p50 {ms:.2f} ms per step (best of {rounds})")


def compile_ab(pairs: int, rounds: int, lora: bool, mode: int | None, engine_process: bool = False) -> None:
    """Eager against compiled (loradock's default: vLLM's CPU compilation with the LoRA ops in the graph), one
    engine process per side, started in turn ``pairs`` times; the greedy tokens of the last pair compared."""
    if mode is None:
        runs: dict[int, list[dict[str, Any]]] = {0: [], 3: []}
        for _ in range(pairs):
            for m in (0, 3):
                out = subprocess.run([sys.executable, __file__, "compile", "--mode", str(m), "--rounds",
                                      str(rounds), *([] if lora else ["--no-lora"]),
                                      *(["--engine-process"] if engine_process else [])],
                                     check=True, capture_output=True, text=True).stdout
                runs[m].append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
        for name in runs[0][0]["tok_s"]:
            eager, compiled = ([r["tok_s"][name] for r in runs[m]] for m in (0, 3))
            a, b = runs[0][-1]["tokens"][name], runs[3][-1]["tokens"][name]
            same = sum(p == q for p, q in zip(a, b, strict=True))
            print(f"{name:10s} eager {' / '.join(f'{t:.1f}' for t in eager)} tok/s, compiled "
                  f"{' / '.join(f'{t:.1f}' for t in compiled)}; {same} of {len(a)} greedy tokens equal")
        print("start-up   eager " + " / ".join(f"{r['start_s']:.0f}" for r in runs[0]) + " s, compiled "
              + " / ".join(f"{r['start_s']:.0f}" for r in runs[3]) + " s")
        return
    start = time.perf_counter()
    llm = _engine(lora, eager=mode == 0, engine_process=engine_process)
    up = time.perf_counter() - start
    prompts = [f"{PROMPT} ({i})" for i in range(32)]
    cases: dict[str, tuple[list[str], int, Any]] = {"base": ([PROMPT], 128, None), "base x32": (prompts, 48, None)}
    if lora:
        adapters = [_adapter(n, i + 1) for i, n in enumerate(("concise", "pirate", "json-answer", "zephyr-faq"))]
        cases.update({"concise": ([PROMPT], 128, adapters[0]), "pirate": ([PROMPT], 128, adapters[1]),
                      "mixed x32": (prompts, 48, [adapters[i % 4] for i in range(32)])})
    for batch, _, adapter in cases.values():
        _run(llm, batch, 16, adapter)
    best: dict[str, float] = {}
    tokens: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, args in cases.items():
            tps, ids = _run(llm, *args)
            best[name], tokens[name] = max(best.get(name, 0.0), tps), [t for seq in ids for t in seq]
    print("RESULT " + json.dumps({"start_s": up, "tok_s": best, "tokens": tokens}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("comparison", choices=("forward", "delta", "compile"))
    ap.add_argument("--rounds", type=int, default=4, help="alternations (best of each side is kept)")
    ap.add_argument("--pairs", type=int, default=2, help="compile: eager/compiled engines started in turn")
    ap.add_argument("--no-lora", action="store_true", help="compile: LoRA disabled (the base only)")
    ap.add_argument("--engine-process", action="store_true",
                    help="compile: vLLM's engine core in its own process, as `loradock serve` runs it")
    ap.add_argument("--mode", type=int, choices=(0, 3), help=argparse.SUPPRESS)  # one side, in a subprocess
    args = ap.parse_args()
    if args.comparison == "compile":
        compile_ab(args.pairs, args.rounds, not args.no_lora, args.mode, args.engine_process)
    else:
        {"forward": forward, "delta": delta}[args.comparison](args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
