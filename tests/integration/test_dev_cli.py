"""`wlex dev up | status | down` as a user runs them, in a home of its own on free ports.

An outside client (the console producer and consumer from the same Kafka jars) talks to the
broker at the address `status --json` prints, and `down` leaves no process and no port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import psutil
import pytest

from services.devenv import kafka as kafka_runtime
from services.devenv.ports import free_port_block
from tests.conftest import new_state_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WLEX = str(Path(sys.executable).parent / "wlex")
ROOT = Path(__file__).resolve().parents[2]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def dev_env():
    home = new_state_dir("dev-cli")
    base = free_port_block(3)
    env = dict(
        os.environ,
        WLEX_HOME=str(home),
        WLEX_KAFKA_PORT=str(base),
        WLEX_KAFKA_CONTROLLER_PORT=str(base + 1),
        WLEX_POSTGRES_PORT=str(base + 2),
    )
    env.pop("WLEX_KAFKA_BOOTSTRAP", None)
    env.pop("WLEX_DATABASE_URL", None)
    # The jars are cached per home; reuse the project's cache instead of copying them again.
    cache = ROOT / ".wlex" / "kafka"
    if cache.exists():
        (home / "kafka").symlink_to(cache)
    yield env, base
    subprocess.run([WLEX, "dev", "down"], env=env, cwd=ROOT, check=False)
    shutil.rmtree(home, ignore_errors=True)


def _wlex(env, *args) -> str:
    return subprocess.run(
        [WLEX, *args], env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=240
    ).stdout


def test_dev_up_status_outside_client_and_down(dev_env):
    env, base = dev_env
    _wlex(env, "dev", "up")
    status = orjson.loads(_wlex(env, "dev", "status", "--json"))
    bootstrap = status["kafka"]["bootstrap"]
    assert bootstrap == f"127.0.0.1:{base}"
    assert status["postgres"]["url"].startswith(f"postgresql://postgres@127.0.0.1:{base + 2}/")
    assert isinstance(status["services"], dict)
    pids = [status["kafka"]["brokers"]["1"]["pid"], status["postgres"]["pid"]]
    assert all(psutil.pid_exists(pid) for pid in pids)

    libs = Path(env["WLEX_HOME"]) / "kafka" / status["kafka"]["version"] / "libs"
    topic = "wlex.dlq"  # made by `wlex dev up` from the AsyncAPI document
    producer_class, consumer_class = kafka_runtime.console_classes(status["kafka"]["version"])
    line = f"hello-{uuid.uuid4().hex}"
    subprocess.run(
        kafka_runtime.tool_command(
            libs, producer_class, ["--bootstrap-server", bootstrap, "--topic", topic]
        ),
        input=line + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )
    consumed = subprocess.run(
        kafka_runtime.tool_command(
            libs,
            consumer_class,
            [
                "--bootstrap-server",
                bootstrap,
                "--topic",
                topic,
                "--from-beginning",
                "--max-messages",
                "1",
                "--timeout-ms",
                "30000",
            ],
        ),
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert line in consumed.stdout

    _wlex(env, "dev", "down")
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert not any(_port_open(port) for port in (base, base + 1, base + 2))
    assert orjson.loads(_wlex(env, "dev", "status", "--json"))["running"] is False
