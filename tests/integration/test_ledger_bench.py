"""The ledger benchmark runs end to end on the test database and reports what it
promises. The figures depend on the machine and are not checked here."""

from __future__ import annotations

import json

import pytest

from loadtests import bench_ledger

pytestmark = pytest.mark.integration

REPORT_KEYS = {
    "transfers_per_s", "pgbench_tps", "ratio", "settler", "ledger", "ledger_transfers_per_s",
    "settler_instances", "settler_one_instance", "settler_one_instance_transfers_per_s",
    "pgbench", "python", "commit",
    "machine", "date", "command", "targets",
}  # fmt: skip


def test_quick_run_writes_every_key(database_url, tmp_path):
    out = tmp_path / "bench_ledger.json"
    bench_ledger.main(["--quick", "--seconds", "1", "--batch", "300", "--shippers", "20",
                       "--pgbench-seconds", "1", "--pgbench-clients", "2", "--pgbench-scale", "1",
                       "--database-url", database_url, "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= report.keys()
    assert report["transfers_per_s"] > 0 and report["pgbench_tps"] > 0
    assert report["ratio"] == report["transfers_per_s"] / report["pgbench_tps"]
    assert report["ledger"]["invariants_ok"] is True
    # The headline figure is the settler's path: events through SettlerService.settle.
    assert report["transfers_per_s"] == report["settler"]["transfers_per_s"]
    assert report["settler"]["invariants_ok"] is True and report["settler"]["transfers"] > 0
    # Two settlers at once by default, each on its own loads; one alone measured too.
    assert report["settler_instances"] == report["settler"]["instances"] == 2
    single = report["settler_one_instance"]
    assert single["instances"] == 1 and single["invariants_ok"] is True and single["transfers"] > 0
    assert report["settler_one_instance_transfers_per_s"] == single["transfers_per_s"]
