"""REST front end: Seldon's Istio URLs (/seldon/<namespace>/<deployment>/...), prefix stripped,
forwarded as raw bytes; plus /metrics and the admin API (in admin.py)."""

from __future__ import annotations

import json
import time

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import ServingError
from .compare import outputs_from_rest
from .core import PREDICTOR_HEADER, RouterCore, UpstreamConnectError, error_status
from .replicas import Replica

HOP_BY_HOP = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    PREDICTOR_HEADER,
}


def service_of(tail: str) -> str:
    """The `service` metric label, from the V2 path."""
    if tail.endswith("/infer"):
        return "infer"
    if tail.endswith("/ready") or tail.startswith("v2/health"):
        return "ready" if "ready" in tail else "live"
    return "metadata"


def json_error(status: int, message: str, predictor: str | None = None) -> web.Response:
    headers = {PREDICTOR_HEADER: predictor} if predictor else None
    return web.json_response({"error": message}, status=status, headers=headers)


class RestFront:
    def __init__(self, core: RouterCore, session: aiohttp.ClientSession) -> None:
        self.core = core
        self.session = session
        self.sticky = core.settings.sticky_header.lower()
        self.timeout = aiohttp.ClientTimeout(total=core.settings.upstream_timeout_seconds)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/seldon/{namespace}/{deployment}/{tail:.*}", self.handle),
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
        ]

    async def send(
        self, replica: Replica, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str]:
        try:
            async with self.session.request(
                method, replica.rest_url + path, data=body, headers=headers, timeout=self.timeout
            ) as resp:
                return (
                    resp.status,
                    await resp.read(),
                    resp.headers.get("content-type", "application/json"),
                )
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise ServingError(
                f"predictor {replica.predictor!r} did not answer within "
                f"{self.core.settings.upstream_timeout_seconds:g}s (router.upstreamTimeoutSeconds)",
                status_code=504,
            ) from e
        except (aiohttp.ClientConnectionError, ConnectionResetError) as e:
            raise UpstreamConnectError(str(e) or type(e).__name__) from e

    async def handle(self, request: web.Request) -> web.StreamResponse:
        core = self.core
        ns, dep = request.match_info["namespace"], request.match_info["deployment"]
        if (ns, dep) != (core.namespace, core.deployment):
            return json_error(
                404,
                f"no SeldonDeployment {ns}/{dep} here; this router serves "
                f"/seldon/{core.namespace}/{core.deployment}/",
            )
        tail = request.match_info["tail"]
        path = "/" + tail + (f"?{request.query_string}" if request.query_string else "")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(
                413,
                f"request body above {core.settings.max_body_bytes} bytes "
                "(router.maxBodyBytes); send fewer rows per request",
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        service = service_of(tail)
        try:
            pool, _ = core.select(
                request.headers.get(PREDICTOR_HEADER),
                request.headers.get(self.sticky) if self.sticky else None,
            )
        except Exception as e:
            status, message = error_status(e)
            return json_error(status, message)

        async def mirrored(replica: Replica) -> tuple[str, bytes | None]:
            status, payload, _ = await self.send(replica, request.method, path, body, headers)
            return str(status), payload if status == 200 else None

        shadow = core.mirror_if_due(service, pool, mirrored, request.method, outputs_from_rest)
        started = time.perf_counter()
        primary: bytes | None = None
        response: web.Response
        try:
            (status, payload, content_type), pool = await core.call(
                pool, lambda r: self.send(r, request.method, path, body, headers)
            )
            primary = payload if status == 200 else None
            response = web.Response(
                status=status,
                body=payload,
                headers={"content-type": content_type, PREDICTOR_HEADER: pool.name},
            )
        except Exception as e:
            status, message = error_status(e)
            response = json_error(status, message, pool.name)
        core.observe(pool, service, request.method, str(status), started)
        if shadow is not None:
            shadow.finish(primary, pool.name)
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        rate = self.core.mirror.stats.rate
        shadow = self.core.state.routes.shadow
        if shadow and rate is not None:
            self.core.metrics.shadow_agreement.labels(self.core.deployment, shadow).set(rate)
        if shadow:
            self.core.metrics.shadow_in_flight.labels(self.core.deployment, shadow).set(
                self.core.mirror.in_flight
            )
        return web.Response(
            body=generate_latest(self.core.metrics.registry),
            headers={"content-type": CONTENT_TYPE_LATEST},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        live = {name: len(pool.live()) for name, pool in self.core.state.pools.items()}
        return web.Response(text=json.dumps({"live": live}), content_type="application/json")
