"""The API's request and response bodies.

Requests are strict: integers are JSON integers (never 100.0 or "100"), unknown fields
are refused, every size has a bound. Money is integer fen, weight kg, volume dm3, time
UTC epoch ms, as in the events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

FEN_MAX = 10**12  # 10 billion yuan: above any one load's price or value
KG_MAX = 10**6
DM3_MAX = 10**7
TS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

Region = Annotated[
    str,
    StringConstraints(pattern=r"^[1-9][0-9]{5}$"),
    Field(
        description="GB/T 2260 prefecture-level code, listed in /v1/reference", examples=["420100"]
    ),
]
VehicleClass = Annotated[
    str,
    StringConstraints(
        pattern=r"^(van|high-rail|flatbed|refrigerated|container|tanker|hazmat)-(4\.2|6\.8|9\.6|13|17\.5)$"
    ),
    Field(description="body-length, listed in /v1/reference", examples=["van-9.6"]),
]
Fen = Annotated[int, Field(gt=0, le=FEN_MAX, description="integer fen (CNY cents)")]
Kg = Annotated[int, Field(gt=0, le=KG_MAX)]
Dm3 = Annotated[int, Field(gt=0, le=DM3_MAX)]
TsMs = Annotated[int, Field(ge=0, le=TS_MAX, description="UTC epoch milliseconds")]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Lane(_Strict):
    origin: Region
    destination: Region
    vehicle_class: VehicleClass


class AuctionTerms(_Strict):
    closes_at: TsMs = Field(description="the auction closes then; not after pickup_to")
    reserve_fen: Fen | None = Field(None, description="the highest acceptable bid")
    instant_fen: Fen | None = Field(None, description="a bid at or under it wins at once")
    sealed: bool = Field(False, description="carriers do not see the best bid")


class _LoadFields(_Strict):
    lane: Lane
    weight_kg: Kg
    volume_dm3: Dm3
    cargo_category: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")] = Field(
        description="a category code: lower-case words joined by '-'",
        examples=["building-materials"],
    )
    pickup_from: TsMs
    pickup_to: TsMs
    deliver_by: TsMs | None = None
    declared_value_fen: Annotated[int, Field(ge=0, le=FEN_MAX)] | None = None


class MarketLoad(_LoadFields):
    """Matched at once against resting capacity at or under limit_fen, else it rests."""

    mode: Literal["market"]
    limit_fen: Fen = Field(description="the most the shipper pays")


class AuctionLoad(_LoadFields):
    """A reverse auction: carriers bid down until closes_at."""

    mode: Literal["auction"]
    auction: AuctionTerms


LoadRequest = Annotated[MarketLoad | AuctionLoad, Field(discriminator="mode")]


class OfferRequest(_Strict):
    """A carrier's truck on a lane in an availability window, at a flat ask per load."""

    lane: Lane
    capacity_kg: Kg
    capacity_dm3: Dm3
    available_from: TsMs
    available_to: TsMs
    ask_fen: Fen
    consolidate: bool = Field(False, description="keeps taking loads while one fits (零担)")


Role = Literal["shipper", "carrier", "insurer", "operator"]
# services.gateway.lifecycle holds the rules between them.
LoadStatus = Literal[
    "requested", "open", "rejected", "dealt", "picked_up", "delivered", "disputed",
    "settled", "refunded", "cancelled", "expired",
]  # fmt: skip
# dealt: the offer carries no more loads (it did not consolidate, or is full).
OfferStatus = Literal["requested", "open", "rejected", "dealt", "cancelled", "expired"]


class ParticipantRequest(_Strict):
    role: Role
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    ]


# ---------------------------------------------------------------------------- answers


class Accepted(BaseModel):
    """The command is on the `commands` topic; the exchange decides asynchronously."""

    status: Literal["requested"] = "requested"
    command_id: str


class LoadAccepted(Accepted):
    load_id: str


class OfferAccepted(Accepted):
    offer_id: str


class CancelAccepted(BaseModel):
    command_id: str
    cancel_requested_at: int


class Deal(BaseModel):
    deal_id: str
    carrier_id: str
    offer_id: str | None
    bid_id: str | None
    price_fen: int


class Bid(BaseModel):
    bid_id: str
    carrier_id: str
    price_fen: int
    placed_at: int
    status: Literal["live", "withdrawn", "won"]


class Policy(BaseModel):
    policy_id: str
    insurer_id: str
    premium_fen: int


class Load(BaseModel):
    load_id: str
    shipper_id: str
    status: LoadStatus
    lane: Lane
    weight_kg: int
    volume_dm3: int
    cargo_category: str
    pickup_from: int
    pickup_to: int
    deliver_by: int | None
    declared_value_fen: int | None
    mode: Literal["market", "auction"]
    limit_fen: int | None
    auction: AuctionTerms | None
    requested_at: int
    cancel_requested_at: int | None
    reject_reason: str | None = Field(
        None, description="when rejected: the engine's or the funding gate's reason word"
    )
    deal: Deal | None = Field(None, description="once dealt (filled by the read model)")
    bids: list[Bid] = Field(default_factory=list, description="auction bids, to the owner")
    policy: Policy | None = Field(None, description="when insured")


class LoadPage(BaseModel):
    items: list[Load]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class Offer(BaseModel):
    offer_id: str
    carrier_id: str
    status: OfferStatus
    lane: Lane
    capacity_kg: int
    capacity_dm3: int
    available_from: int
    available_to: int
    ask_fen: int
    consolidate: bool
    requested_at: int
    cancel_requested_at: int | None
    reject_reason: str | None = None
    remaining_kg: int | None = Field(None, description="capacity left while it rests")
    remaining_dm3: int | None = None


class Participant(BaseModel):
    participant_id: str
    role: Role
    name: str
    status: Literal["active", "suspended"]
    created_at: int
    suspended_at: int | None


class ParticipantCreated(BaseModel):
    participant: Participant
    api_key: str | None = Field(
        description="shown once; null when this answer is a replay (keys are kept hashed)"
    )


class ParticipantPage(BaseModel):
    items: list[Participant]
    next_cursor: str | None


class RegionInfo(BaseModel):
    code: str
    name: str
    name_zh: str
    province: str
    lat: float
    lon: float


class VehicleClassInfo(BaseModel):
    vehicle_class: str
    body: str
    body_zh: str
    length_m: str
    capacity_kg: int
    capacity_dm3: int


class Reference(BaseModel):
    regions: list[RegionInfo]
    vehicle_classes: list[VehicleClassInfo]


# Request examples of the OpenAPI document (times in 2100, so they stay valid).
_LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
LOAD_EXAMPLES = {
    "market": {
        "summary": "A market load, Wuhan to Xiangyang",
        "value": {
            "mode": "market",
            "lane": _LANE,
            "weight_kg": 12000,
            "volume_dm3": 30000,
            "cargo_category": "building-materials",
            "pickup_from": 4102448400000,
            "pickup_to": 4102462800000,
            "deliver_by": 4102531200000,
            "declared_value_fen": 50000000,
            "limit_fen": 350000,
        },
    },
    "auction": {
        "summary": "An open reverse auction with reserve and instant-book prices",
        "value": {
            "mode": "auction",
            "lane": _LANE,
            "weight_kg": 8000,
            "volume_dm3": 20000,
            "cargo_category": "electronics",
            "pickup_from": 4102448400000,
            "pickup_to": 4102462800000,
            "auction": {
                "closes_at": 4102444800000,
                "reserve_fen": 400000,
                "instant_fen": 250000,
                "sealed": False,
            },
        },
    },
}
OFFER_EXAMPLES = {
    "consolidating": {
        "summary": "A 9.6 m van taking several loads",
        "value": {
            "lane": _LANE,
            "capacity_kg": 18000,
            "capacity_dm3": 58000,
            "available_from": 4102444800000,
            "available_to": 4102480800000,
            "ask_fen": 300000,
            "consolidate": True,
        },
    }
}
