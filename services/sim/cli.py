"""`wlex sim run`: simulated shippers and carriers against a running exchange, and the
signal handling it shares with `wlex demo` (Ctrl-C winds down, a second one cuts the
winding down short)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Annotated

import orjson
import typer

app = typer.Typer(
    help="Simulated shippers and carriers trading on a running exchange.", no_args_is_help=True
)


class Signals:
    """Counts SIGINT and SIGTERM: the first asks to stop, the second to abort."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self.count += 1

    def stop(self) -> bool:
        return self.count >= 1

    def abort(self) -> bool:
        return self.count >= 2


def simulate(config, operator_key: str, signals: Signals, as_json: bool = False) -> None:
    """Run the simulation in the foreground: progress, then the summary, on stdout."""
    from services.sim import run as sim

    typer.echo(
        f"simulating {config.shippers} shippers and {config.carriers} carriers at "
        f"{config.rate_per_s:g} loads/s; Ctrl-C winds down (twice: at once)",
        err=True,
    )
    # With --json, stdout carries the summary alone.
    show = sim.console_progress(sys.stderr if as_json else sys.stdout)
    result = asyncio.run(
        sim.run(
            config,
            operator_key=operator_key,
            should_stop=signals.stop,
            should_abort=signals.abort,
            progress=show,
        )  # fmt: skip
    )
    show("")
    if as_json:
        typer.echo(orjson.dumps({**result.tally.summary(), "drained": result.drained,
                                 "elapsed_s": round(result.elapsed_s, 1)}).decode())  # fmt: skip
        return
    for line in sim.summary_lines(result):
        typer.echo(line)


def _database_url() -> str:
    from services.common.settings import get_settings

    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from services.devenv.stack import Stack, StackConfig

    return Stack(StackConfig.from_settings(settings), log=lambda _: None).database_url


@app.command("run")
def run(
    gateway_url: Annotated[str, typer.Option(help="The gateway.")] = os.environ.get(
        "WLEX_GATEWAY_URL", "http://127.0.0.1:18003"
    ),
    operator_key: Annotated[
        str,
        typer.Option(
            envvar="WLEX_OPERATOR_KEY",
            help="An operator's key, to register the "
            "participants; without one, an operator is made in the gateway's database "
            "(WLEX_DATABASE_URL or the local runtime's).",
        ),
    ] = "",  # fmt: skip
    shippers: Annotated[int, typer.Option(help="Simulated shippers (1-50).")] = 3,
    carriers: Annotated[int, typer.Option(help="Simulated carriers (1-50).")] = 4,
    rate: Annotated[float, typer.Option(help="Loads per second, all shippers together.")] = 2.0,
    duration: Annotated[float, typer.Option(help="Seconds of posting, then wind down.")] = 60.0,
    loads: Annotated[int | None, typer.Option(help="Stop posting after this many.")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same participants and lanes.")] = 1,
    drain: Annotated[float, typer.Option(help="Seconds of winding down, at most.")] = 30.0,
    json: Annotated[bool, typer.Option("--json", help="The summary as JSON.")] = False,
) -> None:
    """Register shippers and carriers, fund them, trade for --duration seconds (or
    --loads loads), wind down; progress every few seconds, a summary at the end."""
    from services.sim.run import SimConfig, operator_key_from_database

    try:
        config = SimConfig(
            gateway_url,
            shippers=shippers,
            carriers=carriers,
            rate_per_s=rate,
            duration_s=duration,
            loads_max=loads,
            seed=seed,
            drain_s=drain,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not operator_key:
        from services.gateway.config import GatewayConfig

        operator_key = asyncio.run(
            operator_key_from_database(_database_url(), GatewayConfig().db_schema)
        )
    signals = Signals()
    signals.install()
    simulate(config, operator_key, signals, json)
