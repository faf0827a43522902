"""gRPC front end: inference.GRPCInferenceService routed by the metadata Seldon's Istio routes use
(`seldon: <deployment>`, `namespace: <namespace>`). Messages are forwarded as raw bytes; only
mirrored answers are decoded, in the background, for the comparison."""

from __future__ import annotations

import time
from typing import Any

import grpc

from .compare import outputs_from_grpc
from .core import PREDICTOR_HEADER, RouterCore, UpstreamConnectError, error_status
from .replicas import Replica

SERVICE = "inference.GRPCInferenceService"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def service_of(method: str) -> str:
    name = method.rsplit("/", 1)[-1]
    if name == "ModelInfer":
        return "infer"
    if name.endswith("Ready"):
        return "ready"
    if name == "ServerLive":
        return "live"
    return "metadata"


class UpstreamRpcError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class GrpcFront(grpc.GenericRpcHandler):
    def __init__(self, core: RouterCore) -> None:
        self.core = core
        self.sticky = core.settings.sticky_header.lower()
        self.timeout = core.settings.upstream_timeout_seconds

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(f"/{SERVICE}/"):
            return None

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.handle(method, request, context)

        # No (de)serializers: requests and responses pass through as bytes.
        return grpc.unary_unary_rpc_method_handler(handler)

    async def send(self, replica: Replica, method: str, request: bytes) -> bytes:
        call = replica.channel().unary_unary(method)
        try:
            return bytes(await call(request, timeout=self.timeout))
        except grpc.aio.AioRpcError as e:
            if e.code() in RETRYABLE:
                raise UpstreamConnectError(e.details() or "unavailable") from e
            raise UpstreamRpcError(e.code(), e.details() or "") from e

    async def handle(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        core = self.core
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        dep, ns = metadata.get("seldon"), metadata.get("namespace")
        if (dep, ns) != (core.deployment, core.namespace):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no SeldonDeployment for metadata seldon={dep!r} namespace={ns!r}; send "
                f"metadata seldon={core.deployment}, namespace={core.namespace}",
            )
        service = service_of(method)
        try:
            pool, _ = core.select(
                metadata.get(PREDICTOR_HEADER), metadata.get(self.sticky) if self.sticky else None
            )
        except Exception as e:
            status, message = error_status(e)
            await context.abort(HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL), message)

        async def mirrored(replica: Replica) -> tuple[str, bytes | None]:
            try:
                return "OK", await self.send(replica, method, request)
            except UpstreamRpcError as e:
                return e.code.name, None

        shadow = core.mirror_if_due(service, pool, mirrored, "unary", outputs_from_grpc)
        started = time.perf_counter()
        response: bytes | None = None
        code = grpc.StatusCode.OK
        details = ""
        try:
            response, pool = await core.call(pool, lambda r: self.send(r, method, request))
        except UpstreamRpcError as e:
            code, details = e.code, e.details
        except Exception as e:
            status, details = error_status(e)
            code = HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL)
        core.observe(pool, service, "unary", code.name, started)
        context.set_trailing_metadata(((PREDICTOR_HEADER, pool.name),))
        if shadow is not None:
            shadow.finish(response, pool.name)
        if response is None:
            await context.abort(code, details)
        assert response is not None
        return response
