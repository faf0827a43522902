"""The admin API: read the routing state; change weights or predictors (token required).

    GET  /admin/status                                   anyone on the machine
    PUT  /admin/traffic     {"weights": {...}, "mirrorPercent": n}      Authorization: Bearer <token>
    PUT  /admin/predictors  {"predictors": [ ...spec predictors... ]}   Authorization: Bearer <token>

Changes are validated with the same rules as the spec; a refused change leaves routing untouched.
A wrong or missing token is answered only after FAILED_ATTEMPT_DELAY seconds, one failed attempt
at a time (so at most one guess a second, whoever sends them); the right token never waits.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import ServingError
from .control_api import json_error

if TYPE_CHECKING:
    from .stack import LocalStack


#: seconds before a refused attempt is answered; refused attempts are answered one at a time
FAILED_ATTEMPT_DELAY = 1.0
#: refused attempts waiting for their answer beyond which new ones get 429 at once
MAX_WAITING_FAILURES = 8


class AdminApi:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self._failures = asyncio.Lock()
        self._waiting_failures = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/status", self.status),
            web.put("/admin/traffic", self.traffic),
            web.put("/admin/predictors", self.predictors),
        ]

    async def _authorised(self, request: web.Request) -> web.Response | None:
        refused = self._check_token(request)
        if refused is None:
            return None
        if self._waiting_failures >= MAX_WAITING_FAILURES:
            return web.json_response(
                {"error": "too many refused admin attempts; retry later"}, status=429,
                headers={"retry-after": str(int(FAILED_ATTEMPT_DELAY * MAX_WAITING_FAILURES))})
        self._waiting_failures += 1
        try:
            async with self._failures:  # one refused attempt per FAILED_ATTEMPT_DELAY
                await asyncio.sleep(FAILED_ATTEMPT_DELAY)
        finally:
            self._waiting_failures -= 1
        return refused

    def _check_token(self, request: web.Request) -> web.Response | None:
        expected = self.stack.admin_token
        if not expected:
            return json_error(
                403,
                "admin changes are disabled: start the router with "
                f"{self.stack.spec.router.admin_token_env} set",
            )
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return json_error(
                401,
                "admin changes need 'Authorization: Bearer <token>' (the "
                "token is in the stack state file, see 'serving status')",
            )
        if not hmac.compare_digest(header.removeprefix("Bearer ").encode(), expected.encode()):
            return json_error(403, "wrong admin token")
        return None

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"{}")
        except json.JSONDecodeError as e:
            raise ServingError(f"request body is not JSON: {e}", status_code=400) from e
        if not isinstance(body, dict):
            raise ServingError("request body must be a JSON object", status_code=400)
        return body

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.stack.core.status())

    async def traffic(self, request: web.Request) -> web.Response:
        if (denied := await self._authorised(request)) is not None:
            return denied
        try:
            body = await self._json(request)
            unknown = set(body) - {"weights", "mirrorPercent"}
            if unknown:
                raise ServingError(
                    f"unknown keys {sorted(unknown)}; expected 'weights' and/or 'mirrorPercent'",
                    status_code=400,
                )
            routes = await self.stack.set_traffic(body.get("weights"), body.get("mirrorPercent"))
        except ServingError as e:
            return json_error(e.status_code, e.message)
        return web.json_response(routes)

    async def predictors(self, request: web.Request) -> web.Response:
        if (denied := await self._authorised(request)) is not None:
            return denied
        try:
            body = await self._json(request)
            if not isinstance(body.get("predictors"), list):
                raise ServingError('expected {"predictors": [...]}', status_code=400)
            await self.stack.reconcile(body["predictors"])
        except ServingError as e:
            return json_error(e.status_code, e.message)
        return web.json_response(self.stack.core.status())
