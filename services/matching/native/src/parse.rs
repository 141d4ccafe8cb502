//! Reading commands from Python objects with the type rules of
//! services/matching/commands.py: `type(x) is int` exactly (bool is not an int, nor is
//! an int subclass; floats never), ints within 0..=2**63-1 (a Python int too large for
//! i64 is simply out of range), ids non-empty exact `str`, lane parts non-empty without
//! ">", `type(data) is dict`. Any failure of a command's data is `invalid`; which check
//! failed never matters, so the order of the checks is free.
//!
//! Strings are borrowed from the Python objects, not copied: `Reader::keep` holds a
//! strong reference to every string it hands out until the command is done, and a str's
//! UTF-8 form never changes while the object lives.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString};

use crate::commands::{
    AuctionTerms, BidPlace, Command, Kind, Lane, LoadPost, OfferPost, Pair, Parsed,
};
use crate::emit::Out;
use crate::engine::Engine;

macro_rules! fields {
    ($($name:ident = $text:literal),* $(,)?) => {
        /// The field names, interned once (a dict lookup by an interned str whose hash
        /// is cached is one probe).
        pub struct Fields { $(pub $name: Py<PyString>,)* }
        impl Fields {
            pub fn new(py: Python<'_>) -> Fields {
                Fields { $($name: PyString::intern(py, $text).unbind(),)* }
            }
        }
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
}

type Obj<'py> = Bound<'py, PyAny>;

/// `type(x) is int and lo <= x` within i64 (bool and int subclasses are not ints).
fn int_from(x: &Obj, lo: i64) -> Option<i64> {
    if !x.is_exact_instance_of::<PyInt>() {
        return None;
    }
    match x.extract::<i64>() {
        Ok(v) if v >= lo => Some(v),
        _ => None, // below the range, or too large for i64: out of range
    }
}

fn amount(x: &Obj) -> Option<i64> {
    int_from(x, 1)
}

fn time(x: &Obj) -> Option<i64> {
    int_from(x, 0)
}

fn boolean(x: &Obj) -> Option<bool> {
    if x.is_exact_instance_of::<PyBool>() {
        Some(x.is_truthy().unwrap_or(false))
    } else {
        None
    }
}

pub struct Reader<'py, 'f> {
    py: Python<'py>,
    f: &'f Fields,
    keep: Vec<Obj<'py>>,
}

impl<'py, 'f> Reader<'py, 'f> {
    pub fn new(py: Python<'py>, f: &'f Fields) -> Self {
        Reader {
            py,
            f,
            keep: Vec::with_capacity(16),
        }
    }

    #[inline]
    fn get(&self, d: &Bound<'py, PyDict>, k: &Py<PyString>) -> PyResult<Option<Obj<'py>>> {
        d.get_item(k.bind(self.py))
    }

    /// The text of an exact `str` (a str subclass is not a str here), kept alive until
    /// the command is done. Err if it is not valid Unicode (a lone surrogate).
    fn text<'a>(&mut self, x: &Obj<'py>) -> PyResult<Option<&'a str>> {
        if !x.is_exact_instance_of::<PyString>() {
            return Ok(None);
        }
        // SAFETY: `keep` holds a reference to the str until `clear`, which the caller
        // runs only after the command's borrowed strings are dropped; a str's UTF-8
        // buffer lives as long as the object and never changes.
        let s = unsafe { x.cast_unchecked::<PyString>() }.to_str()? as *const str;
        self.keep.push(x.clone());
        Ok(Some(unsafe { &*s }))
    }

    /// A non-empty exact str.
    fn id<'a>(&mut self, x: &Obj<'py>) -> PyResult<Option<&'a str>> {
        Ok(self.text(x)?.filter(|s| !s.is_empty()))
    }

    fn opt_id<'a>(&mut self, x: Option<Obj<'py>>) -> PyResult<Option<&'a str>> {
        match x {
            Some(x) => self.id(&x),
            None => Ok(None),
        }
    }

    /// The id a command names, for its rejection: a string (even empty), else None.
    fn ref_of<'a>(
        &mut self,
        data: Option<&Obj<'py>>,
        field: &Py<PyString>,
    ) -> PyResult<Option<&'a str>> {
        let Some(data) = data else { return Ok(None) };
        if !data.is_exact_instance_of::<PyDict>() {
            return Ok(None);
        }
        let d = unsafe { data.cast_unchecked::<PyDict>() };
        match self.get(d, field)? {
            Some(x) => self.text(&x),
            None => Ok(None),
        }
    }

    fn lane<'a>(&mut self, x: &Obj<'py>) -> PyResult<Option<Lane<'a>>> {
        // Python subscripts the lane: any dict (a subclass too) has the parts.
        let Ok(d) = x.cast::<PyDict>() else {
            return Ok(None);
        };
        let f = self.f;
        let (Some(o), Some(dst), Some(c)) = (
            self.get(d, &f.origin)?,
            self.get(d, &f.destination)?,
            self.get(d, &f.vehicle_class)?,
        ) else {
            return Ok(None);
        };
        let part = |s: Option<&'a str>| s.filter(|s| !s.is_empty() && !s.contains('>'));
        let (Some(o), Some(dst), Some(c)) = (
            part(self.text(&o)?),
            part(self.text(&dst)?),
            part(self.text(&c)?),
        ) else {
            return Ok(None);
        };
        Ok(Some(Lane {
            origin: o,
            destination: dst,
            vehicle_class: c,
        }))
    }

    fn exact_dict<'a>(data: Option<&'a Obj<'py>>) -> Option<&'a Bound<'py, PyDict>> {
        let data = data?;
        if data.is_exact_instance_of::<PyDict>() {
            Some(unsafe { data.cast_unchecked::<PyDict>() })
        } else {
            None
        }
    }

    fn load_post<'a>(&mut self, data: Option<&Obj<'py>>) -> PyResult<Parsed<'a, LoadPost<'a>>> {
        let p = self.load_post_fields(data)?;
        Ok(match p {
            Some(p) => Ok(p),
            None => {
                let f = self.f;
                Err(self.ref_of(data, &f.load_id)?)
            }
        })
    }

    fn load_post_fields<'a>(&mut self, data: Option<&Obj<'py>>) -> PyResult<Option<LoadPost<'a>>> {
        let Some(d) = Self::exact_dict(data) else {
            return Ok(None);
        };
        let f = self.f;
        macro_rules! req {
            ($k:ident) => {
                match self.get(d, &f.$k)? {
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
            amount(&weight_kg),
            amount(&volume_dm3),
            time(&pickup_from),
            time(&pickup_to),
        ) else {
            return Ok(None);
        };
        if pickup_from > pickup_to {
            return Ok(None);
        }
        let Some(lane) = self.lane(&lane)? else {
            return Ok(None);
        };
        let mode = if mode.is_exact_instance_of::<PyString>() {
            unsafe { mode.cast_unchecked::<PyString>() }
                .to_str()?
                .to_owned()
        } else {
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
            let Some(limit) = self.get(d, &f.limit_fen)?.and_then(|x| amount(&x)) else {
                return Ok(None);
            };
            post.limit_fen = limit;
            return Ok(Some(post));
        }
        if mode != "auction" {
            return Ok(None);
        }
        let Some(a) = self.get(d, &f.auction)? else {
            return Ok(None);
        };
        let Some(a) = Self::exact_dict(Some(&a)) else {
            return Ok(None);
        };
        let closes_at = self.get(a, &f.closes_at)?.and_then(|x| time(&x));
        let sealed = self.get(a, &f.sealed)?.and_then(|x| boolean(&x));
        // None (or absent) is allowed; anything else must be an amount.
        let opt_amount = |x: Option<Obj<'py>>| -> Option<Option<i64>> {
            match x {
                None => Some(None),
                Some(x) if x.is_none() => Some(None),
                Some(x) => amount(&x).map(Some),
            }
        };
        let reserve = opt_amount(self.get(a, &f.reserve_fen)?);
        let instant = opt_amount(self.get(a, &f.instant_fen)?);
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

    fn offer_post<'a>(&mut self, data: Option<&Obj<'py>>) -> PyResult<Parsed<'a, OfferPost<'a>>> {
        let p = self.offer_post_fields(data)?;
        Ok(match p {
            Some(p) => Ok(p),
            None => {
                let f = self.f;
                Err(self.ref_of(data, &f.offer_id)?)
            }
        })
    }

    fn offer_post_fields<'a>(
        &mut self,
        data: Option<&Obj<'py>>,
    ) -> PyResult<Option<OfferPost<'a>>> {
        let Some(d) = Self::exact_dict(data) else {
            return Ok(None);
        };
        let f = self.f;
        macro_rules! req {
            ($k:ident) => {
                match self.get(d, &f.$k)? {
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
            amount(&kg),
            amount(&dm3),
            time(&from),
            time(&to),
            amount(&ask),
            boolean(&consolidate),
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

    fn bid_place<'a>(&mut self, data: Option<&Obj<'py>>) -> PyResult<Parsed<'a, BidPlace<'a>>> {
        let f = self.f;
        if let Some(d) = Self::exact_dict(data) {
            let bid_id = self.get(d, &f.bid_id)?;
            let load_id = self.get(d, &f.load_id)?;
            let carrier_id = self.get(d, &f.carrier_id)?;
            let price = self.get(d, &f.price_fen)?.and_then(|x| amount(&x));
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
        Ok(Err(self.ref_of(data, &f.bid_id)?))
    }

    fn pair<'a>(
        &mut self,
        data: Option<&Obj<'py>>,
        ref_field: &Py<PyString>,
        owner_field: &Py<PyString>,
    ) -> PyResult<Parsed<'a, Pair<'a>>> {
        if let Some(d) = Self::exact_dict(data) {
            let r = self.get(d, ref_field)?;
            let o = self.get(d, owner_field)?;
            if let (Some(ref_id), Some(owner_id)) = (self.opt_id(r)?, self.opt_id(o)?) {
                return Ok(Ok(Pair { ref_id, owner_id }));
            }
        }
        Ok(Err(self.ref_of(data, ref_field)?))
    }

    /// Read one command envelope and have the engine handle it (the Python engine's
    /// `process` loop body, fast and careful paths together).
    pub fn command(&mut self, eng: &mut Engine, out: &mut Out, cmd: &Obj<'py>) -> PyResult<()> {
        self.keep.clear();
        let r = self.command_inner(eng, out, cmd);
        self.keep.clear();
        r
    }

    fn command_inner(&mut self, eng: &mut Engine, out: &mut Out, cmd: &Obj<'py>) -> PyResult<()> {
        // Python subscripts the command (cmd["id"]): anything but a dict is garbled.
        let Ok(d) = cmd.cast::<PyDict>() else {
            eng.garbled(out, "", None, None);
            return Ok(());
        };
        let f = self.f;
        let id = self.get(d, &f.id)?;
        let ts = self.get(d, &f.ts)?;
        let typ = self.get(d, &f.typ)?;
        let key = self.get(d, &f.key)?;
        let data = self.get(d, &f.data)?;
        // The fast path of engine.py: all five fields present, a good id, ts and key.
        if let (Some(id), Some(ts), Some(typ), Some(key), Some(data)) =
            (&id, &ts, &typ, &key, &data)
        {
            if let (Some(cid), Some(ts), Some(key)) = (self.id(id)?, time(ts), self.text(key)?) {
                // handlers.get(cmd["type"]): a str subclass equal to a type name matches.
                let kind = match typ.cast::<PyString>() {
                    Ok(s) => Kind::of(s.to_str()?),
                    Err(_) => None,
                };
                return self.dispatch(eng, out, cid, ts, Some(key), kind, Some(data));
            }
        }
        // The careful path (`Engine._odd`).
        if !cmd.is_exact_instance_of::<PyDict>() {
            eng.garbled(out, "", None, None);
            return Ok(());
        }
        let key = match &key {
            Some(k) => self.text(k)?,
            None => None,
        };
        let cid = match &id {
            Some(x) => self.text(x)?,
            None => None,
        };
        let kind = match &typ {
            Some(t) if t.is_exact_instance_of::<PyString>() => {
                Kind::of(unsafe { t.cast_unchecked::<PyString>() }.to_str()?)
            }
            _ => None,
        };
        let ts = ts.as_ref().and_then(time);
        match (cid, ts) {
            (Some(cid), Some(ts)) if !cid.is_empty() => {
                self.dispatch(eng, out, cid, ts, key, kind, data.as_ref())
            }
            _ => {
                let field = match kind.and_then(Kind::ref_field) {
                    Some("load_id") => Some(&f.load_id),
                    Some("offer_id") => Some(&f.offer_id),
                    Some("bid_id") => Some(&f.bid_id),
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
        data: Option<&Obj<'py>>,
    ) -> PyResult<()> {
        let f = self.f;
        let cmd = match kind {
            None => Command::Unknown,
            Some(Kind::LoadPost) => Command::LoadPost(self.load_post(data)?),
            Some(Kind::OfferPost) => Command::OfferPost(self.offer_post(data)?),
            Some(Kind::BidPlace) => Command::BidPlace(self.bid_place(data)?),
            Some(Kind::LoadCancel) => {
                Command::LoadCancel(self.pair(data, &f.load_id, &f.shipper_id)?)
            }
            Some(Kind::OfferCancel) => {
                Command::OfferCancel(self.pair(data, &f.offer_id, &f.carrier_id)?)
            }
            Some(Kind::BidWithdraw) => {
                Command::BidWithdraw(self.pair(data, &f.bid_id, &f.carrier_id)?)
            }
            Some(Kind::ClockTick) => Command::ClockTick,
        };
        eng.handle(out, cid, ts, key, cmd);
        Ok(())
    }
}
