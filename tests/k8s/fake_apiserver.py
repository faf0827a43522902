"""A Kubernetes API server over real HTTP, in-process, for testing the client path.

It behaves like the real one where our code depends on it:
- discovery (/version, /api, /apis, group versions) so the official dynamic client works unchanged;
- bearer-token auth from a kubeconfig, 401 otherwise;
- errors are `Status` objects (404 NotFound with details.kind, 409 Conflict with causes, 415 ...);
- server-side apply (application/apply-patch+yaml) needs a fieldManager, creates missing objects,
  refuses objects in a missing namespace, tracks field ownership per (manager, operation) with
  lists atomic (the SeldonDeployment CRD declares no list-map keys) and answers 409 with one cause
  per conflicting field unless force=true; fields the applier stops sending are removed;
- merge patch (RFC 7386) and JSON patch (RFC 6902, via the jsonpatch library; a failed `test` is a
  422) are "Update" operations that take ownership of the fields they change;
- strategic-merge patch is refused with 415 for custom resources (accepted for built-in kinds);
- metadata.generation moves when spec changes; resourceVersion on every write.

`operator` lets a test play the Seldon operator: it is called on every read of a
SeldonDeployment with the object and the read count, and may set its status.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import yaml
from aiohttp import web

TOKEN = "test-token"


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTIN = [
    Kind("", "v1", "Namespace", "namespaces", namespaced=False),
    Kind("", "v1", "Pod", "pods"),
    Kind("", "v1", "Event", "events"),
    Kind("", "v1", "ConfigMap", "configmaps"),
    Kind("", "v1", "Service", "services"),
    Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
    Kind("apps", "v1", "Deployment", "deployments"),  # the chart's comparator
]
SELDON = Kind(
    "machinelearning.seldon.io", "v1", "SeldonDeployment", "seldondeployments", custom=True
)
MONITORING = [
    Kind("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors", custom=True),
    Kind("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", custom=True),
]

Leaf = tuple[str, ...]
Manager = tuple[str, str]  # (manager, operation)


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def leaves(obj: Any, prefix: Leaf = ()) -> dict[Leaf, Any]:
    """Leaf paths of a config: maps are walked, lists and scalars are atomic."""
    if isinstance(obj, dict) and obj:
        out: dict[Leaf, Any] = {}
        for k, v in obj.items():
            out.update(leaves(v, (*prefix, k)))
        return out
    return {prefix: obj}


def get_path(obj: Any, path: Leaf) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def set_path(obj: dict[str, Any], path: Leaf, value: Any) -> None:
    for part in path[:-1]:
        obj = obj.setdefault(part, {})
    obj[path[-1]] = copy.deepcopy(value)


def del_path(obj: dict[str, Any], path: Leaf) -> None:
    parents = []
    for part in path[:-1]:
        if part not in obj:
            return
        parents.append((obj, part))
        obj = obj[part]
    obj.pop(path[-1], None)
    for parent, key in reversed(parents):  # prune maps left empty
        if parent[key] == {}:
            del parent[key]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def dotted(path: Leaf) -> str:
    return "." + ".".join(path)


SERVER_FIELDS = {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"}


def user_leaves(obj: dict[str, Any]) -> dict[Leaf, Any]:
    return {
        p: v
        for p, v in leaves(obj).items()
        if p[:1] not in (("status",), ("apiVersion",), ("kind",))
        and not (
            len(p) >= 2 and p[0] == "metadata" and p[1] in SERVER_FIELDS | {"name", "namespace"}
        )
    }


class FakeApiServer:
    def __init__(self, *, seldon: bool = True, monitoring: bool = True):
        self.kinds = BUILTIN + ([SELDON] if seldon else []) + (MONITORING if monitoring else [])
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.owners: dict[tuple[str, str, str, str], dict[Leaf, Manager]] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.operator: Callable[[dict[str, Any], int], None] | None = None
        self.reads: dict[tuple[str, str, str, str], int] = {}
        self._lock = threading.Lock()
        self._rv = itertools.count(1000)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeApiServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = web.Application(middlewares=[self._auth])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            assert self._runner is not None
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self._loop.run_until_complete(site.start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": TOKEN}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # ---- direct access for tests (plays kubectl / the operator) --------------------------
    def _kind(self, api_version: str, kind: str) -> Kind:
        return next(k for k in self.kinds if k.api_version == api_version and k.kind == kind)

    def key(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> tuple[str, str, str, str]:
        k = self._kind(api_version, kind)
        return (k.api_version, k.plural, namespace if k.namespaced else "", name)

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            key = self.key(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
            self.objects[key] = self._stamp(copy.deepcopy(obj), None)

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        with self._lock:
            obj = self.objects.get(self.key(api_version, kind, namespace, name))
            return copy.deepcopy(obj)

    # ---- HTTP ----------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            (request.method, request.path, request.headers.get("Content-Type", ""))
        )
        with self._lock:
            return self._dispatch(request, body)

    def _dispatch(self, request: web.Request, body: bytes) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            return web.json_response(self._groups())
        if parts == ["api", "v1"]:
            return web.json_response(self._resource_list("", "v1"))
        if len(parts) == 3 and parts[0] == "apis":
            return web.json_response(self._resource_list(parts[1], parts[2]))
        return self._resource_request(request, parts, body)

    def _groups(self) -> dict[str, Any]:
        groups = []
        for group in sorted({k.group for k in self.kinds if k.group}):
            version = {"groupVersion": f"{group}/v1", "version": "v1"}
            groups.append({"name": group, "versions": [version], "preferredVersion": dict(version)})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for k in self.kinds:
            if k.group == group and k.version == version:
                resources.append(
                    {
                        "name": k.plural,
                        "singularName": k.kind.lower(),
                        "namespaced": k.namespaced,
                        "kind": k.kind,
                        "verbs": ["get", "list", "patch", "create", "update", "delete", "watch"],
                    }
                )
                if k.custom:
                    resources.append(
                        {
                            "name": f"{k.plural}/status",
                            "singularName": "",
                            "namespaced": k.namespaced,
                            "kind": k.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
        gv = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }

    def _resource_request(
        self, request: web.Request, parts: list[str], body: bytes
    ) -> web.StreamResponse:
        # /api/v1/... or /apis/<group>/<version>/..., then [namespaces/<ns>/]<plural>[/<name>]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return status(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        kind = next(
            (
                k
                for k in self.kinds
                if (k.group, k.version, k.plural) == (group, version, rest[0] if rest else "")
            ),
            None,
        )
        if kind is None:
            return status(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        key = (kind.api_version, kind.plural, namespace or "", name or "")
        if request.method == "GET":
            return self._get(kind, key, namespace, name, request)
        if request.method == "PATCH" and name:
            return self._patch(kind, key, namespace, name, request, body)
        return status(
            405, "MethodNotAllowed", f"{request.method} is not supported by this test server"
        )

    def _not_found(self, kind: Kind, name: str) -> web.Response:
        resource = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
        return status(
            404,
            "NotFound",
            f'{resource} "{name}" not found',
            name=name,
            group=kind.group,
            kind=kind.plural,
        )

    def _get(
        self, kind: Kind, key: Any, namespace: str | None, name: str | None, request: web.Request
    ) -> web.Response:
        if name:
            obj = self.objects.get(key)
            if obj is None:
                return self._not_found(kind, name)
            if kind == SELDON and self.operator is not None:
                self.reads[key] = self.reads.get(key, 0) + 1
                self.operator(obj, self.reads[key])
            return web.json_response(obj)
        items = [
            o
            for (av, plural, ns, _), o in sorted(self.objects.items())
            if (av, plural) == (kind.api_version, kind.plural)
            and (namespace is None or ns == namespace)
            and self._selected(
                o, request.query.get("labelSelector"), request.query.get("fieldSelector")
            )
        ]
        return web.json_response(
            {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(next(self._rv))},
                "items": items,
            }
        )

    @staticmethod
    def _selected(obj: dict[str, Any], labels: str | None, fields: str | None) -> bool:
        for term in filter(None, (labels or "").split(",")):
            k, _, v = term.partition("=")
            if (obj["metadata"].get("labels") or {}).get(k) != v:
                return False
        for term in filter(None, (fields or "").split(",")):
            k, _, v = term.partition("=")
            if str(get_path(obj, tuple(k.split(".")))) != v:
                return False
        return True

    def _patch(
        self,
        kind: Kind,
        key: Any,
        namespace: str | None,
        name: str,
        request: web.Request,
        body: bytes,
    ) -> web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0]
        manager = request.query.get("fieldManager")
        current = self.objects.get(key)
        if content_type == "application/apply-patch+yaml":
            return self._apply(kind, key, namespace, name, request, body, manager)
        if current is None:
            return self._not_found(kind, name)
        if content_type == "application/strategic-merge-patch+json" and kind.custom:
            return status(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        patch = json.loads(body or b"null")
        if content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            updated = merge_patch(current, patch)
        elif content_type == "application/json-patch+json":
            try:
                updated = jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                return status(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: {e}",
                )
        else:
            return status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type}",
            )
        # A patch that names a resourceVersion is a precondition, as on a real API server.
        wanted = ((patch or {}).get("metadata") or {}).get("resourceVersion") if isinstance(
            patch, dict) else None
        if wanted is not None and wanted != current["metadata"].get("resourceVersion"):
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if request.query.get("dryRun") == "All":
            return web.json_response(updated)
        owners = self.owners.setdefault(key, {})
        changed = {p for p, v in user_leaves(updated).items() if get_path(current, p) != v}
        for p in list(owners):
            if any(p[: len(c)] == c or c[: len(p)] == p for c in changed):
                del owners[p]
        for p in changed:
            owners[p] = (manager or "unknown", "Update")
        self.objects[key] = self._stamp(updated, current)
        return web.json_response(self.objects[key])

    def _apply(
        self,
        kind: Kind,
        key: Any,
        namespace: str | None,
        name: str,
        request: web.Request,
        body: bytes,
        manager: str | None,
    ) -> web.Response:
        if not manager:
            return status(
                400,
                "BadRequest",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
            )
        config = yaml.safe_load(body)
        if (
            config.get("kind") != kind.kind
            or config.get("apiVersion") != kind.api_version
            or config.get("metadata", {}).get("name") != name
        ):
            return status(
                400,
                "BadRequest",
                "apply config does not match the request's kind, apiVersion or name",
            )
        if kind.namespaced and ("v1", "namespaces", "", namespace) not in self.objects:
            return status(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                name=namespace,
                kind="namespaces",
            )
        current = self.objects.get(key)
        owners = self.owners.setdefault(key, {})
        me: Manager = (manager, "Apply")
        applied = user_leaves(config)
        conflicts = []
        for p in applied:
            for owned, who in owners.items():
                overlaps = owned[: len(p)] == p or p[: len(owned)] == owned
                if who != me and overlaps and get_path(current, owned) != get_path(config, owned):
                    conflicts.append((owned, who[0]))
        force = request.query.get("force") in ("true", "True")
        if conflicts and not force:
            causes = [
                {
                    "type": "FieldManagerConflict",
                    "message": f'conflict with "{who}": {dotted(p)}',
                    "field": dotted(p),
                }
                for p, who in sorted(set(conflicts))
            ]
            summary = "; ".join(c["message"] for c in causes)
            return status(
                409,
                "Conflict",
                f"Apply failed with {len(causes)} conflict(s): {summary}",
                causes=causes,
            )
        obj = (
            copy.deepcopy(current)
            if current
            else {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": name}}
        )
        if kind.namespaced:
            obj["metadata"]["namespace"] = namespace
        # Fields this manager applied before but no longer sends are removed (unless others own them).
        for p, who in list(owners.items()):
            if who == me and p not in applied:
                del owners[p]
                if p not in owners:
                    del_path(obj, p)
        for p, v in applied.items():
            set_path(obj, p, v)
            for owned in [o for o in owners if o != p and (o[: len(p)] == p or p[: len(o)] == o)]:
                del owners[owned]
            owners[p] = me
        if request.query.get("dryRun") == "All":
            return web.json_response(obj)
        self.objects[key] = self._stamp(obj, current)
        return web.json_response(self.objects[key], status=200 if current else 201)

    def _stamp(self, obj: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if previous is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            if "spec" in obj:
                meta["generation"] = 1
        elif obj.get("spec") != previous.get("spec"):
            meta["generation"] = int(previous["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = str(next(self._rv))
        return obj
