//! The commands as the engine handles them, after the shape checks of parse.rs.
//!
//! Strings borrow the command's Python objects for the duration of one command. A
//! parse failure is `Err(ref_id)`: the command is `invalid`, and its rejection names
//! the id field of its type if that is a string.

pub struct Lane<'a> {
    pub origin: &'a str,
    pub destination: &'a str,
    pub vehicle_class: &'a str,
}

pub struct AuctionTerms {
    pub closes_at: i64,
    pub reserve_fen: Option<i64>,
    pub instant_fen: Option<i64>,
    pub sealed: bool,
}

pub struct LoadPost<'a> {
    pub load_id: &'a str,
    pub shipper_id: &'a str,
    pub lane: Lane<'a>,
    pub weight_kg: i64,
    pub volume_dm3: i64,
    pub pickup_from: i64,
    pub pickup_to: i64,
    pub limit_fen: i64,
    pub auction: Option<AuctionTerms>,
}

pub struct OfferPost<'a> {
    pub offer_id: &'a str,
    pub carrier_id: &'a str,
    pub lane: Lane<'a>,
    pub capacity_kg: i64,
    pub capacity_dm3: i64,
    pub available_from: i64,
    pub available_to: i64,
    pub ask_fen: i64,
    pub consolidate: bool,
}

pub struct BidPlace<'a> {
    pub bid_id: &'a str,
    pub load_id: &'a str,
    pub carrier_id: &'a str,
    pub price_fen: i64,
}

/// A cancel or a withdrawal: the order's id and its claimed owner.
pub struct Pair<'a> {
    pub ref_id: &'a str,
    pub owner_id: &'a str,
}

pub type Parsed<'a, T> = Result<T, Option<&'a str>>;

pub enum Command<'a> {
    LoadPost(Parsed<'a, LoadPost<'a>>),
    OfferPost(Parsed<'a, OfferPost<'a>>),
    BidPlace(Parsed<'a, BidPlace<'a>>),
    LoadCancel(Parsed<'a, Pair<'a>>),
    OfferCancel(Parsed<'a, Pair<'a>>),
    BidWithdraw(Parsed<'a, Pair<'a>>),
    ClockTick,
    /// A type the engine does not know: `invalid` with ref_id null.
    Unknown,
}

/// The command types, as named on the log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LoadPost,
    OfferPost,
    BidPlace,
    LoadCancel,
    OfferCancel,
    BidWithdraw,
    ClockTick,
}

impl Kind {
    pub fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "load.post" => Kind::LoadPost,
            "offer.post" => Kind::OfferPost,
            "bid.place" => Kind::BidPlace,
            "load.cancel" => Kind::LoadCancel,
            "offer.cancel" => Kind::OfferCancel,
            "bid.withdraw" => Kind::BidWithdraw,
            "clock.tick" => Kind::ClockTick,
            _ => return None,
        })
    }

    /// The field a command of this type names as its ref_id when it is refused.
    pub fn ref_field(self) -> Option<&'static str> {
        match self {
            Kind::LoadPost | Kind::LoadCancel => Some("load_id"),
            Kind::OfferPost | Kind::OfferCancel => Some("offer_id"),
            Kind::BidPlace | Kind::BidWithdraw => Some("bid_id"),
            Kind::ClockTick => None,
        }
    }
}
