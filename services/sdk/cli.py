"""`wlex carrier run`: a bidding bot on /v1/stream, bounded by --max-bids and --duration."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import orjson
import typer

from services.sdk.carrier import CarrierClient, CommandError
from services.sdk.strategies import STRATEGIES, Fixed, Strategy, Undercut

app = typer.Typer(help="A carrier's bot on the market stream.", no_args_is_help=True)


@app.command("run")
def run(
    strategy: Annotated[str, typer.Option(help=f"One of {', '.join(STRATEGIES)}.")],
    url: Annotated[str, typer.Option(help="The gateway.")] = os.environ.get(
        "WLEX_GATEWAY_URL", "http://127.0.0.1:18003"
    ),
    key: Annotated[str, typer.Option(envvar="WLEX_API_KEY", help="A carrier's API key.")] = "",
    lane: Annotated[
        list[str] | None, typer.Option(help="origin>destination>class; repeat.")
    ] = None,
    region: Annotated[list[str] | None, typer.Option(help="Origin or destination; repeat.")] = None,
    vehicle_class: Annotated[list[str] | None, typer.Option(help="Repeat.")] = None,
    step_fen: Annotated[int, typer.Option(help="undercut: below the best by this.")] = 1000,
    floor_fen: Annotated[int, typer.Option(help="undercut: never below this.")] = 1,
    start_fen: Annotated[int | None, typer.Option(help="undercut: first bid.")] = None,
    price_fen: Annotated[int, typer.Option(help="fixed: the price.")] = 0,
    max_bids: Annotated[int, typer.Option(help="Stop after this many bids.")] = 100,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds.")] = 60.0,
) -> None:
    """Follow the subscribed lanes and bid by the strategy; one JSON line per bid on
    stdout, a summary on stderr."""
    if not key:
        raise typer.BadParameter("--key or WLEX_API_KEY")
    if strategy == "undercut":
        chosen: Strategy = Undercut(step_fen, floor_fen, start_fen)
    elif strategy == "fixed":
        chosen = Fixed(price_fen)
    else:
        raise typer.BadParameter(f"--strategy is one of {', '.join(STRATEGIES)}")
    summary = asyncio.run(
        run_bot(url, key, chosen, lane, region, vehicle_class, max_bids, duration)
    )
    typer.echo(orjson.dumps(summary).decode(), err=True)


async def run_bot(
    url: str,
    key: str,
    strategy: Strategy,
    lanes: list[str] | None,
    regions: list[str] | None,
    vehicle_classes: list[str] | None,
    max_bids: int,
    duration_s: float,
) -> dict:
    """Runs until max_bids bids were sent or duration_s passed; the counts."""
    counts = {"events": 0, "bids": 0, "acked": 0, "refused": 0}
    client = CarrierClient(url, key, lanes=lanes, regions=regions, vehicle_classes=vehicle_classes)
    await client.connect()

    async def bid(load_id: str, price: int) -> None:
        try:
            ack = await client.bid(load_id, price)
            counts["acked"] += 1
            sys.stdout.write(orjson.dumps({"bid": ack, "price_fen": price}).decode() + "\n")
        except CommandError as exc:
            counts["refused"] += 1
            sys.stdout.write(
                orjson.dumps({"refused": exc.problem, "load_id": load_id}).decode() + "\n"
            )

    async def follow() -> None:
        tasks: set[asyncio.Task] = set()
        async for frame in client.events():
            counts["events"] += 1
            for load_id, price in strategy.on_event(frame):
                if counts["bids"] >= max_bids:
                    await asyncio.gather(*tasks)
                    return
                counts["bids"] += 1
                task = asyncio.create_task(bid(load_id, price))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    try:
        async with asyncio.timeout(duration_s):
            await follow()
    except TimeoutError:
        pass
    finally:
        await client.close()
    return counts
