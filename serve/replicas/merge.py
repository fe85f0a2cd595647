"""One answer from the answers of every replica: the model list, Prometheus metrics, admin results. No Ray."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from loradock.serve.replicas.asgi import HttpResponse

REPLICA_HEADER = "x-loradock-replica"  # which replica answered a routed request
REPLICAS_HEADER = "x-loradock-replicas"  # which replicas ran a broadcast one


def _ok(answers: dict[str, HttpResponse]) -> dict[str, HttpResponse]:
    return {rid: a for rid, a in answers.items() if 200 <= a.status < 300}


def worst(answers: dict[str, HttpResponse]) -> HttpResponse:
    """The answer to pass on when every replica should have done the same: the first failure, if any."""
    failures = [a for a in answers.values() if not 200 <= a.status < 300]
    chosen = max(failures, key=lambda a: a.status) if failures else next(iter(answers.values()))
    return _tagged(chosen, answers)


def _tagged(response: HttpResponse, answers: dict[str, HttpResponse], body: bytes | None = None,
            media_type: str | None = None) -> HttpResponse:
    keep = [(k, v) for k, v in response.headers if k.lower() not in ("content-length", REPLICA_HEADER)]
    if media_type is not None:
        keep = [(k, v) for k, v in keep if k.lower() != "content-type"] + [("content-type", media_type)]
    keep.append((REPLICAS_HEADER, ",".join(sorted(answers))))
    return HttpResponse(response.status, keep, response.body if body is None else body)


def models(answers: dict[str, HttpResponse]) -> HttpResponse:
    """``GET /v1/models`` over all replicas: each model once, ``loaded`` if any replica has it resident,
    ``replicas`` / ``loaded_on`` naming the replicas that serve it and that have it resident, and
    ``version_on``: the version each replica serves."""
    ok = _ok(answers)
    if not ok:
        return worst(answers)
    cards: dict[str, dict[str, Any]] = {}
    for rid in sorted(ok):
        for card in json.loads(ok[rid].body)["data"]:
            merged = cards.setdefault(card["id"], {**card, "loaded": False, "replicas": [], "loaded_on": [],
                                                   "version_on": {}})
            merged["replicas"].append(rid)
            merged["version_on"][rid] = card.get("version")
            if card.get("loaded"):
                merged["loaded"] = True
                merged["loaded_on"].append(rid)
    body = json.dumps({"object": "list", "data": list(cards.values())}).encode()
    return _tagged(next(iter(ok.values())), answers, body, "application/json")


class _Families:
    """A prometheus_client collector that yields already-built metric families."""

    def __init__(self, families: Iterable[Any]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Any]:
        yield from self.families


def metrics(answers: dict[str, HttpResponse]) -> HttpResponse:
    """``GET /metrics`` over all replicas: one family per metric name, every replica's samples in it (each
    replica labels its own samples with ``replica``)."""
    from prometheus_client import generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    ok = _ok(answers)
    if not ok:
        return worst(answers)
    merged: dict[str, Any] = {}
    for rid in sorted(ok):
        for family in text_string_to_metric_families(ok[rid].body.decode()):
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                           family.unit))
            target.samples.extend(family.samples)
    body = generate_latest(_Families(merged.values()))
    return _tagged(next(iter(ok.values())), answers, body, "text/plain; version=0.0.4; charset=utf-8")
