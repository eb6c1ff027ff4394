"""`grpc.health.v1.Health` on the gRPC port: what Kubernetes' native gRPC probes and gRPC load balancers ask.

Check answers from the worker's state at the time of the call, by the rule of `/readyz`:
SERVING while the worker should be sent work, NOT_SERVING while it loads, drains, or would
refuse a request for every model. It answers for the whole server (service "") and for each
gRPC service served; another name is NOT_FOUND. Watch reports SERVING from the start and
NOT_SERVING once the worker drains (grpcio-health-checking's servicer, whose statuses this sets);
the passing states of overload are for Check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class LiveHealth(health.HealthServicer):
    """The health service of one worker; `serving()` is whether it should be sent work now."""

    def __init__(self, services: list[str], serving: Callable[[], bool]):
        super().__init__()
        self._serving = serving
        for service in ("", *services):
            self.set(service, SERVING)

    def Check(self, request: Any, context: Any) -> Any:
        response = super().Check(request, context)
        if response.status == SERVING and not self._serving():
            response.status = NOT_SERVING
        return response
