"""``loradock serve --replicas N``: start (or join) a Ray cluster, deploy the application, serve until stopped."""

from __future__ import annotations

import logging
import os
import signal
import time
from types import FrameType

from loradock.core.settings import Settings

log = logging.getLogger(__name__)
APP_NAME = "loradock"
# Set before Ray starts: no usage reports, and the raylet reaps what a killed replica leaves behind (vLLM's
# engine processes are children of the replica; without this a SIGKILLed replica would leave them running).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper": "true"}


class RayMissing(RuntimeError):
    """Ray Serve is not installed."""


def start_ray(settings: Settings) -> None:
    """Join the cluster named by ``RAY_ADDRESS``, else start a one-node cluster with Ray's dashboard on
    127.0.0.1:``ray_dashboard_port`` and Ray's Prometheus metrics on ``ray_metrics_port``.

    Ray's own gRPC ports (GCS, raylet, workers) listen on the node's address, not loopback (Ray replaces
    127.0.0.1 with it by design); Ray 2.60 guards them with its token authentication, on by default."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as e:
        raise RayMissing("--replicas needs Ray Serve: `make setup RAY=1` (or pip install -r requirements/ray.txt)"
                         ) from e
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=settings.ray_dashboard_port,
             _metrics_export_port=settings.ray_metrics_port or None, object_store_memory=256 * 1024 * 1024)


def serve_replicas(settings: Settings, replicas: int) -> None:
    """Deploy ``replicas`` loradock replicas behind the adapter-aware ingress on ``settings.host:port`` and
    block until SIGINT/SIGTERM; then shut the application (and a cluster started here) down."""
    start_ray(settings)
    import ray
    from ray import serve

    from loradock.serve.replicas.deployments import build_app

    def _stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _stop)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, replicas), name=APP_NAME, route_prefix="/", blocking=False)
        log.info("loradock on Ray Serve: %d replicas behind http://%s:%d (Ray dashboard http://127.0.0.1:%d)",
                 replicas, settings.host, settings.port, settings.ray_dashboard_port)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping the replicas")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
