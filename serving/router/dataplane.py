"""The data plane: nginx (Debian's package, with its Lua module) forwards every request.

Why nginx: on the cluster, Seldon's traffic goes through Istio's Envoy, a compiled proxy; a Python
proxy in the request path cost 0.6-1.8 ms and up to 550 us of CPU per request on 2 cores (see
README, "What the router costs"). nginx forwards REST and gRPC (HTTP/2) at close to direct speed.

The config written here is static for the life of the stack: ports, the Seldon URL prefix, limits
and timeouts. Everything that changes (weights, mirror percentage, which replicas are live) is a
routing table the control process pushes over a unix socket (`push_table`), read per request by
lua/router.lua, so changes are atomic and need no reload (a reload closes idle keep-alive
connections, and a request racing that close would be lost).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..errors import ServingError
from ..server import child_setup
from ..spec import Spec

LUA_DIR = Path(__file__).parent / "lua"
MODULES_DIR = Path("/usr/lib/nginx/modules")
INSTALL_HINT = ("install nginx, its Lua module and lua-cjson: 'make dataplane', or apt-get install "
                "nginx-light libnginx-mod-http-lua lua-cjson (Debian/Ubuntu)")


def nginx_executable() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    have_cjson = any(Path("/usr/lib").glob("*/lua/5.1/cjson.so"))
    if found is None or not (MODULES_DIR / "ngx_http_lua_module.so").exists() or not have_cjson:
        raise ServingError(f"the local router needs nginx with Lua: {INSTALL_HINT}")
    return found


@dataclass(frozen=True)
class Sockets:
    """Unix sockets between nginx, the control process and the shadow worker, in one short
    temporary folder (socket paths are limited to 108 bytes, state dirs may be longer)."""

    folder: Path

    @property
    def control(self) -> Path:  # control process: admin API, /metrics, /healthz
        return self.folder / "control.sock"

    @property
    def table(self) -> Path:  # nginx: PUT /table, GET /counters
        return self.folder / "table.sock"

    @property
    def telemetry(self) -> Path:  # control process: metrics lines from nginx
        return self.folder / "telemetry.sock"

    @property
    def shadow(self) -> Path:  # shadow worker: mirrored request/answer pairs from nginx
        return self.folder / "shadow.sock"


# Set by router.lua's access(); nginx variables rather than ngx.ctx because they must survive
# error_page's internal redirect.
REQUEST_VARIABLES = "".join(f'    set ${name} "";\n' for name in (
    "predictor", "predictor_version", "service", "started", "fallback_from", "counted"))


def forwarding(module: str, kind: str, timeout: str) -> str:
    """What REST (module 'proxy') and gRPC (module 'grpc') forwarding share: a refused or reset
    connection is tried once more on another replica; nginx's own errors (502 no replica
    reachable, 504 timeout, 413 body too large) are answered by router.lua in the caller's
    protocol."""
    lines = [f'      {module}_set_header x-seldon-predictor "";',
             f"      {module}_next_upstream error non_idempotent;",
             f"      {module}_next_upstream_tries 2;",
             f"      {module}_connect_timeout 2s;",
             f"      {module}_read_timeout {timeout};",
             f"      {module}_send_timeout {timeout};"]
    lines += [f"      error_page {code} = @{kind}_{code};" for code in (502, 504, 413)]
    lines.append("    }")
    lines += [f"    location @{kind}_{code} {{ content_by_lua_block {{ "
              f'require("router").upstream_error("{kind}", {code}) }} }}'
              for code in (502, 504, 413)]
    return "\n".join(lines) + "\n"


def replicas_upstream(name: str) -> str:
    return f"""  upstream {name} {{
    server 0.0.0.1;              # placeholder: router.lua's balance() picks the replica
    balancer_by_lua_block {{ require("router").balance() }}
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 4s;        # below MLServer's 5 s, so nginx never reuses a closing one
  }}
"""


def to_control(location: str) -> str:
    """A location of the REST port served by the control process (admin API, metrics)."""
    return (f"    location {location} {{ proxy_pass http://control; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; }\n')


def render_config(spec: Spec, rest_port: int, grpc_port: int, prefix: Path, sockets: Sockets,
                  error_log: Path) -> str:
    rs = spec.router
    d = spec.deployment
    lua_conf = {
        "telemetrySocket": f"unix:{sockets.telemetry}",
        "shadowSocket": f"unix:{sockets.shadow}",
        "maxHandoffs": rs.shadow.max_in_flight,
        # mirrored pairs go to the shadow worker every Shadowing.handoff_seconds (router.lua hand_over)
        "handoffInterval": rs.shadow.handoff_seconds,
        "handoffTimeoutMs": 1000,
        "upstreamTimeout": f"{rs.upstream_timeout_seconds:g}",
        "maxBodyBytes": rs.max_body_bytes,
    }
    sticky = ("ngx.var.http_" + rs.sticky_header.lower().replace("-", "_")
              if rs.sticky_header else "nil")
    timeout = f"{rs.upstream_timeout_seconds:g}s"
    user = "user root;" if os.geteuid() == 0 else ""  # else nginx's workers run as 'nobody'
    return f"""# Written by serving/router/dataplane.py for {d.namespace}/{d.name}; do not edit.
{user}
worker_processes 1;
worker_shutdown_timeout 3s;     # a graceful stop never waits on a slow model for long
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {error_log} warn;
load_module {MODULES_DIR}/ndk_http_module.so;
load_module {MODULES_DIR}/ngx_http_lua_module.so;
events {{ worker_connections 8192; }}
http {{
  access_log off;                # metrics lines go to the control process instead (router.lua)
  server_tokens off;
  default_type application/json;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  client_max_body_size {rs.max_body_bytes};
  client_body_buffer_size {rs.max_body_bytes};   # bodies stay in memory: mirrored, retried
  client_body_in_single_buffer on;
  keepalive_requests 1000000;    # nginx's default (1000) makes clients reconnect needlessly
  lua_package_path "{LUA_DIR}/?.lua;;";
  lua_shared_dict router 16m;
  lua_max_pending_timers 4096;
  lua_max_running_timers 1024;
  init_by_lua_block {{ require("router").init(require("cjson").decode([[{json.dumps(lua_conf)}]])) }}
  init_worker_by_lua_block {{ require("router").init_worker() }}

{replicas_upstream("rest_replicas")}{replicas_upstream("grpc_replicas")}  upstream control {{ server unix:{sockets.control}; keepalive 4; }}
  # What is forwarded: the path after the prefix, still percent-encoded as the caller sent it
  # (nginx's $uri is decoded; forwarding it would let %0D%0A or %20 reshape the request).
  map $request_uri $tail {{
    "~^/seldon/{d.namespace}/{d.name}(?<rest>/.*)$" $rest;
    default "/";
  }}

  server {{                       # REST, as Seldon's Istio gateway: /seldon/<ns>/<deployment>/
    listen {rs.host}:{rest_port} reuseport;
{REQUEST_VARIABLES}    header_filter_by_lua_block {{ require("router").header_filter() }}
    log_by_lua_block {{ require("router").log("rest") }}

    location ~ ^/seldon/{d.namespace}/{d.name}/ {{
      access_by_lua_block {{ require("router").access("rest", {sticky}) }}
      body_filter_by_lua_block {{ require("router").body_filter() }}
      proxy_pass http://rest_replicas$tail;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{forwarding("proxy", "rest", timeout)}    location /seldon/ {{
      return 404 '{{"error": "no SeldonDeployment at this path; this router serves /seldon/{d.namespace}/{d.name}/"}}\\n';
    }}
{to_control("/admin/")}{to_control("= /metrics")}{to_control("= /healthz")}    location / {{
      return 404 '{{"error": "not found; inference is under /seldon/{d.namespace}/{d.name}/v2/"}}\\n';
    }}
  }}

  server {{                       # gRPC, routed by the metadata Seldon's Istio routes use
    listen {rs.host}:{grpc_port} http2 reuseport;
{REQUEST_VARIABLES}    header_filter_by_lua_block {{ require("router").header_filter() }}
    log_by_lua_block {{ require("router").log("grpc") }}
    set $grpc_error_type "";       # router.lua sets it for its own errors: nginx drops the
    add_header content-type $grpc_error_type always;  # content type of a 204 otherwise

    location /inference.GRPCInferenceService/ {{
      access_by_lua_block {{
        local r = require("router")
        if ngx.var.http_seldon ~= "{d.name}" or ngx.var.http_namespace ~= "{d.namespace}" then
          return r.reject_grpc_metadata("{d.name}", "{d.namespace}")
        end
        r.access("grpc", {sticky})
      }}
      body_filter_by_lua_block {{ require("router").body_filter() }}
      grpc_pass grpc://grpc_replicas;
{forwarding("grpc", "grpc", timeout)}    location / {{
      content_by_lua_block {{ require("router").reject_unimplemented() }}
    }}
  }}

  server {{                       # the control process's side door: routing table, counters
    listen unix:{sockets.table};
    location = /table {{ content_by_lua_block {{ require("router").put_table() }} }}
    location = /counters {{ content_by_lua_block {{ require("router").counters() }} }}
  }}
}}
"""


class Nginx:
    """One nginx master (and its worker) for the stack, stopped with it."""

    def __init__(self, config: str, prefix: Path, sockets: Sockets) -> None:
        self.prefix = prefix
        self.sockets = sockets
        self.config_path = prefix / "nginx.conf"
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sockets.table)),
                                    base_url="http://nginx", timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        executable = nginx_executable()
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        command = [executable, "-p", str(self.prefix), "-c", str(self.config_path)]
        check = subprocess.run(command + ["-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServingError(f"nginx refused its config {self.config_path}: "
                               f"{check.stderr.strip()}")
        # Dies with the control process (PR_SET_PDEATHSIG), like the model servers; its own
        # process group, so that stop() can end the master and its worker together.
        with contextlib.suppress(FileNotFoundError):
            self.sockets.table.unlink()  # left by an nginx that was killed
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        preexec_fn=child_setup(0), process_group=0)
        deadline = time.monotonic() + timeout
        while not self.sockets.table.exists():
            if self.process.poll() is not None:
                raise ServingError(f"nginx exited with code {self.process.returncode}; see the "
                                   "error log next to its config in " + str(self.prefix))
            if time.monotonic() > deadline:
                raise ServingError(f"nginx did not start within {timeout:g}s")
            time.sleep(0.02)

    def push_table(self, table: dict[str, Any]) -> None:
        resp = self._client.put("/table", content=json.dumps(table))
        if resp.status_code != 200:
            raise ServingError(f"nginx refused the routing table: {resp.text.strip()}")

    def in_flight(self, pool_uid: int) -> int:
        """A pool's requests in flight, as nginx counts them (0 when nginx does not answer)."""
        try:
            counters = self._client.get("/counters", params={"in_flight": pool_uid}).json()
            return int(counters.get("inFlight", 0))
        except (httpx.HTTPError, ValueError):
            return 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """Graceful (SIGQUIT: finish requests in flight), then SIGKILL to master and worker."""
        self._client.close()
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a worker that outlived its master
        self.process.wait()
