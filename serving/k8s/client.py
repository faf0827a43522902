"""The official kubernetes client, connected once, and its errors turned into ServingErrors.

The dynamic client discovers every API the cluster serves, so one code path applies and reads any
kind (built-in or custom) by apiVersion + kind, as kubectl does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import config
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

from .errors import ClusterError

SELDON_API = "machinelearning.seldon.io/v1"
FIELD_MANAGER = "serving"
"""The field manager of every server-side apply and patch this package sends."""


def connect(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    discovery_cache: str | None = None,
) -> DynamicClient:
    """A client for the kubeconfig (default $KUBECONFIG or ~/.kube/config) and context, or the
    pod's service account when running inside a cluster without a kubeconfig."""
    try:
        if kubeconfig is None and context is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            api = ApiClient()
            config.load_incluster_config(client_configuration=api.configuration)
        else:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, OSError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClusterError(
            f"cannot load the kubeconfig {where}"
            + (f" (context {context!r})" if context else "")
            + f": {e}; pass --kubeconfig/--context or set KUBECONFIG"
        ) from None
    try:
        return DynamicClient(api, cache_file=discovery_cache)
    except Exception as e:  # discovery: unreachable server, TLS, auth
        raise ClusterError(f"cannot reach the API server at {api.configuration.host}: {e}") from e


def status_of(e: ApiException) -> dict[str, Any]:
    """The `Status` object an API server sends with every error (empty when it sent none)."""
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


def describe(e: ApiException) -> str:
    status = status_of(e)
    message = status.get("message") or (e.body or "") or e.reason or ""
    return f"{e.status} {status.get('reason') or e.reason}: {message}".strip()


def resource(api: DynamicClient, api_version: str, kind: str) -> Resource:
    try:
        return api.resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        hint = (
            "install Seldon Core v1 (its CRD and operator) first"
            if api_version == SELDON_API
            else "install the operator that provides it, or disable it in the values"
        )
        raise ClusterError(f"the cluster serves no {api_version} {kind} API; {hint}") from None


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """Turn an API error into a ClusterError that says what was being done."""
    try:
        yield
    except ApiException as e:
        raise ClusterError(f"{what}: {describe(e)}") from None
