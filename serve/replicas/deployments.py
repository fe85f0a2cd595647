"""The Ray Serve application behind ``loradock serve --replicas N``.

* ``LoradockReplica`` (N replicas): a full loradock server each (vLLM engine, adapter registry and
  validation, RAG, feedback): the same FastAPI app ``loradock serve`` runs, called in-process (asgi.py).
* ``LoradockIngress`` (the HTTP entry, ingress_app.py): reads ``model`` from an inference request and hands it
  to the replicas with Ray Serve's multiplexed model id, so an adapter's requests go to a replica that has it
  resident (the base model to any replica); runs admin calls, ``/v1/models`` and ``/metrics`` on every replica
  with ``DeploymentHandle.broadcast``.

Admin calls that change state (load, unload, ...) are kept in the ingress's admin log and every broadcast
carries the log, so a replica that missed one (a replacement Ray started after a crash) catches up first.
Imported only by ``loradock serve --replicas`` and its tests: this module imports Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from loradock.core.settings import Settings
from loradock.serve.engine import Engine, LoRATarget
from loradock.serve.replicas import asgi
from loradock.serve.replicas.merge import REPLICA_HEADER

log = logging.getLogger(__name__)
INGRESS, REPLICA = "LoradockIngress", "LoradockReplica"
AdminLog = tuple[str, list[tuple[int, asgi.HttpRequest]]]  # (the ingress's epoch, [(seq, request)])


@dataclass
class ReplicaInfo:
    """One replica as it reports itself (``GET /v1/replicas``)."""

    replica_id: str
    pid: int
    node_id: str
    resident: list[str] = field(default_factory=list)  # adapters Ray routes here (its multiplexed model ids)


class ReplicaServer:
    """One loradock server inside a Ray Serve replica; :func:`replica_class` adds the multiplexed loader."""

    async def __init__(self, settings_data: dict[str, Any],  # type: ignore[misc]  # Ray awaits it
                       engine_factory: Callable[[Settings], Engine] | None = None) -> None:
        from loradock.core.feedback import FeedbackStore
        from loradock.rag.index import RagStore
        from loradock.serve.app import create_app

        settings = Settings(**settings_data)
        context = serve.get_replica_context()
        self.replica_id: str = context.replica_id.unique_id
        engine = engine_factory(settings) if engine_factory is not None else None
        self.app = create_app(settings, engine=engine, retriever=RagStore(settings.rag_dir),
                              feedback=FeedbackStore(settings.db_url))
        self.app.state.metrics.replica = self.replica_id
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        await self.app.state.starter  # engine up and store scanned; raises if not, and Ray retries the replica
        self._epoch, self._applied = "", 0
        self._answers: OrderedDict[int, asgi.HttpResponse] = OrderedDict()
        self._admin = asyncio.Lock()
        with suppress(Exception):  # catch up with admin calls made before this replica started (best effort:
            # the next broadcast carries the log too)
            ingress = serve.get_deployment_handle(INGRESS, context.app_name)
            await self._catch_up(await asyncio.wait_for(ingress.admin_log.remote(), timeout=10))
        log.info("replica %s (pid %d) serving", self.replica_id, os.getpid())

    async def _resident(self, name: str) -> LoRATarget:
        # vLLM's own LRU (max_cpu_loras) evicts in the engine; Ray's LRU of the same size mirrors it for routing.
        target: LoRATarget = await self.app.state.registry.acquire(name)
        return target

    async def adapter(self, name: str) -> LoRATarget:  # replica_class() puts Ray's multiplexed loader here
        return await self._resident(name)

    async def forward(self, request: asgi.HttpRequest) -> AsyncIterator[asgi.ResponseStart | bytes]:
        """Run one HTTP request through this replica's app; stream the response back to the ingress."""
        model = serve.get_multiplexed_model_id()
        if model:
            with suppress(Exception):  # an unknown or refused adapter: the app answers with its own 4xx
                await self.adapter(model)  # marks it resident here, so Ray routes its next requests here
        async for item in asgi.stream(self.app, request):
            if isinstance(item, asgi.ResponseStart):
                item.headers.append((REPLICA_HEADER, self.replica_id))
            yield item

    async def _catch_up(self, admin_log: AdminLog) -> None:
        epoch, entries = admin_log
        async with self._admin:
            if epoch != self._epoch:  # a new ingress: its log starts again at 1
                self._epoch, self._applied = epoch, 0
            for seq, request in entries:
                if seq > self._applied:
                    self._answers[seq] = await asgi.collect(self.app, request)
                    self._applied = seq
                    while len(self._answers) > 64:
                        self._answers.popitem(last=False)

    async def run(self, admin_log: AdminLog, request: asgi.HttpRequest | None = None
                  ) -> tuple[str, asgi.HttpResponse | None]:
        """Broadcast target: apply the admin log, then run ``request`` (a read) here, or return the answer to
        the log's last entry (the admin call being broadcast)."""
        await self._catch_up(admin_log)
        if request is not None:
            return self.replica_id, await asgi.collect(self.app, request)
        last = admin_log[1][-1][0] if admin_log[1] else 0
        return self.replica_id, self._answers.get(last)

    async def info(self) -> ReplicaInfo:
        wrapper = getattr(self, "__serve_multiplex_wrapper", None)
        resident = list(wrapper.models) if wrapper is not None else []
        return ReplicaInfo(self.replica_id, os.getpid(), ray.get_runtime_context().get_node_id(), resident)

    async def check_health(self) -> None:
        """Ray calls this every few seconds; raising makes Ray replace the replica."""
        state = self.app.state
        if getattr(state, "exit_reason", None):
            raise RuntimeError(f"replica {self.replica_id} stopped serving: {state.exit_reason}")
        if getattr(state.engine, "state", "ready") == "restarting":
            return  # the engine supervisor rebuilds the engine in place
        await state.engine.check_health()

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)


def replica_class(max_adapters: int) -> type[ReplicaServer]:
    """The replica class with Ray's multiplexed loader, sized like the engine's adapter LRU."""

    class LoradockReplica(ReplicaServer):
        @serve.multiplexed(max_num_models_per_replica=max_adapters)
        async def adapter(self, name: str) -> LoRATarget:
            return await self._resident(name)

    return LoradockReplica


class IngressServer:
    """The HTTP entry (see ingress_app.py): route by adapter, broadcast admin calls, keep the admin log."""

    def __init__(self, replicas: DeploymentHandle, settings_data: dict[str, Any]) -> None:
        from loradock.serve.replicas.routing import Router

        self.replicas = replicas
        self.settings = Settings(**settings_data)
        self.router = Router(self.settings)
        self._epoch = uuid.uuid4().hex
        self._log: list[tuple[int, asgi.HttpRequest]] = []

    def __serve_build_asgi_app__(self) -> Any:
        from loradock.serve.replicas.ingress_app import build_ingress_app

        return build_ingress_app(self)

    async def admin_log(self) -> AdminLog:
        """The state-changing admin calls so far (a new replica replays them)."""
        return self._epoch, list(self._log)

    async def alive(self) -> list[ReplicaInfo]:
        """Every running replica, as it reports itself."""
        results = await self.replicas.broadcast("info").results_async(timeout_s=10, return_exceptions=True)
        return sorted((r for r in results if isinstance(r, ReplicaInfo)), key=lambda r: r.replica_id)

    async def broadcast(self, request: asgi.HttpRequest, changes_state: bool) -> dict[str, asgi.HttpResponse]:
        """Run ``request`` on every running replica; answers by replica id (a replica lost meanwhile is left
        out). A state change joins the admin log first, so later replicas replay it."""
        if changes_state:
            self._log.append((len(self._log) + 1, request))
        admin_log: AdminLog = (self._epoch, list(self._log))
        results = await self.replicas.broadcast("run", admin_log, None if changes_state else request
                                                ).results_async(timeout_s=120, return_exceptions=True)
        return {rid: answer for rid, answer in (r for r in results if isinstance(r, tuple)) if answer is not None}

    async def once(self, request: asgi.HttpRequest) -> asgi.HttpResponse:
        """Run ``request`` on one replica and return the whole answer."""
        start, body = await self.routed(request, "")
        return asgi.HttpResponse(start.status, start.headers, b"".join([chunk async for chunk in body]))

    async def routed(self, request: asgi.HttpRequest, model_id: str
                     ) -> tuple[asgi.ResponseStart, AsyncIterator[bytes]]:
        """Send ``request`` to one replica (one with ``model_id`` resident when possible). A replica that dies
        before it answered is tried once more elsewhere: generation has no side effect to repeat."""
        for attempt in (1, 2):
            gen = self.replicas.options(stream=True, multiplexed_model_id=model_id).forward.remote(request)
            assert isinstance(gen, DeploymentResponseGenerator)
            try:
                first = await gen.__anext__()
            except RayActorError as e:
                gen.cancel()
                if attempt == 2:
                    raise
                log.warning("replica lost before it answered (%s); trying another", type(e).__name__)
                continue
            return first, _body(gen)
        raise AssertionError("unreachable")


async def _body(gen: DeploymentResponseGenerator) -> AsyncIterator[bytes]:
    try:
        async for chunk in gen:
            yield chunk
    except RayActorError as e:  # the replica died mid-stream: the client sees the stream end early
        log.warning("replica lost mid-response: %s", type(e).__name__)
    finally:
        gen.cancel()


def build_app(settings: Settings, replicas: int, engine_factory: Callable[[Settings], Engine] | None = None
              ) -> Any:
    """The Ray Serve application: ``replicas`` loradock replicas behind the ingress. ``engine_factory``
    defaults to the real vLLM engine; tests may pass a fake."""
    data = settings.model_dump()
    gpus = settings.tensor_parallel_size * settings.pipeline_parallel_size
    on_gpu = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= gpus
    replica = serve.deployment(
        name=REPLICA, num_replicas=replicas,
        # Ray must never find a replica "full" while it has the adapter: it would send the request elsewhere.
        max_ongoing_requests=settings.max_num_seqs + settings.max_waiting,
        # No Ray CPUs reserved: vLLM sizes its own threads.
        ray_actor_options={"num_cpus": 0, "num_gpus": gpus if on_gpu else 0},
        health_check_period_s=5, health_check_timeout_s=30, graceful_shutdown_timeout_s=10,
    )(replica_class(settings.max_cpu_loras)).bind(data, engine_factory)
    ingress = serve.deployment(name=INGRESS, num_replicas=1, max_ongoing_requests=10000,
                               ray_actor_options={"num_cpus": 0})(serve.ingress()(IngressServer))
    return ingress.bind(replica, data)
