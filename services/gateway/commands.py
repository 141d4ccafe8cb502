"""The engine commands the gateway makes, and the checks a request passes first (pure:
the caller gives the ids and the time)."""

from __future__ import annotations

from typing import Any

from services.common import envelope, reasons
from services.gateway import problems
from services.gateway.models import AuctionLoad, Lane, MarketLoad, OfferRequest
from services.gateway.reference import Tables

SOURCE = "gateway"


def lane_key(lane: dict[str, str]) -> str:
    """The partition key of a lane: "origin>destination>vehicle_class"."""
    return f"{lane['origin']}>{lane['destination']}>{lane['vehicle_class']}"


def _invalid(detail: str) -> problems.ProblemError:
    return problems.ProblemError(422, reasons.INVALID, detail)


def check_lane(lane: Lane, tables: Tables) -> dict[str, Any]:
    """The vehicle class's row; 422 unknown_region for a region not in the table."""
    for field in ("origin", "destination"):
        code = getattr(lane, field)
        if code not in tables.regions:
            raise problems.ProblemError(
                422, problems.UNKNOWN_REGION, f"lane.{field} {code} is not in /v1/reference"
            )
    return tables.classes[lane.vehicle_class]  # the pattern admits only listed classes


def check_load(req: MarketLoad | AuctionLoad, tables: Tables, now_ms: int) -> None:
    """The engine's `invalid` and `expired` rules, and the class capacity, checked at the
    edge so that a load that cannot trade is refused before it costs a hold."""
    vc = check_lane(req.lane, tables)
    if req.weight_kg > vc["capacity_kg"] or req.volume_dm3 > vc["capacity_dm3"]:
        raise problems.ProblemError(
            422,
            problems.OVER_CAPACITY,
            f"{req.lane.vehicle_class} carries up to {vc['capacity_kg']} kg and "
            f"{vc['capacity_dm3']} dm3",
        )
    if req.pickup_from > req.pickup_to:
        raise _invalid("pickup_from is after pickup_to")
    if req.deliver_by is not None and req.deliver_by < req.pickup_from:
        raise _invalid("deliver_by is before pickup_from")
    if isinstance(req, AuctionLoad):
        a = req.auction
        if a.closes_at > req.pickup_to:
            raise _invalid("auction.closes_at is after pickup_to")
        if (
            a.instant_fen is not None
            and a.reserve_fen is not None
            and a.instant_fen > a.reserve_fen
        ):
            raise _invalid("auction.instant_fen is above auction.reserve_fen")
        if a.closes_at <= now_ms:
            raise problems.ProblemError(
                422, reasons.EXPIRED, "auction.closes_at is not in the future"
            )
    if req.pickup_to < now_ms:
        raise problems.ProblemError(422, reasons.EXPIRED, "pickup_to is already past")


def check_offer(req: OfferRequest, tables: Tables, now_ms: int) -> None:
    vc = check_lane(req.lane, tables)
    if req.capacity_kg > vc["capacity_kg"] or req.capacity_dm3 > vc["capacity_dm3"]:
        raise problems.ProblemError(
            422,
            problems.OVER_CAPACITY,
            f"{req.lane.vehicle_class} carries up to {vc['capacity_kg']} kg and "
            f"{vc['capacity_dm3']} dm3",
        )
    if req.available_from > req.available_to:
        raise _invalid("available_from is after available_to")
    if req.available_to < now_ms:
        raise problems.ProblemError(422, reasons.EXPIRED, "available_to is already past")


def load_post(req: MarketLoad | AuctionLoad, load_id: str, shipper_id: str, ts_ms: int) -> dict:
    """The load.post command (DESIGN "Matching rules"), with the gateway's own fields."""
    lane = req.lane.model_dump()
    data: dict[str, Any] = {
        "load_id": load_id,
        "shipper_id": shipper_id,
        "lane": lane,
        "weight_kg": req.weight_kg,
        "volume_dm3": req.volume_dm3,
        "pickup_from": req.pickup_from,
        "pickup_to": req.pickup_to,
        "mode": req.mode,
    }
    if isinstance(req, MarketLoad):
        data["limit_fen"] = req.limit_fen
    else:
        data["auction"] = req.auction.model_dump()
    data["cargo_category"] = req.cargo_category
    if req.deliver_by is not None:
        data["deliver_by"] = req.deliver_by
    if req.declared_value_fen is not None:
        data["declared_value_fen"] = req.declared_value_fen
    return envelope.make("load.post", data, lane_key(lane), SOURCE, ts_ms)


def load_cancel(load_id: str, shipper_id: str, key: str, ts_ms: int) -> dict:
    # Keyed by the load's lane, so the cancel follows the load on its partition.
    return envelope.make(
        "load.cancel", {"load_id": load_id, "shipper_id": shipper_id}, key, SOURCE, ts_ms
    )


def offer_post(req: OfferRequest, offer_id: str, carrier_id: str, ts_ms: int) -> dict:
    lane = req.lane.model_dump()
    data = {
        "offer_id": offer_id,
        "carrier_id": carrier_id,
        "lane": lane,
        "capacity_kg": req.capacity_kg,
        "capacity_dm3": req.capacity_dm3,
        "available_from": req.available_from,
        "available_to": req.available_to,
        "ask_fen": req.ask_fen,
        "consolidate": req.consolidate,
    }
    return envelope.make("offer.post", data, lane_key(lane), SOURCE, ts_ms)


def offer_cancel(offer_id: str, carrier_id: str, key: str, ts_ms: int) -> dict:
    return envelope.make(
        "offer.cancel", {"offer_id": offer_id, "carrier_id": carrier_id}, key, SOURCE, ts_ms
    )


def bid_place(
    load_id: str, bid_id: str, carrier_id: str, price_fen: int, key: str, ts_ms: int
) -> dict:
    # Keyed by the load's lane: the bid must reach the partition that holds the auction.
    data = {"bid_id": bid_id, "load_id": load_id, "carrier_id": carrier_id, "price_fen": price_fen}
    return envelope.make("bid.place", data, key, SOURCE, ts_ms)


def bid_withdraw(bid_id: str, carrier_id: str, key: str, ts_ms: int) -> dict:
    return envelope.make(
        "bid.withdraw", {"bid_id": bid_id, "carrier_id": carrier_id}, key, SOURCE, ts_ms
    )
