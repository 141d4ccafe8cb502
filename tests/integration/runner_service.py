"""A tiny service for test_runner: run as `python -m tests.integration.runner_service`.

It loops in "batches" until asked to stop, then records that its batch finished, and its
shutdown hook records that it ran. RUNNER_TEST_MARKER names the file it writes to;
RUNNER_TEST_STUBBORN=1 makes it ignore the stop event (to see the runner cancel it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from services.common.runner import ServiceContext, run_service

MARKER = Path(os.environ["RUNNER_TEST_MARKER"])
STUBBORN = os.environ.get("RUNNER_TEST_STUBBORN") == "1"


def note(line: str) -> None:
    with MARKER.open("a") as f:
        f.write(line + "\n")


async def main(ctx: ServiceContext) -> None:
    async def hook() -> None:
        note("shutdown hook ran")

    ctx.on_shutdown(hook)
    ctx.mark_ready()
    note(f"ready on {ctx.http_port}")
    if STUBBORN:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            note("main cancelled")
            raise
    while not await ctx.sleep_unless_stopped(0.05):  # one "batch" per turn
        pass
    note("main finished its batch")


if __name__ == "__main__":
    run_service(main, name="runner_test")
