"""The local exchange: PostgreSQL, Kafka (1 or 3 nodes) and every wlex service, supervised.

Process supervision is supervisord's (the `supervisor` package): it runs every process in
the foreground under one daemon, stops them in reverse start order with a grace period and
then SIGKILL to the whole process group, keeps their logs, and answers over XML-RPC on a
unix socket, which gives `wlex dev down` and the fault tests (kill -9 a broker, start it
again) one place to ask. What supervisord cannot know, readiness (the broker answers, the
database accepts connections, /healthz says ok), this module waits for itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from services.devenv import kafka as kafka_runtime
from services.devenv import postgres as pg_runtime

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Services in start order. A service takes part once its package has a __main__.py, so
# the demo grows as the services land.
SERVICES: tuple[str, ...] = ("settlement", "matching", "insurance", "gateway")

READY_TIMEOUT_S = 120.0


@dataclass
class StackConfig:
    """Where the stack keeps its state and which ports it takes (all on 127.0.0.1)."""

    state_dir: Path
    cache_dir: Path
    brokers: int = 1
    kafka_port: int = 19092
    kafka_controller_port: int = 19192
    postgres_port: int = 15432
    http_port_base: int = 18000
    kafka_version: str = field(default_factory=kafka_runtime.pinned_version)
    topic_prefix: str = "wlex."
    topic_partitions: int = 4
    # Outside infrastructure: when set, the stack does not start its own.
    external_kafka: str = ""
    external_database: str = ""
    with_services: bool = True
    # More WLEX_* settings for every service process (tests give each run its own schemas).
    service_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings, *, brokers: int = 1) -> StackConfig:
        home = Path(settings.home).resolve()
        return cls(
            state_dir=home / "dev",
            cache_dir=home / "kafka",
            brokers=brokers,
            kafka_port=settings.kafka_port,
            kafka_controller_port=settings.kafka_controller_port,
            postgres_port=settings.postgres_port,
            http_port_base=settings.http_port_base,
            kafka_version=settings.kafka_version or kafka_runtime.pinned_version(),
            topic_prefix=settings.topic_prefix,
            external_kafka=settings.kafka_bootstrap,
            external_database=settings.database_url,
        )


class StackError(RuntimeError):
    pass


class Stack:
    """One supervised local exchange, identified by its state directory."""

    def __init__(self, config: StackConfig, *, log=print):
        self.config = config
        self.log = log
        self.state_dir = config.state_dir
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.conf_file = self.state_dir / "supervisord.conf"
        self.state_file = self.state_dir / "stack.json"
        self.socket = self.run_dir / "supervisor.sock"
        self.nodes = kafka_runtime.plan_nodes(
            config.brokers, config.kafka_port, config.kafka_controller_port, self.state_dir
        )
        self.pg = pg_runtime.PostgresNode(config.postgres_port, self.state_dir / "postgres")

    # ---- what runs -------------------------------------------------------------------

    @property
    def kafka_bootstrap(self) -> str:
        if self.config.external_kafka:
            return self.config.external_kafka
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def database_url(self) -> str:
        return self.config.external_database or self.pg.url

    def services(self) -> dict[str, int]:
        """Services that exist, with their HTTP port."""
        present = {}
        for index, name in enumerate(SERVICES):
            if (PROJECT_ROOT / "services" / name / "__main__.py").exists():
                present[name] = self.config.http_port_base + index
        return present if self.config.with_services else {}

    # ---- up / down -------------------------------------------------------------------

    def up(self) -> dict:
        """Start everything not yet running and wait until it is ready. Idempotent."""
        started = time.monotonic()
        for d in (self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        libs = None
        if not self.config.external_kafka:
            libs = kafka_runtime.fetch_jars(
                self.config.cache_dir, self.config.kafka_version, log=self.log
            )
        if not self.config.external_database:
            pg_runtime.prepare(self.pg)
        props = []
        if libs is not None:
            self._match_cluster_size()
            props = kafka_runtime.prepare_nodes(
                libs, self.nodes, self.state_dir / "kafka" / "cluster.id"
            )
        self._write_conf(libs, props)
        self._ensure_supervisord()
        rpc = self._rpc()
        rpc.supervisor.reloadConfig()
        if not self.config.external_database:
            self._start("postgres")
        for node in self.nodes if libs is not None else []:
            self._start(f"kafka-{node.node_id}")
        asyncio.run(self._wait_infrastructure())
        for name in self.services():
            self._start(name)
        asyncio.run(self._wait_services())
        status = self.status()
        self.state_file.write_bytes(orjson.dumps(status, option=orjson.OPT_INDENT_2))
        self.log(f"up in {time.monotonic() - started:.1f} s")
        return status

    def down(self, timeout_s: float = 60.0) -> None:
        """Stop every process (services first, then Kafka, then PostgreSQL) and supervisord."""
        pid = self._supervisord_pid()
        if pid is None:
            return
        try:
            self._rpc().supervisor.stopAllProcesses()
            self._rpc().supervisor.shutdown()
        except (OSError, xmlrpc.client.Fault):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def status(self) -> dict:
        """What runs, where: the document `wlex dev status --json` prints."""
        infos = {}
        running = self._supervisord_pid() is not None
        if running:
            for info in self._rpc().supervisor.getAllProcessInfo():
                infos[info["name"]] = info

        def proc(name: str) -> dict:
            info = infos.get(name)
            if info is None:
                return {"pid": None, "state": "STOPPED" if running else "DOWN"}
            return {"pid": info["pid"] or None, "state": info["statename"]}

        kafka = {
            "bootstrap": self.kafka_bootstrap,
            "version": self.config.kafka_version,
            "external": bool(self.config.external_kafka),
            "brokers": {},
        }
        if not self.config.external_kafka:
            kafka["brokers"] = {
                str(n.node_id): {"bootstrap": n.bootstrap, **proc(f"kafka-{n.node_id}")}
                for n in self.nodes
            }
        postgres = {"url": self.database_url, "external": bool(self.config.external_database)}
        if not self.config.external_database:
            postgres.update(proc("postgres"))
        services = {
            name: {"url": f"http://127.0.0.1:{port}", **proc(name)}
            for name, port in self.services().items()
        }
        return {
            "running": running,
            "state_dir": str(self.state_dir),
            "kafka": kafka,
            "postgres": postgres,
            "services": services,
            "topic_prefix": self.config.topic_prefix,
        }

    # ---- single processes (fault tests) ----------------------------------------------

    def pid(self, program: str) -> int | None:
        info = self._rpc().supervisor.getProcessInfo(program)
        return info["pid"] or None

    def kill(self, program: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one program (kill -9 by default); supervisord does not restart it."""
        pid = self.pid(program)
        if pid is None:
            raise StackError(f"{program} is not running")
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._rpc().supervisor.getProcessInfo(program)["statename"] not in (
                "RUNNING",
                "STOPPING",
            ):
                return
            time.sleep(0.05)
        raise StackError(f"{program} did not die after signal {sig}")

    def start(self, program: str) -> None:
        """Start one program again and wait until the infrastructure is ready."""
        self._start(program)
        asyncio.run(self._wait_infrastructure())

    def _match_cluster_size(self) -> None:
        # A formatted KRaft cluster knows its voters; a dev cluster of another size is
        # started fresh instead of failing on a quorum that can never form.
        recorded = recorded_brokers(self.state_dir)
        if recorded not in (None, self.config.brokers):
            self.log(
                f"the local cluster had {recorded} broker(s); starting a fresh "
                f"{self.config.brokers}-broker cluster (dev data only)"
            )
            shutil.rmtree(self.state_dir / "kafka", ignore_errors=True)
        (self.state_dir / "kafka").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "kafka" / "brokers").write_text(str(self.config.brokers))

    # ---- supervisord -----------------------------------------------------------------

    def _write_conf(self, libs: Path | None, props: list[Path]) -> None:
        def program(
            name: str,
            command: list[str],
            priority: int,
            *,
            stopsignal: str = "TERM",
            stopwait_s: int = 30,
            env: dict[str, str] | None = None,
            user: str | None = None,
        ) -> str:
            lines = [
                f"[program:{name}]",
                "command=" + " ".join(_quote(c) for c in command),
                f"directory={PROJECT_ROOT}",
                f"priority={priority}",
                "autostart=false",
                # A crash stays visible as EXITED/FATAL rather than being papered over.
                "autorestart=false",
                "startsecs=0",
                f"stopsignal={stopsignal}",
                f"stopwaitsecs={stopwait_s}",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={self.log_dir / (name + '.log')}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=2",
            ]
            if user:
                lines.append(f"user={user}")
            if env:
                lines.append("environment=" + ",".join(f'{k}="{v}"' for k, v in env.items()))
            return "\n".join(lines) + "\n"

        sections = [
            "[unix_http_server]",
            f"file={self.socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.log_dir / 'supervisord.log'}",
            f"pidfile={self.run_dir / 'supervisord.pid'}",
            f"directory={PROJECT_ROOT}",
            "loglevel=warn",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
            "",
        ]
        body = "\n".join(sections) + "\n"
        if not self.config.external_database:
            # SIGINT is PostgreSQL's "fast shutdown": abort sessions, checkpoint, exit.
            body += (
                program(
                    "postgres",
                    pg_runtime.server_command(self.pg),
                    10,
                    stopsignal="INT",
                    user=pg_runtime.process_user(),
                )
                + "\n"
            )
        if libs is not None:
            for node, prop in zip(self.nodes, props, strict=True):
                body += (
                    program(
                        f"kafka-{node.node_id}",
                        kafka_runtime.broker_command(libs, prop),
                        20,
                        stopwait_s=60,
                    )
                    + "\n"
                )
        common_env = {
            "WLEX_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "WLEX_DATABASE_URL": self.database_url,
            "WLEX_TOPIC_PREFIX": self.config.topic_prefix,
            "PYTHONUNBUFFERED": "1",
            **self.config.service_env,
        }
        services = self.services()
        if "settlement" in services:
            # The gateway reads balances and statements from settlement's read API.
            common_env["WLEX_GATEWAY_SETTLEMENT_URL"] = f"http://127.0.0.1:{services['settlement']}"
        for index, (name, port) in enumerate(services.items()):
            env = dict(common_env, WLEX_SERVICE_NAME=name, WLEX_HTTP_PORT=str(port))
            body += (
                program(name, [sys.executable, "-m", f"services.{name}"], 50 + index, env=env)
                + "\n"
            )
        self.conf_file.write_text(body)

    def _supervisord_pid(self) -> int | None:
        pidfile = self.run_dir / "supervisord.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and self.socket.exists() else None

    def _ensure_supervisord(self) -> None:
        if self._supervisord_pid() is not None:
            return
        self.socket.unlink(missing_ok=True)
        subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf_file)],
            check=True,
            cwd=PROJECT_ROOT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._supervisord_pid() is not None:
                try:
                    self._rpc().supervisor.getState()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise StackError(f"supervisord did not start; see {self.log_dir / 'supervisord.log'}")

    def _rpc(self):
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _start(self, program: str) -> None:
        rpc = self._rpc()
        if rpc.supervisor.getProcessInfo(program)["statename"] in ("RUNNING", "STARTING"):
            return
        rpc.supervisor.startProcess(program, True)

    # ---- readiness -------------------------------------------------------------------

    async def _wait_infrastructure(self) -> None:
        await asyncio.gather(self._wait_postgres(), self._wait_kafka())

    async def _wait_postgres(self) -> None:
        if self.config.external_database:
            return
        import asyncpg

        await _poll(
            lambda: asyncpg.connect(self.pg.admin_url, timeout=2),
            "postgres",
            self._check_alive("postgres"),
            close=True,
        )
        await pg_runtime.ensure_database(self.pg)

    async def _wait_kafka(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        expected = len(self.nodes) if not self.config.external_kafka else 1

        async def cluster_ready():
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.kafka_bootstrap, request_timeout_ms=5000
            )
            await admin.start()
            try:
                cluster = await admin.describe_cluster()
                if len(cluster["brokers"]) < expected:
                    raise ConnectionError(
                        f"{len(cluster['brokers'])}/{expected} brokers registered"
                    )
            finally:
                await admin.close()

        checks = (
            [self._check_alive(f"kafka-{n.node_id}") for n in self.nodes]
            if not self.config.external_kafka
            else []
        )
        # aiokafka logs every refused connection at ERROR; while waiting those are expected.
        client_log = logging.getLogger("aiokafka")
        level = client_log.level
        client_log.setLevel(logging.CRITICAL)
        try:
            await _poll(cluster_ready, "kafka", *checks)
        finally:
            client_log.setLevel(level)
        await self._create_topics()

    async def _create_topics(self) -> None:
        from services.common.topics import create_topics

        await create_topics(
            self.kafka_bootstrap,
            self.config.topic_prefix,
            partitions=self.config.topic_partitions,
            replication_factor=min(3, len(self.nodes) or 1),
        )

    async def _wait_services(self) -> None:
        import httpx

        async def healthy(name: str, port: int) -> None:
            async def probe():
                async with httpx.AsyncClient(timeout=2) as client:
                    response = await client.get(f"http://127.0.0.1:{port}/healthz")
                    if response.status_code != 200:
                        raise ConnectionError(f"/healthz answered {response.status_code}")

            await _poll(probe, name, self._check_alive(name))

        await asyncio.gather(*(healthy(n, p) for n, p in self.services().items()))

    def _check_alive(self, program: str):
        def check() -> None:
            state = self._rpc().supervisor.getProcessInfo(program)["statename"]
            if state not in ("RUNNING", "STARTING"):
                raise StackError(f"{program} is {state}; see {self.log_dir / (program + '.log')}")

        return check


async def _poll(attempt, what: str, *alive_checks, close: bool = False) -> None:
    """Retry attempt() until it succeeds, failing fast when a process died."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        for check in alive_checks:
            check()
        try:
            result = await attempt()
            if close and result is not None:
                await result.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        await asyncio.sleep(0.2)
    raise StackError(f"{what} not ready after {READY_TIMEOUT_S:.0f} s: {last}")


def start_isolated(
    state_dir: Path,
    brokers: int = 1,
    *,
    external_kafka: str = "",
    external_database: str = "",
    log=print,
) -> Stack:
    """Start Kafka and PostgreSQL (no services) in state_dir on free loopback ports, so a
    test run or a benchmark never meets a running demo. The Kafka version is
    WLEX_KAFKA_VERSION or the pinned one; the jars come from the project's cache. A stack
    that fails to come up is stopped before the error is raised."""
    from services.devenv.ports import free_port_block

    base = free_port_block(2 * brokers + 1)
    config = StackConfig(
        state_dir=state_dir,
        cache_dir=PROJECT_ROOT / ".wlex" / "kafka",
        brokers=brokers,
        kafka_port=base,
        kafka_controller_port=base + brokers,
        postgres_port=base + 2 * brokers,
        kafka_version=os.environ.get("WLEX_KAFKA_VERSION") or kafka_runtime.pinned_version(),
        external_kafka=external_kafka,
        external_database=external_database,
        with_services=False,
    )
    stack = Stack(config, log=log)
    try:
        stack.up()
    except BaseException:
        stack.down()  # a half-started stack must not outlive its caller
        raise
    return stack


def recorded_brokers(state_dir: Path) -> int | None:
    """How many brokers the local cluster in state_dir was formatted with, if any."""
    try:
        return int((state_dir / "kafka" / "brokers").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _quote(arg: str) -> str:
    # supervisord expands %(...)s and splits on whitespace with shell-like quoting.
    arg = str(arg).replace("%", "%%")
    return f'"{arg}"' if any(c in arg for c in " \t'\"") else arg
