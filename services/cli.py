"""`wlex`: the command line of the exchange (local runtime, topics, and later participants,
ledger checks and the carrier bot)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated

import orjson
import typer

from services.common.settings import get_settings
from services.gateway import cli as gateway_cli
from services.sdk import cli as carrier_cli
from services.settlement import cli as settlement_cli
from services.sim import cli as sim_cli

app = typer.Typer(
    help="wlex, the open logistics trading exchange.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dev = typer.Typer(
    help="The local runtime: Kafka, PostgreSQL and every service, on 127.0.0.1.",
    no_args_is_help=True,
)
topics = typer.Typer(
    help="Kafka topics, as described in schemas/asyncapi.yaml.", no_args_is_help=True
)
app.add_typer(dev, name="dev")
app.add_typer(topics, name="topics")
app.add_typer(gateway_cli.app, name="participants")
app.add_typer(carrier_cli.app, name="carrier")
app.add_typer(settlement_cli.app, name="ledger")
app.add_typer(sim_cli.app, name="sim")


def _stack(brokers: int | None = None):
    from services.devenv.stack import Stack, StackConfig, recorded_brokers

    settings = get_settings()
    config = StackConfig.from_settings(settings, brokers=brokers or 1)
    if brokers is None:
        config.brokers = recorded_brokers(config.state_dir) or 1
        config = StackConfig.from_settings(settings, brokers=config.brokers)
    return Stack(config, log=lambda msg: typer.echo(msg, err=True))


def _print_status(status: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return
    state = "running" if status["running"] else "down"
    typer.echo(f"wlex local runtime: {state} ({status['state_dir']})")
    kafka = status["kafka"]
    typer.echo(f"  kafka {kafka['version']}  {kafka['bootstrap']}")
    for node_id, broker in kafka["brokers"].items():
        typer.echo(f"    node {node_id}: {broker['state']:<8} pid {broker['pid']}")
    pg = status["postgres"]
    typer.echo(f"  postgres  {pg['url']}  {pg.get('state', 'external')}")
    for name, svc in status["services"].items():
        typer.echo(f"  {name:<10} {svc['url']}  {svc['state']:<8} pid {svc['pid']}")


@dev.command("up")
def dev_up(
    brokers: Annotated[
        int,
        typer.Option(
            help="Kafka nodes: 1, or 3 for the fault tests' cluster "
            "(replication 3, min.insync.replicas 2)."
        ),
    ] = 1,
    json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Start PostgreSQL, Kafka and every service in the background; wait until all are ready."""
    if brokers not in (1, 3):
        raise typer.BadParameter("--brokers takes 1 or 3")
    _print_status(_stack(brokers).up(), json)


@dev.command("down")
def dev_down() -> None:
    """Stop every process of the local runtime (data stays under WLEX_HOME)."""
    _stack().down()
    typer.echo("down", err=True)


@dev.command("status")
def dev_status(json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Where Kafka, PostgreSQL and the services listen, and their pids."""
    _print_status(_stack().status(), json)


@app.command("demo")
def demo(
    brokers: Annotated[int, typer.Option()] = 1,
    shippers: Annotated[int, typer.Option(help="Simulated shippers (1-50).")] = 3,
    carriers: Annotated[int, typer.Option(help="Simulated carriers (1-50).")] = 4,
    rate: Annotated[float, typer.Option(help="Loads per second, all shippers together.")] = 2.0,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds of traffic, then wind down and stop; default: until Ctrl-C."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same participants and lanes.")] = 1,
    no_traffic: Annotated[
        bool, typer.Option("--no-traffic", help="The exchange alone, no simulated participants.")
    ] = False,
) -> None:
    """Run the local exchange in the foreground with simulated shippers and carriers
    trading on it, until Ctrl-C (or --duration), then stop all of it."""
    from services.sim.cli import Signals, simulate
    from services.sim.run import SimConfig

    try:
        config = SimConfig("", shippers=shippers, carriers=carriers, rate_per_s=rate,
                           duration_s=duration, seed=seed)  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    stack = _stack(brokers)
    signals = Signals()
    signals.install()
    try:
        status = stack.up()
        _print_status(status, False)
        for name, svc in status["services"].items():
            typer.echo(f"  {name:<10} metrics {svc['url']}/metrics", err=True)
        if no_traffic or signals.stop():
            typer.echo("the exchange is running; Ctrl-C stops it", err=True)
            deadline = time.monotonic() + (duration if duration is not None else float("inf"))
            while not signals.stop() and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            config.gateway_url = status["services"]["gateway"]["url"]
            simulate(config, _demo_operator_key(stack), signals)
    finally:
        typer.echo("stopping ...", err=True)
        stack.down()
        typer.echo("stopped", err=True)


def _demo_operator_key(stack) -> str:
    """An operator of the demo, made in the gateway's tables as `wlex participants
    create` makes one; the simulation registers its participants with its key."""
    from services.gateway.config import GatewayConfig
    from services.sim.run import operator_key_from_database

    return asyncio.run(operator_key_from_database(stack.database_url, GatewayConfig().db_schema))


@topics.command("create")
def topics_create(
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    replication_factor: Annotated[int, typer.Option(help="Replicas per partition.")] = 1,
) -> None:
    """Create every topic of schemas/asyncapi.yaml under WLEX_TOPIC_PREFIX (existing ones are kept)."""
    from services.common.topics import create_topics

    settings = get_settings()
    bootstrap = settings.kafka_bootstrap or _stack().kafka_bootstrap
    created = asyncio.run(
        create_topics(
            bootstrap,
            settings.topic_prefix,
            partitions=partitions,
            replication_factor=replication_factor,
        )
    )
    for name in created:
        typer.echo(name)


def main() -> None:  # pragma: no cover
    sys.exit(app())
