"""The control process's HTTP side: /metrics and /healthz, next to the admin API (admin.py).
nginx forwards these paths of the router's REST port here, over a unix socket."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .core import RouterCore


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ControlApi:
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self.metrics), web.get("/healthz", self.healthz)]

    async def metrics(self, request: web.Request) -> web.Response:
        core = self.core
        shadow = core.state.routes.shadow
        rate = core.shadow.stats.rate
        if shadow and rate is not None:
            core.metrics.shadow_agreement.labels(core.deployment, shadow).set(rate)
        if shadow:
            core.metrics.shadow_in_flight.labels(core.deployment, shadow).set(
                core.shadow.in_flight
            )
        return web.Response(
            body=generate_latest(core.metrics.registry),
            headers={"content-type": CONTENT_TYPE_LATEST},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        live = {name: len(pool.live()) for name, pool in self.core.state.pools.items()}
        return web.Response(text=json.dumps({"live": live}), content_type="application/json")
