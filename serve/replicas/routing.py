"""Where the ingress sends a request: to the replica that has its adapter, to every replica, or to any. No Ray."""

from __future__ import annotations

import json
from typing import Literal

from fastapi.routing import APIRoute, APIRouter
from starlette.routing import Match

from loradock.core.settings import Settings

Kind = Literal["adapter", "models", "metrics", "broadcast", "store", "any"]
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions")
# Admin calls that change the shared store itself: run once (on any replica), never per replica, and never
# replayed (a rollback without `to` run on N replicas would go back N versions).
STORE_CHANGES = ("/v1/adapters/{name}/rollback",)


def _admin_routes() -> list[APIRoute]:
    """Every route of serve/routes/admin.py (load, unload, versions, ...): they change or read one replica's
    adapter state, so they run on all of them (but for STORE_CHANGES)."""
    from loradock.serve.routes import admin

    routers = [v for v in vars(admin).values() if isinstance(v, APIRouter)]
    return [r for router in routers for r in router.routes if isinstance(r, APIRoute)]


class Router:
    """Classifies requests for the ingress."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.served_base_name
        self.admin = _admin_routes()

    def kind(self, method: str, path: str) -> Kind:
        method = method.upper()
        if method == "POST" and path in INFERENCE_PATHS:
            return "adapter"
        if method == "GET" and path == "/v1/models":
            return "models"
        if method == "GET" and path == "/metrics":
            return "metrics"
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        matched = [route for route in self.admin if route.matches(scope)[0] == Match.FULL]
        if any(route.path in STORE_CHANGES for route in matched):
            return "store"
        return "broadcast" if matched else "any"

    def model_id(self, body: bytes) -> str:
        """Ray Serve's multiplexed model id for an inference body: the adapter named in ``model``; "" for the
        base model and for bodies the replica will refuse anyway."""
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            return ""
        return model if isinstance(model, str) and model and model != self.base else ""
