"""One valid `data` sample of every event type, for schema tests."""

LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
LANE_KEY = "420100>420600>van-9.6"

DATA: dict[str, dict] = {
    "load.post": {
        "load_id": "L1",
        "shipper_id": "S1",
        "lane": LANE,
        "weight_kg": 8000,
        "volume_dm3": 30000,
        "pickup_from": 1_767_225_600_000,
        "pickup_to": 1_767_312_000_000,
        "mode": "market",
        "limit_fen": 350_000,
    },
    "offer.post": {
        "offer_id": "O1",
        "carrier_id": "C1",
        "lane": LANE,
        "capacity_kg": 18000,
        "capacity_dm3": 60000,
        "available_from": 1_767_225_600_000,
        "available_to": 1_767_312_000_000,
        "ask_fen": 300_000,
        "consolidate": True,
    },
    "bid.place": {"bid_id": "B1", "load_id": "L2", "carrier_id": "C1", "price_fen": 280_000},
    "load.cancel": {"load_id": "L1", "shipper_id": "S1"},
    "offer.cancel": {"offer_id": "O1", "carrier_id": "C1"},
    "bid.withdraw": {"bid_id": "B1", "carrier_id": "C1"},
    "clock.tick": {},
    "deal.made": {
        "deal_id": "deal:L1",
        "load_id": "L1",
        "offer_id": "O1",
        "bid_id": None,
        "shipper_id": "S1",
        "carrier_id": "C1",
        "price_fen": 300_000,
        "lane": LANE,
    },
    "load.rested": {"load_id": "L1"},
    "offer.rested": {"offer_id": "O1", "remaining_kg": 10000, "remaining_dm3": 30000},
    "auction.opened": {"load_id": "L2", "closes_at": 1_767_229_200_000, "sealed": False},
    "auction.closed": {"load_id": "L2", "bid_id": "B1", "price_fen": 280_000},
    "bid.accepted": {
        "bid_id": "B1",
        "load_id": "L2",
        "carrier_id": "C1",
        "price_fen": 280_000,
        "best_fen": 280_000,
    },
    "order.expired": {"ref_id": "O1"},
    "order.cancelled": {"ref_id": "L1"},
    "order.rejected": {"ref_id": None, "reason": "invalid"},
    "load.rejected": {"load_id": "L1", "shipper_id": "S1", "reason": "insufficient_funds"},
}

AUCTION_LOAD = dict(
    DATA["load.post"],
    load_id="L2",
    mode="auction",
    auction={
        "closes_at": 1_767_229_200_000,
        "reserve_fen": 400_000,
        "instant_fen": None,
        "sealed": True,
    },
)
del AUCTION_LOAD["limit_fen"]
