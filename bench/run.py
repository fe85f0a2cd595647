"""`loradock bench`: drive a running loradock server over HTTP and compare it with the alternatives.

One run measures, side by side on this machine, and writes ``--json`` plus a PNG chart:

- ``base``, ``mixed`` (K adapters): the loradock server under test, interleaved ``--rounds`` times
  (each scenario keeps its best round, since other work may share the CPU);
- ``single_stream``: one stream at a time, base and an adapter (decode tokens/s, inter-token latency p50);
- ``cold_adapter``: TTFT of the first request to an adapter published moments before (not resident);
- ``adapters_1`` / ``adapters_64``: the same load on one adapter, and rotating over 64 distinct ones;
- ``base_nolora``: a second loradock server, same settings, LoRA disabled (what LoRA support costs);
- ``vllm_server``: stock vLLM's own OpenAI server at its defaults; ``vllm_server_plugin``: the same server
  with loradock's kernels and engine arguments (both with the same adapters and capacity settings);
- ``naive_peft`` / ``peft_batched``: transformers + PEFT servers (one request at a time / one adapter's
  requests batched together).

The second servers run one at a time, each interleaved with the server under test (see
:mod:`loradock.bench.scenarios`). Every adapter the run publishes is removed again on every exit path.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from loradock.bench import scenarios as sc
from loradock.core.engine_args import engine_kwargs

log = logging.getLogger(__name__)

ALL_SCENARIOS = ("base", "mixed", "single_stream", "cold_adapter", "adapters_64", "base_nolora", "vllm_server",
                 "vllm_server_plugin", "peft_batched", "naive_peft")


@dataclass
class BenchConfig:
    """Everything one benchmark run needs (the CLI options, resolved)."""

    server: str
    api_key: str | None
    server_pid: int | None
    concurrency: int
    requests: int
    max_tokens: int
    adapters: int
    popularity: str
    adapters_dir: Path
    make_adapters: bool
    scenarios: list[str]
    rounds: int
    naive_requests: int
    cold_samples: int
    rotation: int
    json_path: Path
    chart_path: Path
    config: Path | None = None
    single_tokens: int = 128

    def __post_init__(self) -> None:
        for flag, value in (
            ("--concurrency", self.concurrency),
            ("--requests", self.requests),
            ("--max-tokens", self.max_tokens),
            ("--adapters", self.adapters),
            ("--rounds", self.rounds),
            ("--single-tokens", self.single_tokens),
        ):
            if value <= 0:
                raise ValueError(f"{flag} must be positive")
        unknown = sorted(set(self.scenarios) - set(ALL_SCENARIOS))
        if unknown:
            raise ValueError(f"--scenarios: unknown {', '.join(unknown)}; choose from {', '.join(ALL_SCENARIOS)}")


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit (like Ctrl-C raises KeyboardInterrupt), so cleanup in ``finally`` runs."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _pick_adapters(cfg: BenchConfig, main: sc.Target, base: str, listed: list[dict],
                   ledger: Any) -> list[str]:
    """K adapter names for the mixed load: the served ones found in the store first; when there are fewer
    than K (``make demo`` ships four), synthetic rank-8 ones top the set up for this run only (recorded in
    ``ledger``). ``--make-adapters`` uses synthetic ones throughout and keeps them."""
    from loradock.bench.adapters import SYNTHETIC_PREFIX, make_bench_adapters
    from loradock.core.settings import load_settings

    settings = load_settings(cfg.config)
    if cfg.make_adapters:
        names = make_bench_adapters(cfg.adapters_dir, settings.base_model, cfg.adapters)
        sc.wait_for_models(main, names)
        return names
    served = sorted(
        m["id"]
        for m in listed
        if m.get("parent") == base and (cfg.adapters_dir / m["id"]).is_dir()
        and not m["id"].startswith(SYNTHETIC_PREFIX)
    )[: cfg.adapters]
    if len(served) == cfg.adapters:
        return served
    synthetic = make_bench_adapters(cfg.adapters_dir, settings.base_model, cfg.adapters - len(served), ledger)
    log.info("the server serves %d adapters from %s; topping up with synthetic %s", len(served), cfg.adapters_dir,
             ", ".join(synthetic))
    sc.wait_for_models(main, synthetic, timeout_s=30)
    return served + synthetic


def run_bench(cfg: BenchConfig) -> dict:
    """Run the selected scenarios; return the result (also written to ``cfg.json_path`` with a chart)."""
    from loradock.bench.adapters import Published, check_store
    from loradock.bench.load import server_pid

    main = sc.Target(cfg.server, cfg.api_key, cfg.server_pid or server_pid(cfg.server))
    listed = sc.listed_models(main)
    base = next((m["id"] for m in listed if not m.get("parent")), None)
    if base is None:
        raise RuntimeError(f"{cfg.server}/v1/models lists no base model")
    ledger = Published(cfg.adapters_dir)
    with _sigterm_unwinds():
        try:
            adapters: list[str] = []
            if set(cfg.scenarios) - {"base", "base_nolora"}:
                check_store(cfg.adapters_dir, [m["id"] for m in listed if m.get("parent")], cfg.server)
                adapters = _pick_adapters(cfg, main, base, listed, ledger)
            return _run_scenarios(cfg, main, base, adapters, ledger)
        finally:
            ledger.remove_all()


def _setup(cfg: BenchConfig, main: sc.Target, base: str, adapters: list[str], engine: Any) -> dict[str, Any]:
    import psutil

    return {
        "setup": {
            **{k: v for k, v in asdict(cfg).items() if not isinstance(v, Path)},
            "adapters_dir": str(cfg.adapters_dir),
            "adapter_names": adapters,
            "base": base,
            "server_pid": main.pid,
            "engine": {k: str(v) for k, v in engine_kwargs(engine).items()},
        },
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "mem_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "mem_available_gib_at_start": round(psutil.virtual_memory().available / 2**30, 1),
            "load_avg_at_start": list(os.getloadavg()),
        },
        "scenarios": {},
    }


def _run_scenarios(cfg: BenchConfig, main: sc.Target, base: str, adapters: list[str], ledger: Any) -> dict:
    from loradock.bench import report as bench_report
    from loradock.bench.load import choose_models
    from loradock.core.settings import load_settings

    want = set(cfg.scenarios)
    mixed = choose_models(adapters, cfg.requests, cfg.popularity) if adapters else []
    engine = load_settings(cfg.config, base_model_name=base)
    result = _setup(cfg, main, base, adapters, engine)
    scenarios = result["scenarios"]
    loads = {k: (main, v) for k, v in (("base", [base] * cfg.requests), ("mixed", mixed)) if k in want and v}
    if loads:
        sc.warm(main, [base, *adapters])
        scenarios.update(sc.best_of(cfg.rounds, loads, cfg.concurrency, cfg.max_tokens))
    if "single_stream" in want:
        streams = {"base": (main, base), **({"adapter": (main, adapters[0])} if adapters else {})}
        scenarios["single_stream"] = sc.single_streams(max(cfg.rounds, 3), streams, cfg.single_tokens)
    if "cold_adapter" in want and adapters:
        scenarios["cold_adapter"] = sc.cold_adapter(main, ledger, adapters[0], cfg.cold_samples)
    if "adapters_64" in want and adapters:
        scenarios.update(sc.rotation(main, ledger, adapters[0], cfg.rotation, cfg.requests, cfg.concurrency,
                                     cfg.max_tokens))
    for kind in ("base_nolora", "vllm_server", "vllm_server_plugin", "peft_batched", "naive_peft"):
        if kind in want:
            try:
                scenarios[kind] = _baseline(cfg, kind, main, engine, base, adapters, mixed)
            except RuntimeError as e:  # a baseline that cannot start is reported, the rest still runs
                log.error("%s: %s", kind, e)
                scenarios[kind] = {"error": str(e)[:2000]}
    result.update(bench_report.ratios(scenarios))
    result["targets"] = bench_report.verdicts(result)
    cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.json_path.write_text(json.dumps(result, indent=2) + "\n")
    bench_report.write_chart(result, cfg.chart_path)
    return result


def _baseline(cfg: BenchConfig, kind: str, main: sc.Target, engine: Any, base: str, adapters: list[str],
              mixed: list[str]) -> dict:
    import tempfile

    from loradock.bench import baselines as bl
    from loradock.bench.load import measure

    dirs = {name: (cfg.adapters_dir / name).resolve() for name in adapters}
    logs = cfg.json_path.parent / f"{cfg.json_path.stem}-logs"
    if kind in ("base_nolora", "vllm_server", "vllm_server_plugin"):
        loads = {"base": ([base] * cfg.requests, [base] * cfg.requests)}
        if kind == "base_nolora":
            work = Path(tempfile.mkdtemp(prefix="loradock-bench-nolora-"))
            server = bl.loradock_nolora({}, work, logs / "base_nolora.log")
        else:
            loads["mixed"] = (mixed, mixed)
            server = (bl.vllm_server if kind == "vllm_server" else bl.vllm_server_plugin)(engine, dirs,
                                                                                         logs / f"{kind}.log")
        with server as (url, pid):
            target = sc.Target(url, None, pid)
            sc.warm(target, [base, *adapters] if kind != "base_nolora" else [base])
            out: dict[str, Any] = sc.paired(cfg.rounds, kind, target, main, loads, cfg.concurrency, cfg.max_tokens)
            streams = {kind: (target, base), "loradock": (main, base)}
            out["single_stream"] = sc.single_streams(max(cfg.rounds, 3), streams, cfg.single_tokens)
        return out
    server = bl.peft_server("naive" if kind == "naive_peft" else "batched", engine, dirs, logs / f"{kind}.log")
    load = mixed[: cfg.naive_requests] if kind == "naive_peft" else mixed
    with server as (url, pid):
        sc.warm(sc.Target(url), adapters)
        return measure(url, load, cfg.concurrency, cfg.max_tokens, None, pid).as_dict()


def bench_cmd(
    server: str = typer.Option("http://127.0.0.1:8000", help="URL of the running loradock server."),
    api_key: str = typer.Option(None, envvar="LORADOCK_API_KEY", help="Bearer key of that server, if set."),
    server_pid: int = typer.Option(None, help="Server pid for peak RSS (default: whoever listens on the port)."),
    concurrency: int = typer.Option(32, help="Requests in flight at once."),
    requests: int = typer.Option(64, help="Requests per scenario."),
    max_tokens: int = typer.Option(64, help="Output tokens per request (sent with ignore_eos)."),
    single_tokens: int = typer.Option(128, help="Output tokens of each single_stream request."),
    adapters: int = typer.Option(8, help="Distinct adapters in the mixed load (K)."),
    popularity: str = typer.Option("uniform", help="How requests spread over the adapters: uniform | zipf."),
    adapters_dir: Path = typer.Option(Path("adapters"), help="The server's adapter store (copies go there)."),
    make_adapters: bool = typer.Option(False, help="Create K synthetic rank-8 adapters bench-NN in the store."),
    scenarios: str = typer.Option(",".join(ALL_SCENARIOS), help="Comma-separated scenarios to run."),
    rounds: int = typer.Option(3, help="Interleaved rounds of each load; each keeps its best."),
    quick: bool = typer.Option(False, help="Smaller run (32 requests x 32 tokens, 2 rounds): under 10 minutes."),
    config: Path = typer.Option(None, help="loradock YAML settings (engine settings for the baselines)."),
    json_path: Path = typer.Option(Path("bench.json"), "--json", help="Where to write the results."),
    chart: Path = typer.Option(None, help="PNG chart path (default: next to --json)."),
) -> None:
    """Benchmark a running loradock server against base-only, vLLM's server and transformers + PEFT."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress
    if quick:
        requests, max_tokens, rounds = min(requests, 32), min(max_tokens, 32), min(rounds, 2)
    cfg = BenchConfig(
        server=server.rstrip("/"),
        api_key=api_key,
        server_pid=server_pid,
        concurrency=concurrency,
        requests=requests,
        max_tokens=max_tokens,
        adapters=adapters,
        popularity=popularity,
        adapters_dir=adapters_dir,
        make_adapters=make_adapters,
        scenarios=[s.strip() for s in scenarios.split(",") if s.strip()],
        rounds=rounds,
        naive_requests=4 if quick else 8,
        cold_samples=3 if quick else 5,
        rotation=64,
        json_path=json_path,
        chart_path=chart or json_path.with_suffix(".png"),
        config=config,
        single_tokens=single_tokens,
    )
    from loradock.bench.report import print_table

    print_table(run_bench(cfg), json_path)
