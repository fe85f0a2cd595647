"""`loradock bench`: drive a running loradock server over HTTP and compare it with the alternatives.

One run measures, side by side on this machine, and writes ``--json`` plus a PNG chart:

- ``base``, ``mixed`` (K adapters): the loradock server under test, interleaved ``--rounds`` times
  (each scenario keeps its best round, since other work may share the CPU);
- ``vllm_server``: vLLM's own OpenAI server, stock LoRA ops, same adapters, settings and load;
- ``naive_peft`` / ``peft_batched``: transformers + PEFT servers (one request at a time / one adapter's
  requests batched together), same adapters and load;
- ``cold_adapter``: TTFT of the first request to an adapter published moments before (not resident);
- ``adapters_1`` / ``adapters_64``: the same load on one adapter, and rotating over 64 distinct ones.

The baselines run one at a time while the loradock server idles; vLLM's server is a second engine next to
it for a minute or two (about 2.5 GiB RSS each here; see docs/performance.md).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from loradock.core.engine_args import engine_kwargs

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        for flag, value in (
            ("--concurrency", self.concurrency),
            ("--requests", self.requests),
            ("--max-tokens", self.max_tokens),
            ("--adapters", self.adapters),
            ("--rounds", self.rounds),
        ):
            if value <= 0:
                raise ValueError(f"{flag} must be positive")
        unknown = sorted(set(self.scenarios) - set(ALL_SCENARIOS))
        if unknown:
            raise ValueError(f"--scenarios: unknown {', '.join(unknown)}; choose from {', '.join(ALL_SCENARIOS)}")


ALL_SCENARIOS = ("base", "mixed", "cold_adapter", "adapters_64", "vllm_server", "peft_batched", "naive_peft")


def _models(url: str, api_key: str | None) -> list[dict]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()["data"]


def wait_for_models(url: str, api_key: str | None, names: list[str], timeout_s: float = 60) -> None:
    """Wait until the server lists every name (it picks up new store folders within a poll interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = set(names) - {m["id"] for m in _models(url, api_key)}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the server at {url} does not list {sorted(missing)[:5]} after {timeout_s:.0f} s: is "
                "--adapters-dir the store that server watches?"
            )
        time.sleep(0.5)


def _pick_adapters(cfg: BenchConfig, base: str, listed: list[dict]) -> tuple[list[str], list[str]]:
    """(K adapter names for the mixed load, the synthetic ones this run created and must remove).

    The served adapters found in the store come first; when there are fewer than K (``make demo`` ships four),
    synthetic rank-8 ones top the set up for this run only. ``--make-adapters`` uses synthetic ones throughout
    and keeps them.
    """
    from loradock.bench.adapters import SYNTHETIC_PREFIX, make_bench_adapters
    from loradock.core.settings import load_settings

    settings = load_settings(cfg.config)
    if cfg.make_adapters:
        names = make_bench_adapters(cfg.adapters_dir, settings.base_model, cfg.adapters)
        wait_for_models(cfg.server, cfg.api_key, names)
        return names, []
    served = sorted(
        m["id"]
        for m in listed
        if m.get("parent") == base
        and (cfg.adapters_dir / m["id"]).is_dir()
        and not m["id"].startswith(SYNTHETIC_PREFIX)
    )[: cfg.adapters]
    if len(served) == cfg.adapters:
        return served, []
    existing = {m["id"] for m in listed}
    synthetic = make_bench_adapters(cfg.adapters_dir, settings.base_model, cfg.adapters - len(served))
    created = [n for n in synthetic if n not in existing]
    log.info(
        "the server serves %d adapters from %s; topping up with synthetic %s",
        len(served),
        cfg.adapters_dir,
        ", ".join(synthetic),
    )
    wait_for_models(cfg.server, cfg.api_key, synthetic)
    return served + synthetic, created


def _engine_settings(cfg: BenchConfig, base: str) -> Any:
    """The server's settings, which the vLLM baseline's engine arguments are built from."""
    from loradock.core.settings import load_settings

    return load_settings(cfg.config, base_model_name=base)


def _warm(url: str, models: list[str], api_key: str | None) -> None:
    from loradock.bench.load import measure

    measure(url, list(dict.fromkeys(models)), 8, 2, api_key)


def _best_of(cfg: BenchConfig, pid: int | None, loads: dict[str, list[str]]) -> dict[str, dict]:
    """Run the loads interleaved ``cfg.rounds`` times; keep each one's round with the best throughput."""
    from loradock.bench.load import measure

    best: dict[str, dict] = {}
    for r in range(cfg.rounds):
        for name, models in loads.items():
            stats = measure(cfg.server, models, cfg.concurrency, cfg.max_tokens, cfg.api_key, pid).as_dict()
            log.info("%s round %d: %.1f tokens/s", name, r + 1, stats["tokens_per_s"])
            if name not in best or stats["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = stats
    return best


def _cold(cfg: BenchConfig, source: str) -> dict:
    """Publish fresh copies of ``source`` and time each one's first request (its hot load)."""
    from loradock.bench.adapters import publish_copies, remove_adapters
    from loradock.bench.load import measure, percentile

    tag = uuid.uuid4().hex[:6]
    names = [f"bench-cold-{tag}-{i}" for i in range(cfg.cold_samples)]
    ttfts = []
    try:
        for name in names:
            publish_copies(cfg.adapters_dir, source, [name])
            wait_for_models(cfg.server, cfg.api_key, [name])
            stats = measure(cfg.server, [name], 1, 8, cfg.api_key)
            if stats.ttft_p50_ms is not None:
                ttfts.append(stats.ttft_p50_ms)
        warm = measure(cfg.server, [names[0]] * 3, 1, 8, cfg.api_key).ttft_p50_ms
    finally:
        remove_adapters(cfg.adapters_dir, names)
    return {"samples_ms": ttfts, "ttft_p50_ms": percentile(ttfts, 50), "warm_ttft_p50_ms": warm}


def _rotation(cfg: BenchConfig, source: str, pid: int | None) -> dict[str, dict]:
    """The same load on one adapter, then rotating over ``cfg.rotation`` distinct copies."""
    from loradock.bench.adapters import publish_copies, remove_adapters
    from loradock.bench.load import measure

    names = [f"bench-rot-{i:02d}" for i in range(cfg.rotation)]
    n = max(cfg.requests, cfg.rotation)
    try:
        publish_copies(cfg.adapters_dir, source, names)
        wait_for_models(cfg.server, cfg.api_key, names)
        # Steady state: every adapter is loaded once first (that hot-load cost is what cold_adapter measures;
        # the time of this first pass is kept as first_pass_s), then the same load runs on 1 and on 64.
        started = time.monotonic()
        _warm(cfg.server, names, cfg.api_key)
        first_pass_s = round(time.monotonic() - started, 2)
        one = measure(cfg.server, [names[0]] * n, cfg.concurrency, cfg.max_tokens, cfg.api_key, pid)
        many = measure(
            cfg.server, [names[i % len(names)] for i in range(n)], cfg.concurrency, cfg.max_tokens, cfg.api_key, pid
        )
    finally:
        remove_adapters(cfg.adapters_dir, names)
    return {"adapters_1": one.as_dict(), f"adapters_{cfg.rotation}": {**many.as_dict(), "first_pass_s": first_pass_s}}


def _baseline(cfg: BenchConfig, kind: str, engine: Any, adapters: list[str], mixed: list[str]) -> dict:
    from loradock.bench import baselines as bl
    from loradock.bench.load import measure

    dirs = {name: (cfg.adapters_dir / name).resolve() for name in adapters}
    logs = cfg.json_path.parent / f"{cfg.json_path.stem}-logs"
    if kind == "vllm_server":
        server = bl.vllm_server(engine, dirs, logs / "vllm_server.log")
        load = mixed
    else:
        server = bl.peft_server("naive" if kind == "naive_peft" else "batched", engine, dirs, logs / f"{kind}.log")
        load = mixed[: cfg.naive_requests] if kind == "naive_peft" else mixed
    with server as (url, pid):
        _warm(url, adapters, None)
        return measure(url, load, cfg.concurrency, cfg.max_tokens, None, pid).as_dict()


def run_bench(cfg: BenchConfig) -> dict:
    """Run the selected scenarios; return the result (also written to ``cfg.json_path`` with a chart)."""

    from loradock.bench.load import server_pid

    listed = _models(cfg.server, cfg.api_key)
    base = next((m["id"] for m in listed if not m.get("parent")), None)
    if base is None:
        raise RuntimeError(f"{cfg.server}/v1/models lists no base model")
    pid = cfg.server_pid or server_pid(cfg.server)
    want = set(cfg.scenarios)
    needs_adapters = want - {"base"}
    adapters, created = _pick_adapters(cfg, base, listed) if needs_adapters else ([], [])
    try:
        return _run_scenarios(cfg, base, pid, want, adapters)
    finally:
        if created:
            from loradock.bench.adapters import remove_adapters

            remove_adapters(cfg.adapters_dir, created)


def _run_scenarios(cfg: BenchConfig, base: str, pid: int | None, want: set[str], adapters: list[str]) -> dict:
    import psutil

    from loradock.bench import report as bench_report
    from loradock.bench.load import choose_models

    mixed = choose_models(adapters, cfg.requests, cfg.popularity) if adapters else []
    engine = _engine_settings(cfg, base)
    result: dict[str, Any] = {
        "setup": {
            **{k: v for k, v in asdict(cfg).items() if not isinstance(v, Path)},
            "adapters_dir": str(cfg.adapters_dir),
            "adapter_names": adapters,
            "base": base,
            "server_pid": pid,
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
    scenarios = result["scenarios"]
    loads = {k: v for k, v in (("base", [base] * cfg.requests), ("mixed", mixed)) if k in want and v}
    if loads:
        _warm(cfg.server, [base, *adapters], cfg.api_key)
        scenarios.update(_best_of(cfg, pid, loads))
    if "cold_adapter" in want:
        scenarios["cold_adapter"] = _cold(cfg, adapters[0])
    if "adapters_64" in want:
        scenarios.update(_rotation(cfg, adapters[0], pid))
    for kind in ("vllm_server", "peft_batched", "naive_peft"):
        if kind in want:
            try:
                scenarios[kind] = _baseline(cfg, kind, engine, adapters, mixed)
            except RuntimeError as e:  # a baseline that cannot start is reported, the rest still runs
                log.error("%s: %s", kind, e)
                scenarios[kind] = {"error": str(e)[:2000]}
    if f"adapters_{cfg.rotation}" in scenarios and cfg.rotation != 64:
        scenarios["adapters_64"] = scenarios.pop(f"adapters_{cfg.rotation}")
    result.update(bench_report.ratios(scenarios))
    result["targets"] = bench_report.verdicts(bench_report.ratios(scenarios))
    cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.json_path.write_text(json.dumps(result, indent=2) + "\n")
    bench_report.write_chart(result, cfg.chart_path)
    return result


def bench_cmd(
    server: str = typer.Option("http://127.0.0.1:8000", help="URL of the running loradock server."),
    api_key: str = typer.Option(None, envvar="LORADOCK_API_KEY", help="Bearer key of that server, if set."),
    server_pid: int = typer.Option(None, help="Server pid for peak RSS (default: whoever listens on the port)."),
    concurrency: int = typer.Option(32, help="Requests in flight at once."),
    requests: int = typer.Option(64, help="Requests per scenario."),
    max_tokens: int = typer.Option(64, help="Output tokens per request (sent with ignore_eos)."),
    adapters: int = typer.Option(8, help="Distinct adapters in the mixed load (K)."),
    popularity: str = typer.Option("uniform", help="How requests spread over the adapters: uniform | zipf."),
    adapters_dir: Path = typer.Option(Path("adapters"), help="The server's adapter store (copies go there)."),
    make_adapters: bool = typer.Option(False, help="Create K synthetic rank-8 adapters bench-NN in the store."),
    scenarios: str = typer.Option(",".join(ALL_SCENARIOS), help="Comma-separated scenarios to run."),
    rounds: int = typer.Option(3, help="Interleaved rounds of base/mixed; each keeps its best."),
    quick: bool = typer.Option(False, help="Smaller run (32 requests x 32 tokens, 2 rounds): under 10 minutes."),
    config: Path = typer.Option(None, help="loradock YAML settings (engine settings for the vLLM baseline)."),
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
    )
    result = run_bench(cfg)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"loradock bench -> {json_path}")
    for col in ("ratio", "value", "target", "verdict"):
        table.add_column(col)
    from loradock.bench.report import TARGETS

    for key, (op, threshold) in TARGETS.items():
        table.add_row(key, str(result.get(key)), f"{op} {threshold:g}", result["targets"][key])
    Console().print(table)
