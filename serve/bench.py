"""Serving benchmark (being written)."""


def bench_cmd() -> None:
    """Benchmark a running server."""
