//! Reading commands with the type rules of services/matching/commands.py, from either
//! source: Python objects (the dict path, pysource.rs) or JSON bytes (json.rs). The
//! rules: `type(x) is int` exactly (bool is not an int, nor is an int subclass; floats
//! never), ints within 0..=2**63-1 (a Python int too large for i64 is simply out of
//! range), ids non-empty exact `str`, lane parts non-empty without ">",
//! `type(data) is dict`. Any failure of a command's data is `invalid`; which check
//! failed never matters, so the order of the checks is free.
//!
//! One reader over a `Source` keeps the two paths from ever disagreeing on a rule.

use pyo3::prelude::*;

use crate::commands::{
    AuctionTerms, BidPlace, Command, Kind, Lane, LoadPost, OfferPost, Pair, Parsed,
};
use crate::emit::Out;
use crate::engine::Engine;

macro_rules! fields {
    ($($name:ident = $text:literal),* $(,)?) => {
        /// The field names a command is read by.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum F { $($name,)* }
        /// Their text, indexed by `F as usize`.
        pub const NAMES: &[&str] = &[$($text,)*];
    };
}

fields! {
    id = "id", ts = "ts", typ = "type", key = "key", data = "data",
    load_id = "load_id", shipper_id = "shipper_id", lane = "lane",
    weight_kg = "weight_kg", volume_dm3 = "volume_dm3", pickup_from = "pickup_from",
    pickup_to = "pickup_to", mode = "mode", limit_fen = "limit_fen", auction = "auction",
    closes_at = "closes_at", reserve_fen = "reserve_fen", instant_fen = "instant_fen",
    sealed = "sealed", offer_id = "offer_id", carrier_id = "carrier_id",
    capacity_kg = "capacity_kg", capacity_dm3 = "capacity_dm3",
    available_from = "available_from", available_to = "available_to", ask_fen = "ask_fen",
    consolidate = "consolidate", bid_id = "bid_id", price_fen = "price_fen",
    origin = "origin", destination = "destination", vehicle_class = "vehicle_class",
    // The envelope's other keys: the JSON path checks them (json.rs).
    v = "v", source = "source", cause = "cause",
}

/// Where command values come from. Strings handed out live for 'a: the source keeps
/// them alive until the command is done.
pub trait Source<'a> {
    type V: Clone;
    /// A dict, a subclass too (Python subscripts it).
    fn is_dict(&self, v: &Self::V) -> bool;
    /// `type(v) is dict`.
    fn is_exact_dict(&self, v: &Self::V) -> bool;
    /// d[f] if present; `d` satisfies `is_dict`.
    fn get(&mut self, d: &Self::V, f: F) -> PyResult<Option<Self::V>>;
    /// `type(v) is int` and within i64.
    fn int(&self, v: &Self::V) -> Option<i64>;
    /// `type(v) is bool`.
    fn boolean(&self, v: &Self::V) -> Option<bool>;
    fn is_none(&self, v: &Self::V) -> bool;
    /// The text of an exact `str`. Err if it is not valid Unicode (a lone surrogate).
    fn text(&mut self, v: &Self::V) -> PyResult<Option<&'a str>>;
    /// The text of a `str` or a subclass of it.
    fn any_text(&mut self, v: &Self::V) -> PyResult<Option<&'a str>>;
}

pub struct Reader<S> {
    pub src: S,
}

impl<'a, S: Source<'a>> Reader<S> {
    #[inline(always)]
    fn amount(&self, x: &S::V) -> Option<i64> {
        self.src.int(x).filter(|&v| v >= 1)
    }

    #[inline(always)]
    fn time(&self, x: &S::V) -> Option<i64> {
        self.src.int(x).filter(|&v| v >= 0)
    }

    /// A non-empty exact str.
    #[inline(always)]
    fn id(&mut self, x: &S::V) -> PyResult<Option<&'a str>> {
        Ok(self.src.text(x)?.filter(|s| !s.is_empty()))
    }

    fn opt_id(&mut self, x: Option<S::V>) -> PyResult<Option<&'a str>> {
        match x {
            Some(x) => self.id(&x),
            None => Ok(None),
        }
    }

    fn exact_dict<'v>(&self, data: Option<&'v S::V>) -> Option<&'v S::V> {
        data.filter(|d| self.src.is_exact_dict(d))
    }

    /// The id a command names, for its rejection: a string (even empty), else None.
    fn ref_of(&mut self, data: Option<&S::V>, field: F) -> PyResult<Option<&'a str>> {
        let Some(d) = self.exact_dict(data) else {
            return Ok(None);
        };
        match self.src.get(d, field)? {
            Some(x) => self.src.text(&x),
            None => Ok(None),
        }
    }

    fn lane(&mut self, x: &S::V) -> PyResult<Option<Lane<'a>>> {
        // Python subscripts the lane: any dict (a subclass too) has the parts.
        if !self.src.is_dict(x) {
            return Ok(None);
        }
        let (Some(o), Some(dst), Some(c)) = (
            self.src.get(x, F::origin)?,
            self.src.get(x, F::destination)?,
            self.src.get(x, F::vehicle_class)?,
        ) else {
            return Ok(None);
        };
        // A byte loop, not str::contains: lane parts are a few bytes, and the memchr
        // call behind contains cost about a hundred instructions a command.
        let part =
            |s: Option<&'a str>| s.filter(|s| !s.is_empty() && !s.bytes().any(|b| b == b'>'));
        let (Some(o), Some(dst), Some(c)) = (
            part(self.src.text(&o)?),
            part(self.src.text(&dst)?),
            part(self.src.text(&c)?),
        ) else {
            return Ok(None);
        };
        Ok(Some(Lane {
            origin: o,
            destination: dst,
            vehicle_class: c,
        }))
    }

    fn load_post(&mut self, data: Option<&S::V>) -> PyResult<Parsed<'a, LoadPost<'a>>> {
        Ok(match self.load_post_fields(data)? {
            Some(p) => Ok(p),
            None => Err(self.ref_of(data, F::load_id)?),
        })
    }

    fn load_post_fields(&mut self, data: Option<&S::V>) -> PyResult<Option<LoadPost<'a>>> {
        let Some(d) = self.exact_dict(data) else {
            return Ok(None);
        };
        macro_rules! req {
            ($k:ident) => {
                match self.src.get(d, F::$k)? {
                    Some(x) => x,
                    None => return Ok(None),
                }
            };
        }
        let (load_id, shipper_id, lane, weight_kg, volume_dm3, pickup_from, pickup_to, mode) = (
            req!(load_id),
            req!(shipper_id),
            req!(lane),
            req!(weight_kg),
            req!(volume_dm3),
            req!(pickup_from),
            req!(pickup_to),
            req!(mode),
        );
        let (Some(load_id), Some(shipper_id)) = (self.id(&load_id)?, self.id(&shipper_id)?) else {
            return Ok(None);
        };
        let (Some(weight_kg), Some(volume_dm3), Some(pickup_from), Some(pickup_to)) = (
            self.amount(&weight_kg),
            self.amount(&volume_dm3),
            self.time(&pickup_from),
            self.time(&pickup_to),
        ) else {
            return Ok(None);
        };
        if pickup_from > pickup_to {
            return Ok(None);
        }
        let Some(lane) = self.lane(&lane)? else {
            return Ok(None);
        };
        let Some(mode) = self.src.text(&mode)? else {
            return Ok(None);
        };
        let mut post = LoadPost {
            load_id,
            shipper_id,
            lane,
            weight_kg,
            volume_dm3,
            pickup_from,
            pickup_to,
            limit_fen: 0,
            auction: None,
        };
        if mode == "market" {
            let Some(limit) = self.src.get(d, F::limit_fen)?.and_then(|x| self.amount(&x)) else {
                return Ok(None);
            };
            post.limit_fen = limit;
            return Ok(Some(post));
        }
        if mode != "auction" {
            return Ok(None);
        }
        let Some(a) = self.src.get(d, F::auction)? else {
            return Ok(None);
        };
        if !self.src.is_exact_dict(&a) {
            return Ok(None);
        }
        let closes_at = self.src.get(&a, F::closes_at)?.and_then(|x| self.time(&x));
        let sealed = self
            .src
            .get(&a, F::sealed)?
            .and_then(|x| self.src.boolean(&x));
        // None (or absent) is allowed; anything else must be an amount.
        let opt_amount = |r: &Self, x: Option<S::V>| -> Option<Option<i64>> {
            match x {
                None => Some(None),
                Some(x) if r.src.is_none(&x) => Some(None),
                Some(x) => r.amount(&x).map(Some),
            }
        };
        let reserve = self.src.get(&a, F::reserve_fen)?;
        let reserve = opt_amount(self, reserve);
        let instant = self.src.get(&a, F::instant_fen)?;
        let instant = opt_amount(self, instant);
        let (Some(closes_at), Some(sealed), Some(reserve_fen), Some(instant_fen)) =
            (closes_at, sealed, reserve, instant)
        else {
            return Ok(None);
        };
        if closes_at > pickup_to {
            return Ok(None);
        }
        if let (Some(r), Some(i)) = (reserve_fen, instant_fen) {
            if i > r {
                return Ok(None);
            }
        }
        post.auction = Some(AuctionTerms {
            closes_at,
            reserve_fen,
            instant_fen,
            sealed,
        });
        Ok(Some(post))
    }

    fn offer_post(&mut self, data: Option<&S::V>) -> PyResult<Parsed<'a, OfferPost<'a>>> {
        Ok(match self.offer_post_fields(data)? {
            Some(p) => Ok(p),
            None => Err(self.ref_of(data, F::offer_id)?),
        })
    }

    fn offer_post_fields(&mut self, data: Option<&S::V>) -> PyResult<Option<OfferPost<'a>>> {
        let Some(d) = self.exact_dict(data) else {
            return Ok(None);
        };
        macro_rules! req {
            ($k:ident) => {
                match self.src.get(d, F::$k)? {
                    Some(x) => x,
                    None => return Ok(None),
                }
            };
        }
        let (offer_id, carrier_id, lane, kg, dm3, from, to, ask, consolidate) = (
            req!(offer_id),
            req!(carrier_id),
            req!(lane),
            req!(capacity_kg),
            req!(capacity_dm3),
            req!(available_from),
            req!(available_to),
            req!(ask_fen),
            req!(consolidate),
        );
        let (Some(offer_id), Some(carrier_id)) = (self.id(&offer_id)?, self.id(&carrier_id)?)
        else {
            return Ok(None);
        };
        let (Some(kg), Some(dm3), Some(from), Some(to), Some(ask), Some(consolidate)) = (
            self.amount(&kg),
            self.amount(&dm3),
            self.time(&from),
            self.time(&to),
            self.amount(&ask),
            self.src.boolean(&consolidate),
        ) else {
            return Ok(None);
        };
        if from > to {
            return Ok(None);
        }
        let Some(lane) = self.lane(&lane)? else {
            return Ok(None);
        };
        Ok(Some(OfferPost {
            offer_id,
            carrier_id,
            lane,
            capacity_kg: kg,
            capacity_dm3: dm3,
            available_from: from,
            available_to: to,
            ask_fen: ask,
            consolidate,
        }))
    }

    fn bid_place(&mut self, data: Option<&S::V>) -> PyResult<Parsed<'a, BidPlace<'a>>> {
        if let Some(d) = self.exact_dict(data) {
            let bid_id = self.src.get(d, F::bid_id)?;
            let load_id = self.src.get(d, F::load_id)?;
            let carrier_id = self.src.get(d, F::carrier_id)?;
            let price = self.src.get(d, F::price_fen)?.and_then(|x| self.amount(&x));
            if let (Some(bid_id), Some(load_id), Some(carrier_id), Some(price_fen)) = (
                self.opt_id(bid_id)?,
                self.opt_id(load_id)?,
                self.opt_id(carrier_id)?,
                price,
            ) {
                return Ok(Ok(BidPlace {
                    bid_id,
                    load_id,
                    carrier_id,
                    price_fen,
                }));
            }
        }
        Ok(Err(self.ref_of(data, F::bid_id)?))
    }

    fn pair(
        &mut self,
        data: Option<&S::V>,
        ref_field: F,
        owner_field: F,
    ) -> PyResult<Parsed<'a, Pair<'a>>> {
        if let Some(d) = self.exact_dict(data) {
            let r = self.src.get(d, ref_field)?;
            let o = self.src.get(d, owner_field)?;
            if let (Some(ref_id), Some(owner_id)) = (self.opt_id(r)?, self.opt_id(o)?) {
                return Ok(Ok(Pair { ref_id, owner_id }));
            }
        }
        Ok(Err(self.ref_of(data, ref_field)?))
    }

    /// Read one command envelope and have the engine handle it (the Python engine's
    /// `process` loop body, fast and careful paths together).
    pub fn command(&mut self, eng: &mut Engine, out: &mut Out, cmd: &S::V) -> PyResult<()> {
        // Python subscripts the command (cmd["id"]): anything but a dict is garbled.
        if !self.src.is_dict(cmd) {
            eng.garbled(out, "", None, None);
            return Ok(());
        }
        let id = self.src.get(cmd, F::id)?;
        let ts = self.src.get(cmd, F::ts)?;
        let typ = self.src.get(cmd, F::typ)?;
        let key = self.src.get(cmd, F::key)?;
        let data = self.src.get(cmd, F::data)?;
        // The fast path of engine.py: all five fields present, a good id, ts and key.
        if let (Some(id), Some(ts), Some(typ), Some(key), Some(data)) =
            (&id, &ts, &typ, &key, &data)
        {
            if let (Some(cid), Some(ts), Some(key)) =
                (self.id(id)?, self.time(ts), self.src.text(key)?)
            {
                // handlers.get(cmd["type"]): a str subclass equal to a type name matches.
                let kind = match self.src.any_text(typ)? {
                    Some(s) => Kind::of(s),
                    None => None,
                };
                return self.dispatch(eng, out, cid, ts, Some(key), kind, Some(data));
            }
        }
        // The careful path (`Engine._odd`).
        if !self.src.is_exact_dict(cmd) {
            eng.garbled(out, "", None, None);
            return Ok(());
        }
        let key = match &key {
            Some(k) => self.src.text(k)?,
            None => None,
        };
        let cid = match &id {
            Some(x) => self.src.text(x)?,
            None => None,
        };
        let kind = match &typ {
            Some(t) => self.src.text(t)?.and_then(Kind::of),
            None => None,
        };
        let ts = ts.as_ref().and_then(|t| self.time(t));
        match (cid, ts) {
            (Some(cid), Some(ts)) if !cid.is_empty() => {
                self.dispatch(eng, out, cid, ts, key, kind, data.as_ref())
            }
            _ => {
                let field = match kind.and_then(Kind::ref_field) {
                    Some("load_id") => Some(F::load_id),
                    Some("offer_id") => Some(F::offer_id),
                    Some("bid_id") => Some(F::bid_id),
                    _ => None,
                };
                let r = match field {
                    Some(field) => self.ref_of(data.as_ref(), field)?,
                    None => None,
                };
                eng.garbled(out, cid.unwrap_or(""), key, r);
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        eng: &mut Engine,
        out: &mut Out,
        cid: &str,
        ts: i64,
        key: Option<&str>,
        kind: Option<Kind>,
        data: Option<&S::V>,
    ) -> PyResult<()> {
        let cmd = match kind {
            None => Command::Unknown,
            Some(Kind::LoadPost) => Command::LoadPost(self.load_post(data)?),
            Some(Kind::OfferPost) => Command::OfferPost(self.offer_post(data)?),
            Some(Kind::BidPlace) => Command::BidPlace(self.bid_place(data)?),
            Some(Kind::LoadCancel) => {
                Command::LoadCancel(self.pair(data, F::load_id, F::shipper_id)?)
            }
            Some(Kind::OfferCancel) => {
                Command::OfferCancel(self.pair(data, F::offer_id, F::carrier_id)?)
            }
            Some(Kind::BidWithdraw) => {
                Command::BidWithdraw(self.pair(data, F::bid_id, F::carrier_id)?)
            }
            Some(Kind::ClockTick) => Command::ClockTick,
        };
        eng.handle(out, cid, ts, key, cmd);
        Ok(())
    }
}
