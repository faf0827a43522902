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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jinja2

from ..errors import ServingError
from ..server import child_env, child_setup, kill_group, listener_on
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


TEMPLATE = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=False,
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
).get_template("nginx.conf.j2")


def render_config(spec: Spec, rest_port: int, grpc_port: int, prefix: Path, sockets: Sockets,
                  error_log: Path, pin_token: str) -> str:
    """nginx.conf for the stack (nginx.conf.j2). `pin_token` is what callers must send in
    x-serving-pin-token to pin a predictor; the config sits in the stack's private run folder."""
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
        "model": spec.model.name,
        "seldonPrefix": f"/seldon/{d.namespace}/{d.name}",
        "pinToken": pin_token,
        "pinTokenEnv": rs.pin_token_env,
        "allowShadowPin": rs.allow_shadow_pin,
    }
    sticky = ("ngx.var.http_" + rs.sticky_header.lower().replace("-", "_")
              if rs.sticky_header else "nil")
    return TEMPLATE.render(
        namespace=d.namespace, deployment=d.name, seldon_prefix=f"/seldon/{d.namespace}/{d.name}",
        run_as_root=os.geteuid() == 0, prefix=prefix, error_log=error_log,
        modules_dir=MODULES_DIR, lua_dir=LUA_DIR, lua_conf=json.dumps(lua_conf),
        max_body_bytes=rs.max_body_bytes, timeout=f"{rs.upstream_timeout_seconds:g}s",
        host=rs.host, rest_port=rest_port, grpc_port=grpc_port, sticky=sticky,
        control_socket=sockets.control, table_socket=sockets.table,
    )


class Nginx:
    """One nginx master (and its worker) for the stack, stopped with it. The master runs in a
    process group of its own: when it dies, its workers (orphaned, still holding the ports with
    `reuseport` and routing by a stale table) are ended with their group before a new master
    starts, and nginx never starts on a port another process listens on."""

    def __init__(self, config: str, prefix: Path, sockets: Sockets,
                 listen: Sequence[tuple[str, int]] = (), hidden_env: Sequence[str] = ()) -> None:
        self.prefix = prefix
        self.sockets = sockets
        self.config_path = prefix / "nginx.conf"
        self.config = config
        self.listen = tuple(listen)
        """The (host, port) pairs the config listens on: checked free before every start."""
        self.hidden_env = tuple(hidden_env)
        self.process: subprocess.Popen[bytes] | None = None
        self._group_ended = False  # once ended, its id may be reused: never signal it again
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sockets.table)),
                                    base_url="http://nginx", timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        executable = nginx_executable()
        self._end_group()  # what is left of a previous master: its orphaned workers
        for host, port in self.listen:
            if (holder := listener_on(host, port)) is not None:
                raise ServingError(
                    f"port {port} on {host} is already in use by {holder}: not starting nginx "
                    "there (it listens with reuseport, so it would share the port and callers "
                    "would reach that process too); stop it or choose another port")
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        command = [executable, "-p", str(self.prefix), "-c", str(self.config_path)]
        check = subprocess.run(command + ["-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServingError(f"nginx refused its config {self.config_path}: "
                               f"{check.stderr.strip()}")
        # Dies with the control process (PR_SET_PDEATHSIG), like the model servers; its own
        # process group, so that its workers are ended with it (stop(), _end_group()).
        with contextlib.suppress(FileNotFoundError):
            self.sockets.table.unlink()  # left by an nginx that was killed
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        env=child_env(self.hidden_env),
                                        preexec_fn=child_setup(0), process_group=0)
        self._group_ended = False
        deadline = time.monotonic() + timeout
        while not self.sockets.table.exists():
            if self.process.poll() is not None:
                raise ServingError(f"nginx exited with code {self.process.returncode}; see the "
                                   "error log next to its config in " + str(self.prefix))
            if time.monotonic() > deadline:
                raise ServingError(f"nginx did not start within {timeout:g}s")
            time.sleep(0.02)

    def _end_group(self) -> None:
        """SIGKILL the previous master's process group (the master and every worker, orphaned
        or not) and wait until none of it runs."""
        if self.process is None or self._group_ended:
            return
        kill_group(self.process.pid)
        self.process.wait()
        self._group_ended = True

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
        """Graceful (SIGQUIT: finish requests in flight), then SIGKILL to master and workers."""
        self._client.close()
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        self._end_group()  # a worker that outlived its master
