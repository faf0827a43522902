"""The floor under the router's cost: what a proxy with no routing logic costs on this machine.

    python -m serving.bench.proxy_floor --models models [--protocol grpc] [--concurrency 16]
        [--duration 8] [--repeat 3]

router_bench says what the router adds to straight MLServer. This says how much of that any proxy
would add here, by putting bare proxies in front of the same replica, with the same driver:
  direct        straight to the stable replica's MLServer
  nginx-bare    the router's nginx binary and keep-alive settings, proxy_pass / grpc_pass to the
                replica, no Lua: no split, no metrics, no mirror
  haproxy-bare  HAProxy, when installed (apt-get install haproxy), HTTP/2 to the replica with
                the streams of all clients multiplexed on shared connections (nginx opens one
                upstream connection per stream)
  router        the local router: nginx with router.lua
Runs are interleaved (ABCD, DCBA, ...) and pooled, as in router_bench. A target the bare proxies
miss too is a limit of the machine, not of the router's logic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..dataset import sample_rows
from ..router.dataplane import nginx_executable
from ..router.stack import stop_background
from ..server import free_port
from ..training import MODEL_NAME
from .driver import LoadResult, Target, pooled_cpu_us, pooled_percentile, run_load
from .mlserver_bench import log, session_cpu_s
from .router_bench import start_stack


def nginx_bare_config(prefix: Path, rest_upstream: str, grpc_upstream: str, rest_port: int,
                      grpc_port: int) -> str:
    """The router's nginx settings that matter for speed (one worker, keep-alive upstreams),
    nothing else."""
    user = "user root;" if os.geteuid() == 0 else ""
    upstream = ("keepalive 64; keepalive_requests 1000000; keepalive_timeout 4s;")
    return f"""{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  upstream rest_replica {{ server {rest_upstream}; {upstream} }}
  upstream grpc_replica {{ server {grpc_upstream}; {upstream} }}
  server {{
    listen 127.0.0.1:{rest_port} reuseport;
    location / {{ proxy_pass http://rest_replica; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{grpc_port} http2 reuseport;
    location / {{ grpc_pass grpc://grpc_replica; }}
  }}
}}
"""


def haproxy_bare_config(rest_upstream: str, grpc_upstream: str, rest_port: int,
                        grpc_port: int) -> str:
    return f"""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend rest
  bind 127.0.0.1:{rest_port}
  default_backend rest_replica
frontend grpc
  bind 127.0.0.1:{grpc_port} proto h2
  default_backend grpc_replica
backend rest_replica
  http-reuse always
  server replica {rest_upstream}
backend grpc_replica
  http-reuse always
  server replica {grpc_upstream} proto h2
"""


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="grpc")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = sample_rows(1000, seed=5)
    haproxy = shutil.which("haproxy")
    results: dict[str, list[LoadResult]] = {}
    proxies: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="proxy-floor-") as tmp:
        process, state = start_stack(args.models, Path(tmp), with_shadow=False)
        try:
            status = httpx.get(state["restUrl"] + "/admin/status").json()
            replica = next(p for p in status["predictors"] if p["name"] == "stable")[
                "replicas"][0]
            rest_upstream = replica["url"].removeprefix("http://").rstrip("/")
            grpc_upstream = replica["grpc"]
            ports = {name: (free_port(), free_port()) for name in ("nginx", "haproxy")}
            prefix = Path(tmp) / "nginx-bare"
            prefix.mkdir()
            (prefix / "nginx.conf").write_text(
                nginx_bare_config(prefix, rest_upstream, grpc_upstream, *ports["nginx"]))
            proxies.append(subprocess.Popen(
                [nginx_executable(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                 "-e", str(prefix / "error.log")], start_new_session=True))
            wait_for_port(ports["nginx"][1], proxies[-1])
            metadata = {"seldon": state["deployment"], "namespace": state["namespace"]}

            def target(address: str, grpc_address: str) -> Target:
                if args.protocol == "rest":
                    return Target.rest(address, MODEL_NAME)
                return Target.grpc(grpc_address, MODEL_NAME, metadata=metadata)

            targets = {
                "direct": target(replica["url"], grpc_upstream),
                "nginx-bare": target(f"http://127.0.0.1:{ports['nginx'][0]}",
                                     f"127.0.0.1:{ports['nginx'][1]}"),
                "router": target(state["seldonUrl"], state["grpcTarget"]),
            }
            probes: dict[str, Callable[[], float]] = {
                "router": lambda: session_cpu_s(process.pid),
                "nginx-bare": lambda: session_cpu_s(proxies[0].pid),
                "mlserver": lambda: session_cpu_s(replica["pid"]),
            }
            if haproxy:
                config = Path(tmp) / "haproxy.cfg"
                config.write_text(haproxy_bare_config(rest_upstream, grpc_upstream,
                                                      *ports["haproxy"]))
                proxies.append(subprocess.Popen([haproxy, "-f", str(config)],
                                                start_new_session=True))
                wait_for_port(ports["haproxy"][1], proxies[-1])
                targets["haproxy-bare"] = target(f"http://127.0.0.1:{ports['haproxy'][0]}",
                                                 f"127.0.0.1:{ports['haproxy'][1]}")
                probes["haproxy-bare"] = lambda: session_cpu_s(proxies[1].pid)
            else:
                log("haproxy is not installed (apt-get install haproxy): its row is left out")
            for round_ in range(args.repeat):
                order = list(targets) if round_ % 2 == 0 else list(targets)[::-1]
                for name in order:
                    log(f"{name:<13} {args.protocol} c={args.concurrency}")
                    results.setdefault(name, []).append(
                        run_load(targets[name], args.concurrency, args.duration, args.warmup,
                                 rows, cpu_probes=probes))
        finally:
            for proxy in proxies:
                proxy.terminate()
                proxy.wait(10)
            stop_background(process, timeout=60)

    def pooled(name: str) -> tuple[float, float, float]:
        runs = results[name]
        return (statistics.fmean(r.rps for r in runs), pooled_percentile(runs, 50),
                pooled_percentile(runs, 99))

    def cpu_us(name: str, who: str) -> float:
        return pooled_cpu_us(results[name], who)

    rps0, p50_0, p99_0 = pooled("direct")
    print(f"proxy floor: {os.cpu_count()} cores, {args.protocol}, {args.concurrency} clients, "
          f"{args.duration:g}s per run, {args.repeat} runs pooled; single-row requests")
    print(f"{'path':<13} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} {'+p50 ms':>8} "
          f"{'+p99 ms':>8} {'errors':>6} {'proxy us/req':>12} {'mlserver us/req':>15} "
          f"{'driver us/req':>13}")
    for name in results:
        rps, p50, p99 = pooled(name)
        errors = sum(r.errors for r in results[name])
        proxy_cpu = cpu_us(name, name) if name != "direct" else 0.0
        print(f"{name:<13} {rps:>7.0f} {p50:>7.2f} {p99:>7.2f} {rps / rps0:>6.2f} "
              f"{p50 - p50_0:>+8.2f} {p99 - p99_0:>+8.2f} {errors:>6} {proxy_cpu:>12.0f} "
              f"{cpu_us(name, 'mlserver'):>15.0f} {cpu_us(name, 'driver'):>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
