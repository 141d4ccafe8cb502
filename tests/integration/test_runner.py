"""The service runner in a real process, stopped by a real signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHUTDOWN_TIMEOUT_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path: Path, *, stubborn: bool = False) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    marker = tmp_path / "marker"
    env = {
        **os.environ,
        "WLEX_HTTP_HOST": "127.0.0.1",
        "WLEX_HTTP_PORT": str(port),
        "WLEX_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "WLEX_LOG_LEVEL": "DEBUG",
        "RUNNER_TEST_MARKER": str(marker),
        "RUNNER_TEST_STUBBORN": "1" if stubborn else "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.runner_service"],
        cwd=ROOT,
        env=env,
        stderr=open(tmp_path / "stderr.log", "wb"),
    )
    return proc, port, marker


def wait_healthy(proc: subprocess.Popen, port: int, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited during startup"
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the service never answered /healthz 200")


def stop(
    proc: subprocess.Popen, timeout_s: float, sig: signal.Signals = signal.SIGTERM
) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return code, time.monotonic() - started


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_batch_runs_the_hooks_and_exits_0(tmp_path, sig):
    proc, port, marker = start(tmp_path)
    try:
        health = wait_healthy(proc, port)
        assert health["checks"]["main"]["status"] == "ok"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)
        assert metrics.status_code == 200 and "python_info" in metrics.text
    finally:
        code, took_s = stop(proc, SHUTDOWN_TIMEOUT_S + 5, sig)
    log = (tmp_path / "stderr.log").read_text()
    assert code == 0, log
    assert took_s < SHUTDOWN_TIMEOUT_S, log
    assert marker.read_text().splitlines() == [
        f"ready on {port}",
        "main finished its batch",
        "shutdown hook ran",
    ]
    # One line per record: every line starts with the timestamp.
    assert all(line[:4].isdigit() for line in log.splitlines()), log
    assert f"{sig.name}: stopping" in log


def test_a_main_that_ignores_stop_is_cancelled_after_the_timeout(tmp_path):
    proc, port, marker = start(tmp_path, stubborn=True)
    try:
        wait_healthy(proc, port)
    finally:
        code, took_s = stop(proc, SHUTDOWN_TIMEOUT_S + 10)
    log = (tmp_path / "stderr.log").read_text()
    assert code == 2, log  # EXIT_ABORTED
    assert SHUTDOWN_TIMEOUT_S <= took_s < SHUTDOWN_TIMEOUT_S + 5, log
    assert marker.read_text().splitlines()[1:] == ["main cancelled", "shutdown hook ran"]


def test_healthz_turns_503_while_stopping(tmp_path):
    proc, port, _ = start(tmp_path, stubborn=True)
    try:
        wait_healthy(proc, port)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0)
        assert r.status_code == 503
        assert r.json()["checks"]["main"]["detail"] == "RuntimeError: stopping"
    finally:
        proc.send_signal(signal.SIGTERM)  # a second signal: cancel now
        code = proc.wait(timeout=10)
    assert code == 2
