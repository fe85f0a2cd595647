"""Ratios, targets, the printed table and the PNG chart of `loradock bench` results.

The chart can be redrawn from a results file: ``python -m loradock.bench.report out.json --chart out.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Issue 11 targets (and issue 6's PEFT ones): figure -> (comparison, threshold).
TARGETS: dict[str, tuple[str, float]] = {
    "single_stream_tok_s": (">=", 50.0),
    "base_over_vllm_server": (">=", 1.3),
    "mixed_over_vllm_server": (">=", 3.0),
    "mixed_over_base": (">=", 0.95),
    "lora_enabled_over_disabled": (">=", 0.95),
    "adapters64_over_adapters1": (">=", 0.9),
    "cold_adapter_ttft_ms": ("<=", 120.0),
    "server_rss_mib": ("<=", 2048.0),
    "over_naive_peft": (">=", 10.0),
    "over_peft_batched": (">=", 1.5),
}
# Throughput bars of the chart: label -> (scenario, load within a paired baseline or None).
THROUGHPUT_BARS: dict[str, tuple[str, str | None]] = {
    "base": ("base", None), "mixed": ("mixed", None), "base, LoRA off": ("base_nolora", "base"),
    "vLLM base": ("vllm_server", "base"), "vLLM mixed": ("vllm_server", "mixed"),
    "vLLM+plugin base": ("vllm_server_plugin", "base"), "vLLM+plugin mixed": ("vllm_server_plugin", "mixed"),
    "PEFT batched": ("peft_batched", None), "PEFT naive": ("naive_peft", None),
    "1 adapter": ("adapters_1", None), "64 adapters": ("adapters_64", None),
}  # fmt: skip
STREAM_BARS: dict[str, tuple[str, str | None]] = {
    "base": ("single_stream", "base"), "adapter": ("single_stream", "adapter"),
    "base, LoRA off": ("base_nolora", "base_nolora"), "vLLM": ("vllm_server", "vllm_server"),
    "vLLM+plugin": ("vllm_server_plugin", "vllm_server_plugin"),
}  # fmt: skip


def _get(scenarios: dict[str, Any], *path: str) -> Any:
    node: Any = scenarios
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _div(x: Any, y: Any) -> float | None:
    return round(x / y, 3) if x and y else None


def _paired(scenarios: dict[str, Any], kind: str, load: str) -> float | None:
    """loradock over a baseline, from the two figures measured side by side."""
    entry = _get(scenarios, kind, load) or {}
    return _div(_get(entry, "loradock", "tokens_per_s"), entry.get("tokens_per_s"))


def ratios(scenarios: dict[str, Any]) -> dict[str, float | None]:
    """The top-level figures of the JSON (None when a scenario was skipped or failed)."""

    def tok(name: str) -> float | None:
        return _get(scenarios, name, "tokens_per_s")

    rss = [v for v in (_get(scenarios, n, "peak_rss_mib") for n in ("base", "mixed")) if v]
    return {
        "single_stream_tok_s": _get(scenarios, "single_stream", "adapter", "decode_tok_s"),
        "single_stream_base_tok_s": _get(scenarios, "single_stream", "base", "decode_tok_s"),
        "single_stream_itl_p50_ms": _get(scenarios, "single_stream", "adapter", "itl_p50_ms"),
        "base_over_vllm_server": _paired(scenarios, "vllm_server", "base"),
        "mixed_over_vllm_server": _paired(scenarios, "vllm_server", "mixed"),
        "base_over_vllm_server_plugin": _paired(scenarios, "vllm_server_plugin", "base"),
        "mixed_over_vllm_server_plugin": _paired(scenarios, "vllm_server_plugin", "mixed"),
        "mixed_over_base": _div(tok("mixed"), tok("base")),
        "lora_enabled_over_disabled": _paired(scenarios, "base_nolora", "base"),
        "single_stream_lora_enabled_over_disabled": _div(
            _get(scenarios, "base_nolora", "single_stream", "loradock", "decode_tok_s"),
            _get(scenarios, "base_nolora", "single_stream", "base_nolora", "decode_tok_s")),
        "adapters64_over_adapters1": _div(tok("adapters_64"), tok("adapters_1")),
        "cold_adapter_ttft_ms": _get(scenarios, "cold_adapter", "ttft_p50_ms"),
        "server_rss_mib": max(rss) if rss else None,
        "over_naive_peft": _div(tok("mixed"), tok("naive_peft")),
        "over_peft_batched": _div(tok("mixed"), tok("peft_batched")),
    }


def verdicts(values: dict[str, Any]) -> dict[str, str]:
    """'met' / 'not met' / 'not measured' per target."""
    out = {}
    for key, (op, threshold) in TARGETS.items():
        v = values.get(key)
        if v is None:
            out[key] = "not measured"
        else:
            out[key] = "met" if (v >= threshold if op == ">=" else v <= threshold) else "not met"
    return out


def print_table(result: dict[str, Any], json_path: Path) -> None:
    """The targets with their measured values, and the informational figures, as a terminal table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"loradock bench -> {json_path} (load average at start "
                        f"{', '.join(f'{x:.1f}' for x in result['machine']['load_avg_at_start'])})")
    for col in ("figure", "value", "target", "verdict"):
        table.add_column(col)
    for key, (op, threshold) in TARGETS.items():
        table.add_row(key, str(result.get(key)), f"{op} {threshold:g}", result["targets"][key])
    for key in ratios({}):
        if key not in TARGETS:
            table.add_row(key, str(result.get(key)), "", "")
    Console().print(table)


def _bars(scenarios: dict[str, Any], spec: dict[str, tuple[str, str | None]], field: str) -> tuple[list, list]:
    names, values = [], []
    for label, (scenario, load) in spec.items():
        node = _get(scenarios, scenario, load) if load else scenarios.get(scenario)
        value = _get(node, field) if isinstance(node, dict) else None
        if value:
            names.append(label)
            values.append(value)
    return names, values


def write_chart(result: dict[str, Any], path: Path) -> Path:
    """Bar charts: output tokens/s at the bench's concurrency, one stream's decode tokens/s, TTFT p50."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = result["scenarios"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [3, 1.6, 3]})
    names, tok_s = _bars(scenarios, THROUGHPUT_BARS, "tokens_per_s")
    loradock = {"base", "mixed", "1 adapter", "64 adapters"}
    bars = axes[0].bar(names, tok_s, color=["#4c72b0" if n in loradock else "#999999" for n in names])
    axes[0].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[0].set_ylabel("output tokens / s")
    axes[0].set_title(f"Throughput, {result['setup'].get('concurrency')} concurrent (higher is better)")
    names, decode = _bars(scenarios, STREAM_BARS, "decode_tok_s")
    bars = axes[1].bar(names, decode, color=["#4c72b0" if n in ("base", "adapter") else "#999999" for n in names])
    axes[1].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[1].set_ylabel("decode tokens / s")
    axes[1].set_title("One stream (higher is better)")
    names, ttft = _bars(scenarios, THROUGHPUT_BARS, "ttft_p50_ms")
    axes[2].bar(names, ttft, color="#dd8452")
    axes[2].set_ylabel("TTFT p50 (ms)")
    axes[2].set_title("Time to first token (lower is better)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    setup = result.get("setup", {})
    load = result.get("machine", {}).get("load_avg_at_start") or [0.0]
    fig.suptitle(
        f"loradock bench: {setup.get('requests')} requests x {setup.get('max_tokens')} tokens, "
        f"{setup.get('adapters')} adapters ({setup.get('popularity')}), engine dtype "
        f"{setup.get('engine', {}).get('dtype')}, load average at start {load[0]:.1f}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    """Redraw the chart (and print the table) of a results file."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path)
    parser.add_argument("--chart", type=Path, default=None, help="PNG path (default: next to the JSON)")
    args = parser.parse_args()
    result = json.loads(args.json.read_text())
    result.update(ratios(result["scenarios"]))  # recomputed, so files from older runs get today's figures
    result["targets"] = verdicts(result)
    write_chart(result, args.chart or args.json.with_suffix(".png"))
    print_table(result, args.json)


if __name__ == "__main__":
    main()
