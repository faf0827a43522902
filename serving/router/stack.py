"""The local stack: MLServer processes per predictor replica, supervised, behind the router.

`LocalStack.run()` is what `serving up` executes: start every replica, wait until each has loaded
its model, serve REST and gRPC, restart crashed replicas, and write a state file that tells other
commands (status, down, rollout, loadtest) where everything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..comparator.matching import Settings as ComparatorSettings
from ..comparator.process import ComparatorProcess
from ..errors import ServingError
from ..server import (
    ServerSettings,
    free_port,
    group_members,
    kill_group,
    listener_on,
    process_cpu,
    process_start_time,
)
from ..spec import Predictor, Spec, parse_spec, spec_to_values
from .admin import AdminApi
from .control_api import ControlApi
from .core import RouterCore
from .dataplane import Nginx, Sockets, render_config
from .replicas import (
    PRIMARY_HEALTH,
    SHADOW_HEALTH,
    HealthPolicy,
    PredictorPool,
    Replica,
    exit_reason,
    same_deployment,
    start_pool,
    stop_pool,
)
from .shadow_worker import ShadowWorker
from .telemetry import TelemetryReceiver
from .traffic import updated_predictors

logger = logging.getLogger("serving.router")
logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls are not news
STATE_FILE = "stack.json"
HEALTH_TICK = 0.1  # seconds: how often the health checker looks for checks due
LAG_TOLERANCE = 0.25  # seconds late beyond which a tick or a check timeout means this process lagged


class StackCore(RouterCore):
    """The router's state, with what the stack knows of each replica in its status: why it last
    exited, when its backed-off restart is due, its failed health checks."""

    def status(self) -> dict[str, object]:
        status = super().status()
        replicas = {r.name: r for pool in self.state.pools.values() for r in pool.replicas}
        for predictor in status["predictors"]:  # type: ignore[attr-defined]
            for entry in predictor["replicas"]:
                if (replica := replicas.get(entry["name"])) is not None:
                    entry.update(replica.report())
        return status


class LocalStack:
    def __init__(
        self,
        spec: Spec,
        models_root: Path,
        state_dir: Path,
        server_settings: ServerSettings | None = None,
    ) -> None:
        self.spec = spec
        self.models_root = models_root
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.server_settings = server_settings or ServerSettings.tuned()
        self.admin_token = os.environ.get(spec.router.admin_token_env) or secrets.token_urlsafe(24)
        # What callers send in x-serving-pin-token to pin a predictor (lua/router.lua).
        self.pin_token = os.environ.get(spec.router.pin_token_env) or secrets.token_urlsafe(24)
        # No child process needs the tokens: they start without them in their environment.
        self.hidden_env = (spec.router.admin_token_env, spec.router.pin_token_env)
        self.core: RouterCore
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._restarting: set[str] = set()
        self.nginx: Nginx | None = None
        self.shadow_worker: ShadowWorker | None = None
        self.comparator: ComparatorProcess | None = None
        self._published: dict[str, Any] | None = None
        self._publishing = asyncio.Lock()
        self._generation = 0
        self.run_dir: Path | None = None
        self._ports = (0, 0)
        self._recorded: list[dict[str, Any]] = []
        self._start_times: dict[int, int] = {}
        self._pools_started: list[PredictorPool] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._lagged_at = 0.0  # when the health checker last saw this process fall behind

    # -- lifecycle ------------------------------------------------------------------------------
    async def _start_pool(self, predictor: Predictor) -> PredictorPool:
        pool = await start_pool(
            predictor, self.models_root, self.spec.model.name, self.log_dir,
            self.server_settings.with_digests(self.spec.model.artifacts),
            hidden_env=self.hidden_env, temp_root=self.run_dir,
        )
        self._pools_started.append(pool)
        return pool

    def _spawn(self, work: Awaitable[None]) -> None:
        """Run `work` as a task, referenced until it ends (the loop keeps only weak references)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        rs = self.spec.router
        for port in (rs.port, rs.grpc_port):  # 0: a free one is chosen
            if port and (holder := listener_on(rs.host, port)) is not None:
                raise ServingError(f"port {port} on {rs.host} is already in use by {holder}; "
                                   "stop it, or choose other ports (router.port, "
                                   "router.grpcPort; 'serving up --port/--grpc-port')")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The run folder: nginx's config, the unix sockets (their paths are limited to 108 bytes:
        # keep them short, whatever the state dir) and the model servers' working folders. The
        # state file names it, so 'serving down' removes it even after a crash.
        self.run_dir = run_dir = Path(tempfile.mkdtemp(prefix="serving-"))
        try:
            pools_list = await asyncio.gather(
                *(self._start_pool(p) for p in self.spec.predictors), return_exceptions=True
            )
            failed = [e for e in pools_list if isinstance(e, BaseException)]
            started = [p for p in pools_list if isinstance(p, PredictorPool)]
            if failed:
                await asyncio.gather(*(stop_pool(p) for p in started))
                raise failed[0]
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        self.core = StackCore(self.spec, {p.name: p for p in started})
        sockets = Sockets(run_dir)
        runner: web.AppRunner | None = None
        servers: list[asyncio.Server] = []
        monitor: asyncio.Task[None] | None = None
        health: asyncio.Task[None] | None = None
        try:  # whatever fails from here on, the model servers are stopped on the way out
            app = web.Application(client_max_size=1024 * 1024)
            app.add_routes(ControlApi(self.core).routes() + AdminApi(self).routes())
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.UnixSite(runner, str(sockets.control)).start()
            telemetry = TelemetryReceiver(self.core.metrics, self.core.shadow)
            servers.append(await asyncio.start_unix_server(telemetry.handle, sockets.telemetry))
            # The comparator judges the shadow from the events the worker logs, as on a
            # cluster; on loopback, its verdicts reported to this process's telemetry socket.
            self.comparator = ComparatorProcess(
                free_port(), ComparatorSettings(
                    rtol=rs.shadow.rtol, ttl_seconds=self.spec.comparator.ttl_seconds,
                    max_pending=self.spec.comparator.max_pending,
                    deployments=frozenset({self.spec.deployment.name})),
                telemetry=sockets.telemetry, hidden_env=self.hidden_env,
                log=self.log_dir / "comparator.log", extra_args=("--idle-cpu",))
            await self.comparator.astart()
            self.shadow_worker = ShadowWorker(
                sockets.shadow, sockets.telemetry, rs.shadow, hidden_env=self.hidden_env,
                comparator=self.comparator.url, deployment=self.spec.deployment.name,
                namespace=self.spec.deployment.namespace, model=self.spec.model.name)
            await self.shadow_worker.start()
            self.core.shadow_worker_status = self.shadow_worker.status

            rest_port, grpc_port = rs.port or free_port(), rs.grpc_port or free_port()
            config = render_config(self.spec, rest_port, grpc_port, run_dir, sockets,
                                   self.log_dir.resolve() / "nginx-error.log", self.pin_token)
            self.nginx = Nginx(config, run_dir, sockets,
                               listen=[(rs.host, rest_port), (rs.host, grpc_port)],
                               hidden_env=self.hidden_env)
            await asyncio.to_thread(self.nginx.start)
            await self._publish()

            # Objects made at start-up live as long as the router: keep them out of the cyclic
            # GC's scans, so collections stay short (they showed as latency spikes).
            gc.collect()
            gc.freeze()
            self._ports = (rest_port, grpc_port)
            self._write_state()
            self._announce(rest_port, grpc_port)
            monitor = asyncio.create_task(self._monitor())
            health = asyncio.create_task(self._health_checks())
            await self._stopping.wait()
        finally:
            logger.info("stopping: router, then model servers")
            for task in (monitor, health, *self._tasks):
                if task is not None:
                    task.cancel()
            if self.nginx is not None:
                await asyncio.to_thread(self.nginx.stop)
            for server in servers:
                server.close()
            if runner is not None:
                await runner.cleanup()
            if self.shadow_worker is not None:
                await self.shadow_worker.stop()
            if self.comparator is not None:
                await self.comparator.astop()
            await asyncio.gather(
                *(stop_pool(p, drain_timeout=2) for p in self.core.state.pools.values())
            )
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / STATE_FILE).unlink()

    async def _publish(self, force: bool = False) -> None:
        """Send nginx the routing table if it changed (weights, predictors, live replicas)."""
        if self.nginx is None:
            return
        async with self._publishing:  # one push at a time: an older table never lands last
            table = self.core.table()
            if table == self._published and not force:
                return
            self._generation += 1
            table_with_generation = {**table, "generation": self._generation}
            await asyncio.to_thread(self.nginx.push_table, table_with_generation)
            if self.shadow_worker is not None:
                await self.shadow_worker.push_table(table_with_generation)
            self._published = table

    def stop(self) -> None:
        self._stopping.set()

    def _processes(self) -> list[dict[str, Any]]:
        """The stack's child processes, each the leader of its own process group: what 'serving
        down' ends if this process dies without stopping them. A start time with each pid, so
        that a pid reused by another process later is never taken for one of them."""
        handles: list[tuple[str, subprocess.Popen[bytes] | None]] = []
        self._pools_started = [p for p in self._pools_started
                               if not p.stopped or any(r.server.process and r.server.process
                                                       .poll() is None for r in p.replicas)]
        for pool in self._pools_started:
            handles += [(f"replica {r.name}", r.server.process) for r in pool.replicas]
        handles.append(("nginx", self.nginx.process if self.nginx else None))
        handles.append(("shadow worker",
                        self.shadow_worker.process if self.shadow_worker else None))
        handles.append(("comparator", self.comparator.process if self.comparator else None))
        records = []
        known, self._start_times = self._start_times, {}
        for what, process in handles:
            if process is None or process.returncode is not None:
                continue
            start = known.get(process.pid) or process_start_time(process.pid)
            if start is not None:
                self._start_times[process.pid] = start
                records.append({"what": what, "pid": process.pid, "start": start})
        return records

    def _record_processes(self) -> None:
        """Rewrite the state file when the child processes changed (restarts, reconcile)."""
        if self._processes() != self._recorded:
            self._write_state()

    def _write_state(self) -> None:
        rest_port, grpc_port = self._ports
        host = self.spec.router.host
        d = self.spec.deployment
        self._recorded = self._processes()
        state = {
            "pid": os.getpid(),
            "pidStart": process_start_time(os.getpid()),
            "restUrl": f"http://{host}:{rest_port}",
            "seldonUrl": f"http://{host}:{rest_port}/seldon/{d.namespace}/{d.name}",
            "grpcTarget": f"{host}:{grpc_port}",
            "deployment": d.name,
            "namespace": d.namespace,
            "model": self.spec.model.name,
            "adminToken": self.admin_token,
            "pinToken": self.pin_token,
            "logs": str(self.log_dir),
            "runDir": str(self.run_dir),
            # the comparator's /disagreements and /metrics (loopback): what the console reads
            "comparatorUrl": self.comparator.url if self.comparator else None,
            "processes": self._recorded,
        }
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        # The token is in here: readable by this user only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, path)

    def _announce(self, rest_port: int, grpc_port: int) -> None:
        host = self.spec.router.host
        d = self.spec.deployment
        lines = [
            f"router ready for SeldonDeployment {d.namespace}/{d.name}",
            f"  REST   http://{host}:{rest_port}/seldon/{d.namespace}/{d.name}/v2/models/"
            f"{self.spec.model.name}/infer",
            f"  gRPC   {host}:{grpc_port}  metadata seldon={d.name} namespace={d.namespace}",
            f"  admin  http://{host}:{rest_port}/admin/status   metrics /metrics",
        ]
        for p in self.spec.predictors:
            role = f"shadow, mirrors {p.traffic}%" if p.shadow else f"traffic {p.traffic}%"
            lines.append(
                f"  predictor {p.name:<8} version {p.version}  {role}  replicas {p.replicas}"
            )
        print("\n".join(lines), flush=True)

    # -- supervision ----------------------------------------------------------------------------
    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.nginx is not None and not self.nginx.alive():
                await self._restart_nginx()
            await self._publish()  # replicas that died or came back since the last tick
            if self.shadow_worker is not None and not self.shadow_worker.alive():
                await self._restart_shadow_worker()
            if self.comparator is not None and not self.comparator.alive():
                await self._restart_comparator()
            for pool in list(self.core.state.pools.values()):
                for replica in pool.replicas:
                    process = replica.server.process
                    if process is None or replica.name in self._restarting:
                        continue
                    if process.poll() is not None:
                        self._restarting.add(replica.name)
                        self._spawn(self._restart(pool, replica))
            self._record_processes()

    async def _restart_nginx(self) -> None:
        assert self.nginx is not None
        code = self.nginx.process.returncode if self.nginx.process else None
        print(f"nginx exited with code {code}; restarting it", flush=True)
        try:
            await asyncio.to_thread(self.nginx.start)
        except ServingError as e:  # tried again on the next tick
            print(f"nginx failed to restart: {e.message}", flush=True)
            return
        await self._publish(force=True)

    async def _restart_shadow_worker(self) -> None:
        assert self.shadow_worker is not None
        worker = self.shadow_worker
        code = worker.process.returncode if worker.process else None
        print(f"the shadow worker exited with code {code}; restarting it", flush=True)
        try:
            await worker.start()
        except ServingError as e:  # tried again on the next tick
            print(f"the shadow worker failed to restart: {e.message}", flush=True)
            return
        await self._publish(force=True)

    async def _restart_comparator(self) -> None:
        assert self.comparator is not None
        process = self.comparator.process
        code = process.returncode if process else None
        print(f"the comparator exited with code {code}; restarting it", flush=True)
        try:  # meanwhile the worker counts the events it could not log (events_lost)
            await self.comparator.astart()
        except ServingError as e:  # tried again on the next tick
            print(f"the comparator failed to restart: {e.message}", flush=True)

    async def _health_checks(self) -> None:
        """Every replica's readiness (GET /v2/models/<model>/ready), each on its own schedule
        (PRIMARY_HEALTH, SHADOW_HEALTH) and all concurrently, so that a hung one neither delays
        the others' checks nor this loop. Failed checks take a replica out of the routing table,
        a 200 brings it back. A replica that does not answer at all and does not run (stopped,
        or no CPU time used) is hung: killed (nginx retries its requests elsewhere) and
        restarted. Never for this loop's own delays: a check that could not be timed, or a
        late tick, proves nothing about the replica."""
        # keep-alive below MLServer's 5 s, so that a check never reuses a connection it closes
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
        async with aiohttp.ClientSession(connector=connector) as session:
            tick = time.monotonic()
            while True:
                await asyncio.sleep(HEALTH_TICK)
                now = time.monotonic()
                if now - tick > HEALTH_TICK + LAG_TOLERANCE:
                    self._lagged_at = now  # this process was not running: no kill for a while
                tick = now
                for pool in list(self.core.state.pools.values()):
                    policy = SHADOW_HEALTH if pool.predictor.shadow else PRIMARY_HEALTH
                    for replica in pool.replicas:
                        process = replica.server.process
                        if (pool.stopped or replica.name in self._restarting or process is None
                                or process.poll() is not None):
                            continue
                        if self._hung(replica, policy, process.pid, now):
                            self._kill_hung(pool, replica, now - replica.last_answer)
                        elif not replica.checking and now >= replica.next_check:
                            replica.next_check = now + policy.interval
                            replica.checking = True
                            self._spawn(self._check(session, pool, replica, policy))

    def _hung(self, replica: Replica, policy: HealthPolicy, pid: int, now: float) -> bool:
        sample = process_cpu(pid)
        if sample is None:
            return False
        state, ticks = sample
        if ticks != replica.cpu_ticks:
            replica.cpu_ticks, replica.last_progress = ticks, now
        silent = now - replica.last_answer
        if replica.failed_checks < policy.failures or now - self._lagged_at < policy.kill_after:
            return False
        if silent >= policy.give_up_after:
            return True
        not_running = state in "Tt" or now - replica.last_progress >= policy.kill_after
        return silent >= policy.kill_after and not_running

    async def _check(self, session: aiohttp.ClientSession, pool: PredictorPool,
                     replica: Replica, policy: HealthPolicy) -> None:
        """One health check; its result counts only if the replica was not restarted meanwhile
        and, for a failure, if this process kept time (a timeout that fired late says more
        about this process than about the replica)."""
        process = replica.server.process
        url = f"{replica.rest_url}/v2/models/{self.spec.model.name}/ready"
        status: int | None = None
        started = time.monotonic()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=policy.timeout)) as r:
                status = r.status
        except (aiohttp.ClientError, TimeoutError):
            if time.monotonic() - started > policy.timeout + LAG_TOLERANCE:
                return
        finally:
            replica.checking = False
        if replica.server.process is process and replica.name not in self._restarting:
            await self._checked(pool, replica, policy, status)

    async def _checked(self, pool: PredictorPool, replica: Replica, policy: HealthPolicy,
                       status: int | None) -> None:
        if status is not None:
            replica.last_answer = time.monotonic()
        if status == 200:
            replica.failed_checks = 0
            if not replica.alive:
                replica.alive = True
                print(f"replica {replica.name} answers its health check again; back in rotation",
                      flush=True)
                await self._publish()
            return
        replica.failed_checks += 1
        if replica.alive and replica.failed_checks >= policy.failures:
            why = (f"no answer within {policy.timeout:g}s" if status is None
                   else f"answered {status}")
            if pool.live() == [replica]:
                # Envoy's panic threshold, in short: slow answers beat 503s. A hung one is
                # still killed (_hung), and out of rotation while it restarts.
                if replica.failed_checks == policy.failures:
                    print(f"replica {replica.name} failed {replica.failed_checks} health checks "
                          f"in a row ({why}); kept in rotation: it is {pool.name}'s last live "
                          "replica", flush=True)
                return
            replica.alive = False
            print(f"replica {replica.name} failed {replica.failed_checks} health checks in a row "
                  f"({why}); out of rotation", flush=True)
            await self._publish()

    def _kill_hung(self, pool: PredictorPool, replica: Replica, silent: float) -> None:
        """Like a failed Kubernetes liveness probe: kill it (its connections close, so nginx
        retries the requests it held on another replica), then restart it."""
        process = replica.server.process
        assert process is not None
        reason = f"hung: no answer to health checks for {silent:.1f}s; killed"
        print(f"replica {replica.name} (pid {process.pid}) has not answered for {silent:.1f}s; "
              "killing it (its requests go to another replica) and restarting it", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own group (MLServer's workers too)
        self._restarting.add(replica.name)
        self._spawn(self._restart(pool, replica, reason))

    async def _restart(self, pool: PredictorPool, replica: Replica,
                       reason: str | None = None) -> None:
        """Restart a replica whose process ended, after its backoff (Replica.restart_delay)."""
        replica.alive = False
        await self._publish()
        pid = replica.pid
        try:
            await asyncio.to_thread(replica.server.stop)  # reaps it, removes its working folder
            process = replica.server.process
            code = process.returncode if process else None
            replica.last_exit = reason or exit_reason(code, replica.server.recent_log())
            delay = replica.restart_delay()
            replica.restarts += 1
            self.core.metrics.restarts.labels(self.core.deployment, pool.name).inc()
            when = (f"restarting in {delay:g}s ({replica.crashes} crashes in a row)" if delay
                    else "restarting")
            print(f"replica {replica.name} ({replica.version}, pid {pid}) exited "
                  f"({replica.last_exit}); {when} (restart #{replica.restarts})", flush=True)
            await asyncio.sleep(delay)
            if pool.stopped:
                return  # retired meanwhile (reconcile or shutdown): nothing to bring back
            replica.failed_checks = 0
            replica.last_answer = time.monotonic()
            replica.server.start()
            await asyncio.to_thread(replica.server.wait_ready, [self.spec.model.name])
            if pool.stopped:  # retired while it was starting: do not leave it running
                await asyncio.to_thread(replica.server.stop)
                return
            replica.became_ready()
            await self._publish()
            print(f"replica {replica.name} is back (pid {replica.pid})", flush=True)
        except ServingError as e:
            print(f"replica {replica.name} failed to restart: {e.message}", flush=True)
        finally:
            self._restarting.discard(replica.name)

    # -- changes (admin API, rollouts) ----------------------------------------------------------
    async def set_traffic(
        self, weights: dict[str, int] | None, mirror_percent: int | None
    ) -> dict[str, object]:
        async with self._lock:
            predictors = updated_predictors(
                list(self.core.state.predictors), weights, mirror_percent
            )
            pools = self.core.state.pools
            for p in predictors:
                pools[p.name].predictor = p
            state = self.core.swap(predictors, pools)
            await self._publish(force=True)
            logger.info("traffic now %s", state.routes.as_dict())
            return state.routes.as_dict()

    async def reconcile(self, raw_predictors: list[dict[str, Any]]) -> None:
        """Make the running predictors match a new list: start what is new, switch traffic in one
        step once everything new is ready, then drain and stop what is gone."""
        async with self._lock:
            values = spec_to_values(self.spec)
            values["predictors"] = raw_predictors
            new_spec = parse_spec(values, source="predictors")
            current = self.core.state.pools
            pools: dict[str, PredictorPool] = {}
            retired: list[PredictorPool] = []
            try:
                for p in new_spec.predictors:
                    old = current.get(p.name)
                    if old is not None and same_deployment(old.predictor, p):
                        old.predictor = p
                        pools[p.name] = old
                    else:
                        pools[p.name] = await self._start_pool(p)
                        if old is not None:
                            retired.append(old)
            except Exception:
                for name, pool in pools.items():
                    if current.get(name) is not pool:
                        await stop_pool(pool)
                raise
            retired += [pool for name, pool in current.items() if name not in pools]
            self.core.swap(list(new_spec.predictors), pools)
            await self._publish(force=True)
            self.spec = new_spec
            logger.info("predictors now %s", [f"{p.name}:{p.version}" for p in new_spec.predictors])
        for pool in retired:
            await stop_pool(pool, in_flight=self._nginx_in_flight(pool.uid))

    def _nginx_in_flight(self, pool_uid: int) -> Callable[[], Awaitable[int]]:
        async def count() -> int:
            return await asyncio.to_thread(self.nginx.in_flight, pool_uid) if self.nginx else 0
        return count


def read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ServingError(
            f"no local stack is running ({path} not found); start one with 'serving up' "
            "or 'make up'"
        ) from None


def stack_running(state: dict[str, Any]) -> bool:
    """Whether the control process a state file names still runs (the same process: a pid reused
    since by another one does not count)."""
    pid = int(state["pid"])
    start = state.get("pidStart")
    return pid_alive(pid) and (start is None or process_start_time(pid) == start)


def end_leftovers(state: dict[str, Any]) -> list[str]:
    """What a stack whose control process died (kill -9) left: end the process groups its state
    file records (model servers, nginx with its workers, the shadow worker) and remove its run
    folder (sockets, nginx's config, the model servers' working folders). A group is ended only
    if it is still the one recorded. Returns what was done, for the user."""
    done = []
    for record in state.get("processes", []):
        pid = int(record["pid"])
        if is_leftover_group(pid, int(record["start"])):
            kill_group(pid)
            done.append(f"ended {record['what']} (pid {pid})")
    run_dir = Path(state["runDir"]) if state.get("runDir") else None
    if run_dir is not None and run_dir.name.startswith("serving-") and run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
        done.append(f"removed {run_dir}")
    return done


def is_leftover_group(pgid: int, start: int) -> bool:
    """Whether process group `pgid` is still the one whose leader started at `start`: its leader
    runs with that start time or, the leader gone, members remain (a group id is not reused while
    any member lives), all started after it (its children)."""
    members = group_members(pgid)
    if not members:
        return False
    leader_start = process_start_time(pgid)
    if leader_start is not None:
        return leader_start == start
    return all((process_start_time(m) or 0) >= start for m in members)


def pid_alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return True
    return state != "Z"


def start_background(
    values_path: Path,
    state_dir: Path,
    log_path: Path,
    models: Path | None = None,
    new_session: bool = False,
    timeout: float = 180.0,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Run `serving up` as a child process; return it and its state once the stack is ready.
    (What the demo, the tests, the benchmarks and the load tests all start the stack with.)"""
    command = [sys.executable, "-m", "serving.cli", "up", "--values", str(values_path),
               "--state-dir", str(state_dir)] + (["--models", str(models)] if models else [])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=new_session)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServingError(
                f"'serving up' exited with code {process.returncode} before the stack was "
                f"ready:\n{log_path.read_text()[-2000:]}")
        if (state_dir / STATE_FILE).exists():
            state = read_state(state_dir)
            if int(state["pid"]) == process.pid:
                return process, state
        time.sleep(0.2)
    stop_background(process)
    raise ServingError(f"the local stack was not ready within {timeout:g}s; see {log_path}")


def stop_background(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (the stack stops its model servers), then SIGKILL if it does not exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_stack(
    spec: Spec, models_root: Path, state_dir: Path, server_settings: ServerSettings | None = None
) -> None:
    """Run until SIGINT/SIGTERM (blocking)."""
    import uvloop  # faster event loop; MLServer depends on it too

    async def main() -> None:
        stack = LocalStack(spec, models_root, state_dir, server_settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stack.stop)
        await stack.run()

    uvloop.run(main())
