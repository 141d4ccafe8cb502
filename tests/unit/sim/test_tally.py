"""What the simulation counts, and the progress line it prints."""

from __future__ import annotations

from services.sim.tally import Tally


def test_loads_are_counted_by_how_they_ended():
    t = Tally()
    for status, reason in [("dealt", None), ("settled", None), ("rejected", "insufficient_funds"),
                           ("cancelled", None), ("expired", None), ("rejected", None)]:  # fmt: skip
        t.resolve({"status": status, "reject_reason": reason})
    assert (t.matched, t.cancelled, t.expired) == (2, 1, 1)
    assert t.rejected == {"insufficient_funds": 1, "unknown": 1}


def test_a_settled_deal_adds_its_price_fee_and_payout():
    t = Tally()
    t.settle({"price_fen": 300_000, "settlement": {"fee_fen": 6_000, "payout_fen": 294_000}})
    assert (t.settled, t.settled_price_fen, t.fees_fen, t.payout_fen) == (
        1,
        300_000,
        6_000,
        294_000,
    )


def test_progress_is_one_line_with_the_figures_and_fees_in_yuan():
    t = Tally(posted=12, deals=7, delivered=5, settled=4, cancelled=1, fees_fen=123_456)
    t.rejected["insufficient_funds"] = 2
    line = t.line(35.2)
    assert "\n" not in line
    for part in ("12 posted", "7 deals", "5 delivered", "4 settled", "2 rejected",
                 "fees 1,234.56 yuan"):  # fmt: skip
        assert part in line
