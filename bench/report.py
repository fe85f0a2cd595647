"""Ratios, targets and the PNG chart of `loradock bench` results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Issue 6 targets: ratio -> (comparison, threshold).
TARGETS: dict[str, tuple[str, float]] = {
    "mixed_over_base": (">=", 0.90),
    "over_naive_peft": (">=", 10.0),
    "over_peft_batched": (">=", 1.5),
    "over_vllm_server": (">=", 1.0),
    "adapters64_over_adapters1": (">=", 0.8),
    "cold_adapter_ttft_ms": ("<=", 250.0),
}
# Scenario order in the chart.
CHART_ORDER = ("base", "mixed", "vllm_server", "peft_batched", "naive_peft", "adapters_1", "adapters_64")


def _tok_s(scenarios: dict[str, Any], name: str) -> float | None:
    s = scenarios.get(name)
    value = s.get("tokens_per_s") if isinstance(s, dict) else None
    return value or None


def ratios(scenarios: dict[str, Any]) -> dict[str, float | None]:
    """The top-level ratios of the JSON (None when a scenario was skipped or failed)."""

    def over(a: str, b: str) -> float | None:
        x, y = _tok_s(scenarios, a), _tok_s(scenarios, b)
        return round(x / y, 3) if x and y else None

    cold = scenarios.get("cold_adapter") or {}
    return {
        "mixed_over_base": over("mixed", "base"),
        "over_naive_peft": over("mixed", "naive_peft"),
        "over_peft_batched": over("mixed", "peft_batched"),
        "over_vllm_server": over("mixed", "vllm_server"),
        "adapters64_over_adapters1": over("adapters_64", "adapters_1"),
        "cold_adapter_ttft_ms": cold.get("ttft_p50_ms"),
    }


def verdicts(values: dict[str, float | None]) -> dict[str, str]:
    """'met' / 'not met' / 'not measured' per target."""
    out = {}
    for key, (op, threshold) in TARGETS.items():
        v = values.get(key)
        if v is None:
            out[key] = "not measured"
        else:
            out[key] = "met" if (v >= threshold if op == ">=" else v <= threshold) else "not met"
    return out


def write_chart(result: dict[str, Any], path: Path) -> Path:
    """Bar chart: output tokens/s per scenario, and TTFT p50 per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = result["scenarios"]
    names = [n for n in CHART_ORDER if _tok_s(scenarios, n)]
    tok_s = [_tok_s(scenarios, n) or 0.0 for n in names]
    ttft = [(scenarios[n].get("ttft_p50_ms") or 0.0) / 1000 for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = ax1.bar(names, tok_s, color=["#4c72b0" if n in ("base", "mixed") else "#999999" for n in names])
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    ax1.set_ylabel("output tokens / s")
    ax1.set_title("Throughput (higher is better)")
    ax2.bar(names, ttft, color="#dd8452")
    ax2.set_ylabel("TTFT p50 (s)")
    ax2.set_title("Time to first token (lower is better)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    setup = result.get("setup", {})
    fig.suptitle(
        f"loradock bench: {setup.get('requests')} requests x {setup.get('max_tokens')} tokens, "
        f"concurrency {setup.get('concurrency')}, {setup.get('adapters')} adapters ({setup.get('popularity')})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
