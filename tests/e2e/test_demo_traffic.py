"""The demo's traffic on the whole exchange: simulated shippers and carriers (services.sim)
trade over the public API for a bounded number of loads, and what they leave behind is
a clean market: deals made, delivered and paid out, carriers holding their money, no
load left undecided, and a ledger that checks."""

from __future__ import annotations

import pytest

from services.sim.orders import AuctionTiming
from services.sim.run import SimConfig, run
from tests.e2e.test_exchange_flow import audit_clean, get, ledger_check

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FEE_BPS, FEE_MINIMUM_FEN = 200, 500  # SettlementSettings: 2 %, at least 5 yuan


async def test_simulated_shippers_and_carriers_trade_deliver_and_settle(exchange):
    _, operator_key = await exchange.participant("operator", "e2e sim operator")
    config = SimConfig(
        exchange.gateway_url,
        shippers=3,
        carriers=3,
        rate_per_s=2.0,
        loads_max=20,
        duration_s=30.0,
        seed=11,
        drain_s=45.0,
        progress_s=5.0,
        timing=AuctionTiming(3_000, 6_000),
        drive_s=(0.2, 0.6),
    )
    lines: list[str] = []
    result = await run(config, operator_key=operator_key, progress=lines.append)
    t = result.tally
    print("\n".join(lines), t.summary(), sep="\n")

    assert t.posted == 20 and not t.refused, t.summary()
    assert result.drained, t.summary()
    # Every load was decided, and the two views agree: each load its shipper saw dealt
    # is a deal its carrier saw on the stream, drove, and was paid for.
    assert t.matched + sum(t.rejected.values()) + t.cancelled + t.expired == t.posted
    assert t.deals == t.matched > 0
    assert t.settled == t.delivered == t.picked_up == t.deals
    assert t.fees_fen + t.payout_fen == t.settled_price_fen == t.deal_value_fen
    assert t.fees_fen >= FEE_MINIMUM_FEN * t.settled
    assert not t.errors, t.errors

    for shipper in result.shippers:
        async with exchange.client(shipper.api_key) as client:
            page = await get(client, "/v1/loads?status=requested&limit=100")
            assert page["items"] == [], page
            page = await get(client, "/v1/loads?status=open&limit=100")
            assert page["items"] == [], page
    # The carriers hold exactly what the exchange paid them out.
    balances = []
    for carrier in result.carriers:
        async with exchange.client(carrier.api_key) as client:
            account = await get(client, "/v1/account")
            assert account["held_fen"] == 0
            balances.append(account["available_fen"])
    assert sum(balances) == t.payout_fen > 0 and max(balances) > 0

    done = ledger_check(exchange)
    assert done.returncode == 0, done.stdout + done.stderr
    # The audit ran every second while the simulated market traded (a minute or so).
    await audit_clean(exchange, rounds_min=10)
