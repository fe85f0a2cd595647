"""`loradock bench`: statistics, ratios, the PEFT baseline's decoding, and a tiny run against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from loradock.bench import report as bench_report
from loradock.bench.adapters import Published, StoreMismatch, check_store, make_bench_adapters
from loradock.bench.load import RequestResult, choose_models, percentile, summarize
from loradock.bench.run import BenchConfig, _sigterm_unwinds, run_bench
from tests.conftest import BASE_MODEL


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_summarize_counts_tokens_and_latencies() -> None:
    results = [
        RequestResult("a", True, start=0.0, end=2.0, ttft=0.5, itl=[0.1, 0.3], tokens=3),
        RequestResult("b", True, start=1.0, end=4.0, ttft=1.5, itl=[0.2], tokens=2),
        RequestResult("c", False, start=1.0, end=1.5, error="HTTP 429: busy"),
    ]
    stats = summarize(results, peak_rss_mib=123.0)
    assert (stats.requests, stats.errors, stats.output_tokens) == (3, 1, 5)
    assert stats.duration_s == 4.0
    assert stats.tokens_per_s == 1.2
    assert stats.ttft_p50_ms == 1000.0
    assert stats.itl_p50_ms == 200.0
    assert stats.first_error == "HTTP 429: busy"
    assert stats.as_dict()["peak_rss_mib"] == 123.0


def test_choose_models_uniform_and_zipf() -> None:
    names = [f"a{i}" for i in range(8)]
    assert choose_models(names, 10, "uniform") == names + names[:2]
    zipf = choose_models(names, 2000, "zipf", seed=1)
    assert zipf == choose_models(names, 2000, "zipf", seed=1)
    counts = [zipf.count(n) for n in names]
    assert counts[0] > 2 * counts[3] > 0  # rank 1 gets about 4x the traffic of rank 4
    with pytest.raises(ValueError, match="--popularity"):
        choose_models(names, 3, "pareto")


def test_ratios_and_verdicts() -> None:
    scenarios = {
        "base": {"tokens_per_s": 200.0, "peak_rss_mib": 1900.0},
        "mixed": {"tokens_per_s": 190.0, "peak_rss_mib": 2100.0},
        "single_stream": {"base": {"decode_tok_s": 55.0}, "adapter": {"decode_tok_s": 49.0, "itl_p50_ms": 20.0}},
        "naive_peft": {"tokens_per_s": 10.0},
        "peft_batched": {"tokens_per_s": 150.0},
        "vllm_server": {"base": {"tokens_per_s": 100.0, "loradock": {"tokens_per_s": 150.0}},
                        "mixed": {"tokens_per_s": 50.0, "loradock": {"tokens_per_s": 160.0}}},
        "vllm_server_plugin": {"error": "did not start"},
        "base_nolora": {"base": {"tokens_per_s": 200.0, "loradock": {"tokens_per_s": 196.0}}},
        "adapters_1": {"tokens_per_s": 100.0},
        "adapters_64": {"tokens_per_s": 50.0},
        "cold_adapter": {"ttft_p50_ms": 120.0},
    }
    r = bench_report.ratios(scenarios)
    assert r["mixed_over_base"] == 0.95 and r["over_naive_peft"] == 19.0
    assert r["base_over_vllm_server"] == 1.5 and r["mixed_over_vllm_server"] == 3.2, "paired figures, side by side"
    assert r["mixed_over_vllm_server_plugin"] is None
    assert r["lora_enabled_over_disabled"] == 0.98 and r["server_rss_mib"] == 2100.0
    v = bench_report.verdicts(r)
    assert v["mixed_over_base"] == "met" and v["over_peft_batched"] == "not met"
    assert v["single_stream_tok_s"] == "not met" and v["base_over_vllm_server"] == "met"
    assert v["adapters64_over_adapters1"] == "not met" and v["server_rss_mib"] == "not met"
    assert v["cold_adapter_ttft_ms"] == "met"
    assert set(v) == set(bench_report.TARGETS)


def test_chart_redraws_from_the_json(tmp_path: Path) -> None:
    result = {"setup": {"concurrency": 4, "requests": 4, "max_tokens": 4, "adapters": 1, "popularity": "uniform",
                        "engine": {"dtype": "bfloat16"}},
              "machine": {"load_avg_at_start": [1.0, 1.0, 1.0]},
              "scenarios": {"base": {"tokens_per_s": 10.0, "ttft_p50_ms": 5.0},
                            "single_stream": {"base": {"decode_tok_s": 50.0}},
                            "vllm_server": {"base": {"tokens_per_s": 5.0, "ttft_p50_ms": 9.0}}}}
    (tmp_path / "r.json").write_text(json.dumps(result))
    subprocess.run([sys.executable, "-m", "loradock.bench.report", str(tmp_path / "r.json")], check=True,
                   capture_output=True, timeout=120)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_store_check_refuses_a_server_that_watches_another_store(tmp_path: Path, base_info) -> None:
    from loradock.core.store import AdapterStore
    from loradock.core.synthetic import make_synthetic_adapters

    store = AdapterStore(tmp_path / "store")
    make_synthetic_adapters(store, base_info, ["mine"])
    with pytest.raises(StoreMismatch, match="--adapters-dir"):
        check_store(store.root, ["theirs"], "http://x")
    check_store(store.root, ["mine", "theirs"], "http://x")
    check_store(store.root, [], "http://x")  # nothing to compare: the first publish confirms it


def test_published_adapters_are_removed_on_sigterm(tmp_path: Path, base_info) -> None:
    """The ledger empties on every exit path; SIGTERM unwinds like Ctrl-C so its finally runs."""
    ledger = Published(tmp_path / "store")
    names = make_bench_adapters(tmp_path / "store", BASE_MODEL, 2, ledger)
    assert ledger.names == names and all((tmp_path / "store" / n).is_dir() for n in names)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit), _sigterm_unwinds():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            ledger.remove_all()
    assert not any((tmp_path / "store" / n).exists() for n in names)
    assert signal.getsignal(signal.SIGTERM) == previous


def test_config_errors_name_the_flag(tmp_path: Path) -> None:
    kwargs = dict(
        server="http://x",
        api_key=None,
        server_pid=None,
        concurrency=4,
        requests=4,
        max_tokens=4,
        adapters=1,
        popularity="uniform",
        adapters_dir=tmp_path,
        make_adapters=False,
        scenarios=["base"],
        rounds=1,
        naive_requests=1,
        cold_samples=1,
        rotation=64,
        json_path=tmp_path / "b.json",
        chart_path=tmp_path / "b.png",
    )
    with pytest.raises(ValueError, match="--requests must be positive"):
        BenchConfig(**{**kwargs, "requests": 0})
    with pytest.raises(ValueError, match="--scenarios: unknown fast"):
        BenchConfig(**{**kwargs, "scenarios": ["base", "fast"]})


def test_peft_baseline_batched_decoding_matches_one_at_a_time(tmp_path: Path, base_info) -> None:
    """The batched PEFT baseline (left padding) produces the same greedy tokens as one request at a time."""
    from loradock.bench.peft_server import DONE, Decoder, Job
    from loradock.core.store import AdapterStore
    from loradock.core.synthetic import make_synthetic_adapters

    store = AdapterStore(tmp_path / "store")
    make_synthetic_adapters(store, base_info, ["peft-a"])
    decoder = Decoder(str(BASE_MODEL), {"peft-a": str(store.path("peft-a"))}, torch.float32, None)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]]

    def tokens(adapter: str | None, batch: list[list[int]]) -> list[list[str]]:
        loop = asyncio.new_event_loop()
        jobs = [Job(adapter or "base", ids, 5, True, loop) for ids in batch]
        decoder.run(adapter, jobs)
        loop.run_until_complete(asyncio.sleep(0))  # deliver the call_soon_threadsafe puts
        out = []
        for job in jobs:
            items = []
            while (item := job.queue.get_nowait()) is not DONE:
                items.append(item)
            out.append(items)
        loop.close()
        return out

    for adapter in (None, "peft-a"):
        together = tokens(adapter, prompts)
        assert all(len(t) == 5 for t in together)
        assert together == [tokens(adapter, [p])[0] for p in prompts]
    assert tokens(None, prompts) != tokens("peft-a", prompts)


def _config(server, tmp_path: Path, **kw) -> BenchConfig:
    values = dict(server=server.url, api_key=server.api_key, server_pid=None, concurrency=4, requests=4,
                  max_tokens=4, adapters=1, popularity="uniform", adapters_dir=server.adapters_dir,
                  make_adapters=False, scenarios=["base"], rounds=1, naive_requests=1, cold_samples=1,
                  rotation=64, json_path=tmp_path / "bench.json", chart_path=tmp_path / "bench.png",
                  single_tokens=6)
    return BenchConfig(**{**values, **kw})


@pytest.mark.engine
def test_bench_runs_against_the_server(server, client, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # One adapter more than the store holds: the bench tops the set up with a synthetic one, then removes it.
    stored = [m.id for m in client.models.list().data if m.parent and (server.adapters_dir / m.id).is_dir()]
    cfg = _config(server, tmp_path, adapters=len(stored) + 1, scenarios=["base", "mixed", "single_stream"])
    result = run_bench(cfg)
    assert json.loads(out.read_text()) == result
    for name in ("base", "mixed"):
        stats = result["scenarios"][name]
        assert stats["errors"] == 0, stats["first_error"]
        assert stats["output_tokens"] == 16 and stats["tokens_per_s"] > 0
        assert stats["ttft_p50_ms"] > 0 and stats["itl_p50_ms"] > 0
    for stream in result["scenarios"]["single_stream"].values():
        assert stream["tokens"] == 6 and stream["decode_tok_s"] > 0 and stream["itl_p50_ms"] > 0
    assert result["scenarios"]["base"]["peak_rss_mib"] > 100  # the server and its engine processes
    assert result["mixed_over_base"] > 0 and result["single_stream_tok_s"] > 0
    assert result["setup"]["adapter_names"] == sorted(stored) + ["bench-00"]
    assert not (server.adapters_dir / "bench-00").exists(), "the synthetic top-up must be removed after the run"
    assert set(result["targets"]) == set(bench_report.TARGETS)
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.engine
def test_a_failed_run_leaves_the_store_as_it_was(server, client, tmp_path: Path, base_info,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from loradock.bench import scenarios
    from loradock.core.store import AdapterStore
    from loradock.core.synthetic import make_synthetic_adapters

    # A store the server does not watch: refused before anything is written.
    other = AdapterStore(tmp_path / "other")
    make_synthetic_adapters(other, base_info, ["elsewhere"])
    with pytest.raises(StoreMismatch):
        run_bench(_config(server, tmp_path, adapters=2, scenarios=["mixed"], adapters_dir=other.root))
    assert other.names() == ["elsewhere"]

    # A scenario that fails after the synthetic top-up was published: the top-up is removed all the same.
    before = AdapterStore(server.adapters_dir).names()
    stored = [m.id for m in client.models.list().data if m.parent and (server.adapters_dir / m.id).is_dir()]

    def broken(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("scenario failed")

    monkeypatch.setattr(scenarios, "single_streams", broken)
    with pytest.raises(RuntimeError, match="scenario failed"):
        run_bench(_config(server, tmp_path, adapters=len(stored) + 1, scenarios=["single_stream"]))
    assert AdapterStore(server.adapters_dir).names() == before
