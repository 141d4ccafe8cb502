"""What every benchmark records beside its figures: the commit and the machine, so a
number in docs/performance.md can be traced to the code and the conditions that made it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """HEAD's sha, with "-dirty" when the work tree differs from it (untracked files too)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "services", "loadtests"],
                               capture_output=True, text=True, cwd=ROOT).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    return sha + ("-dirty" if dirty.strip() else "")


def machine() -> dict:
    """Cores, CPU model, platform and the load average now: this machine is shared, and a
    figure taken at load 6 on 2 cores is not one taken at load 0."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def check_targets(report: dict, targets: dict[str, tuple[str, float]]) -> dict:
    """{key: {"target": ">= 1.5", "value": v, "met": bool | None}} for each target
    (op, bound); met is None when the report has no value for the key."""
    out = {}
    for key, (op, bound) in targets.items():
        value = report.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out
