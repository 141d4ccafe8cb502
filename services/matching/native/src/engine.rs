//! The matching engine: the rules of services/matching/engine.py, state in native
//! memory. Pure Rust (no Python): commands in (already shape-checked), JSON events out.
//!
//! Every branch mirrors the Python engine line for line (same checks in the same order,
//! same seq accounting, same timer order), because the two must give identical bytes
//! for every log; tests/unit/matching/test_native_vs_python.py holds them to it.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::rc::Rc;

use foldhash::fast::FixedState;

use crate::book::Book;
use crate::commands::{BidPlace, Command, Lane, LoadPost, OfferPost, Pair, Parsed};
use crate::emit::{
    json_bool, json_int, json_opt_int, json_str, Key, Out, AUCTION_CLOSED, AUCTION_OPENED,
    BID_ACCEPTED, DEAL_MADE, LOAD_RESTED, OFFER_RESTED, ORDER_CANCELLED, ORDER_EXPIRED,
    ORDER_REJECTED,
};
use crate::ids::{IdMap, HASH};
use crate::orders::{Auction, Bid, Load, Name, Offer, Slab};
use crate::timers::{Fired, Target, Timers};

/// The rejection reasons, in precedence order. Their words come from Python
/// (services/common/reasons.py, the one place they live), given at construction.
#[derive(Clone, Copy)]
pub enum Reason {
    Invalid = 0,
    Expired,
    DuplicateId,
    UnknownOrder,
    NotOwner,
    NotAuction,
    AboveReserve,
    NotImproving,
}

pub const REASONS: usize = 8;

/// The participant-id cache is emptied when it reaches this size (as in Python).
const NAMES_MAX: usize = 1 << 17;
/// An auction's bid heap is rebuilt when withdrawn entries exceed this and the live.
const BIDS_DEAD_MIN: u32 = 32;

/// Lane keys hash as ids do (ids.rs).
type StrMap<K, V> = HashMap<K, V, FixedState>;

/// A load id names a resting market load or an open auction (one id space).
#[derive(Clone, Copy)]
pub enum LoadRef {
    Market(u32),
    Auction(u32),
}

pub struct Engine {
    pub now: i64,
    pub seq: i64,
    pub books: Vec<Book>,
    book_of: StrMap<Box<str>, u32>,
    pub loads: IdMap<LoadRef>,
    pub offers: IdMap<u32>,
    pub bids: IdMap<u32>,
    pub load_slab: Slab<Load>,
    pub offer_slab: Slab<Offer>,
    pub auction_slab: Slab<Auction>,
    pub bid_slab: Slab<Bid>,
    timers: Timers,
    names: IdMap<()>,
    reasons: [Box<[u8]>; REASONS],
    // Scratch space reused across commands (no allocation per command).
    fired: Vec<(i64, i64, Fired)>,
    taken: Vec<u32>,
    lane_key: String,
    /// Benchmark builds only (feature `ablation`, loadtests/bench_native_ablation.py):
    /// 0 handles commands, 1 reads each command and stops there, 2 also writes one
    /// order.rejected event for it, 3 handles them without the duplicate-id check of
    /// loads and offers and without putting market loads and offers in the id maps
    /// (right only for a log of market orders with unique ids and no cancels, such as
    /// the benchmark's, which checks the bytes). Builds without the feature do not have
    /// it.
    #[cfg(feature = "ablation")]
    pub ablation: u8,
}

impl Engine {
    /// `reasons`: the eight reason words in the order of `Reason`.
    pub fn new(reasons: [&str; REASONS]) -> Engine {
        let reasons = reasons.map(|r| {
            let mut v = Vec::new();
            json_str(&mut v, r);
            v.into_boxed_slice()
        });
        Engine {
            now: 0,
            seq: 0,
            books: Vec::new(),
            book_of: HashMap::with_hasher(HASH),
            loads: IdMap::default(),
            offers: IdMap::default(),
            bids: IdMap::default(),
            load_slab: Slab::new(),
            offer_slab: Slab::new(),
            auction_slab: Slab::new(),
            bid_slab: Slab::new(),
            timers: Timers::new(),
            names: IdMap::default(),
            reasons,
            fired: Vec::new(),
            taken: Vec::new(),
            lane_key: String::new(),
            #[cfg(feature = "ablation")]
            ablation: 0,
        }
    }

    // -- the log -------------------------------------------------------------------

    /// A command with a valid id and ts: move the clock, fire what is due, handle it.
    pub fn handle(&mut self, out: &mut Out, cid: &str, ts: i64, key: Option<&str>, cmd: Command) {
        out.begin_command();
        #[cfg(feature = "ablation")]
        if self.ablation == 1 || self.ablation == 2 {
            std::hint::black_box(&cmd);
            if self.ablation == 2 {
                self.reject(out, cid, key, None, Reason::Invalid);
            }
            return;
        }
        if ts > self.now {
            self.now = ts;
        }
        if self.timers.due(self.now) {
            self.fire(out, cid);
        }
        match cmd {
            Command::LoadPost(p) => self.load_post(out, cid, key, p),
            Command::OfferPost(p) => self.offer_post(out, cid, key, p),
            Command::BidPlace(p) => self.bid_place(out, cid, key, p),
            Command::LoadCancel(p) => self.load_cancel(out, cid, key, p),
            Command::OfferCancel(p) => self.offer_cancel(out, cid, key, p),
            Command::BidWithdraw(p) => self.bid_withdraw(out, cid, key, p),
            Command::ClockTick => {}
            Command::Unknown => self.reject(out, cid, key, None, Reason::Invalid),
        }
    }

    /// A command without a valid id or ts (or not an object at all, with cid ""): it
    /// is `invalid`, and the clock does not move: a garbled envelope must not expire
    /// anybody's orders.
    pub fn garbled(&mut self, out: &mut Out, cid: &str, key: Option<&str>, ref_id: Option<&str>) {
        out.begin_command();
        self.reject(out, cid, key, ref_id, Reason::Invalid);
    }

    fn fire(&mut self, out: &mut Out, cid: &str) {
        let now = self.now;
        let mut fired = std::mem::take(&mut self.fired);
        {
            let (loads, offers, auctions) = (&self.load_slab, &self.offer_slab, &self.auction_slab);
            self.timers.pop_due(
                now,
                |t, seq| match t {
                    Target::Load(i) => loads.holds(i, seq),
                    Target::Offer(i) => offers.holds(i, seq),
                },
                |a, seq| auctions.holds(a, seq),
                &mut fired,
            );
        }
        for &(_, _, f) in fired.iter() {
            match f {
                Fired::Auction(a) => self.close(out, cid, a, true),
                Fired::Load(i) => {
                    let book = self.load_slab.get(i).book;
                    self.books[book as usize].remove_load(&self.load_slab, i);
                    let load = self.load_slab.remove(i);
                    self.loads.remove(&load.load_id);
                    self.expired(out, cid, book, &load.load_id);
                }
                Fired::Offer(i) => {
                    let book = self.offer_slab.get(i).book;
                    self.books[book as usize].remove_offer(&self.offer_slab, i);
                    let offer = self.offer_slab.remove(i);
                    self.offers.remove(&offer.offer_id);
                    self.expired(out, cid, book, &offer.offer_id);
                }
            }
        }
        self.fired = fired;
    }

    fn expired(&self, out: &mut Out, cid: &str, book: u32, ref_id: &str) {
        out.head(
            cid,
            ORDER_EXPIRED,
            self.now,
            &self.books[book as usize].key_json,
        );
        out.buf.extend_from_slice(b"{\"ref_id\":");
        json_str(&mut out.buf, ref_id);
        out.buf.push(b'}');
        out.end(Key::Book(book));
    }

    fn forget(&mut self) {
        let (loads, offers, auctions) = (&self.load_slab, &self.offer_slab, &self.auction_slab);
        self.timers.forget(
            |t, seq| match t {
                Target::Load(i) => loads.holds(i, seq),
                Target::Offer(i) => offers.holds(i, seq),
            },
            |a, seq| auctions.holds(a, seq),
        );
    }

    /// Whether a load's or offer's id is checked for duplicates, and a market order kept
    /// in its id map: always, but in a benchmark build timing what that costs
    /// (Engine::ablation 3).
    #[inline(always)]
    fn id_maps(&self) -> bool {
        #[cfg(feature = "ablation")]
        return self.ablation != 3;
        #[cfg(not(feature = "ablation"))]
        true
    }

    /// The book of a lane, made on first use.
    pub fn book(&mut self, lane: &Lane) -> u32 {
        let key = &mut self.lane_key;
        key.clear();
        key.push_str(lane.origin);
        key.push('>');
        key.push_str(lane.destination);
        key.push('>');
        key.push_str(lane.vehicle_class);
        if let Some(&b) = self.book_of.get(key.as_str()) {
            return b;
        }
        let b = self.books.len() as u32;
        self.books.push(Book::new(
            lane.origin,
            lane.destination,
            lane.vehicle_class,
            key,
        ));
        self.book_of.insert(key.as_str().into(), b);
        b
    }

    /// One shared string per participant id (a bounded cache, not state).
    pub fn name(&mut self, name: &str) -> Name {
        if let Some(n) = self.names.name(name) {
            return n.clone();
        }
        if self.names.len() >= NAMES_MAX {
            self.names.clear();
        }
        let n: Name = Rc::from(name);
        self.names.insert(n.clone(), ());
        n
    }

    // -- commands ------------------------------------------------------------------

    fn load_post(&mut self, out: &mut Out, cid: &str, key: Option<&str>, p: Parsed<LoadPost>) {
        let p = match p {
            Ok(p) => p,
            Err(r) => return self.reject(out, cid, key, r, Reason::Invalid),
        };
        let now = self.now;
        let expired = match &p.auction {
            None => p.pickup_to < now,
            Some(a) => a.closes_at <= now,
        };
        if expired {
            return self.reject(out, cid, key, Some(p.load_id), Reason::Expired);
        }
        if self.id_maps() && self.loads.contains_key(p.load_id) {
            return self.reject(out, cid, key, Some(p.load_id), Reason::DuplicateId);
        }
        let b = self.book(&p.lane);
        let shipper_id = self.name(p.shipper_id);
        self.seq += 1;
        let seq = self.seq;
        if let Some(t) = p.auction {
            let load_id: Name = Rc::from(p.load_id);
            let a = self.auction_slab.insert(Auction {
                load_id: load_id.clone(),
                shipper_id,
                book: b,
                closes_at: t.closes_at,
                reserve_fen: t.reserve_fen,
                instant_fen: t.instant_fen,
                sealed: t.sealed,
                seq,
                bids: Default::default(),
                dead: 0,
            });
            self.loads.insert(load_id, LoadRef::Auction(a));
            self.timers.add_close(t.closes_at, seq, a);
            let book = &self.books[b as usize];
            out.head(cid, AUCTION_OPENED, now, &book.key_json);
            let buf = &mut out.buf;
            buf.extend_from_slice(b"{\"load_id\":");
            json_str(buf, p.load_id);
            buf.extend_from_slice(b",\"closes_at\":");
            json_int(buf, t.closes_at);
            buf.extend_from_slice(b",\"sealed\":");
            json_bool(buf, t.sealed);
            buf.push(b'}');
            out.end(Key::Book(b));
            return;
        }
        let book = &self.books[b as usize];
        let found = if book.has_offers() {
            book.best_offer(
                &self.offer_slab,
                p.weight_kg,
                p.volume_dm3,
                p.pickup_from,
                p.pickup_to,
                p.limit_fen,
            )
        } else {
            None
        };
        if let Some(i) = found {
            let o = self.offer_slab.get_mut(i);
            o.remaining_kg -= p.weight_kg;
            o.remaining_dm3 -= p.volume_dm3;
            let stays = o.consolidate && o.remaining_kg > 0 && o.remaining_dm3 > 0;
            let (offer_id, carrier_id, ask_fen) =
                (o.offer_id.clone(), o.carrier_id.clone(), o.ask_fen);
            if !stays {
                self.books[b as usize].remove_offer(&self.offer_slab, i);
                self.offer_slab.remove(i);
                self.offers.remove(&offer_id);
                self.forget();
            }
            self.deal(
                out,
                cid,
                b,
                p.load_id,
                Some(&offer_id),
                None,
                &shipper_id,
                &carrier_id,
                ask_fen,
            );
            return;
        }
        let load_id: Name = Rc::from(p.load_id);
        let i = self.load_slab.insert(Load {
            load_id: load_id.clone(),
            shipper_id,
            book: b,
            weight_kg: p.weight_kg,
            volume_dm3: p.volume_dm3,
            pickup_from: p.pickup_from,
            pickup_to: p.pickup_to,
            limit_fen: p.limit_fen,
            seq,
        });
        self.books[b as usize].add_load(p.limit_fen, i);
        if self.id_maps() {
            self.loads.insert(load_id, LoadRef::Market(i));
        }
        self.timers.add_expiry(p.pickup_to, seq, Target::Load(i));
        out.head(cid, LOAD_RESTED, now, &self.books[b as usize].key_json);
        out.buf.extend_from_slice(b"{\"load_id\":");
        json_str(&mut out.buf, p.load_id);
        out.buf.push(b'}');
        out.end(Key::Book(b));
    }

    fn offer_post(&mut self, out: &mut Out, cid: &str, key: Option<&str>, p: Parsed<OfferPost>) {
        let p = match p {
            Ok(p) => p,
            Err(r) => return self.reject(out, cid, key, r, Reason::Invalid),
        };
        let now = self.now;
        if p.available_to < now {
            return self.reject(out, cid, key, Some(p.offer_id), Reason::Expired);
        }
        if self.id_maps() && self.offers.contains_key(p.offer_id) {
            return self.reject(out, cid, key, Some(p.offer_id), Reason::DuplicateId);
        }
        let b = self.book(&p.lane);
        let carrier_id = self.name(p.carrier_id);
        self.seq += 1;
        let seq = self.seq;
        let mut rem_kg = p.capacity_kg;
        let mut rem_dm3 = p.capacity_dm3;
        let mut taken = std::mem::take(&mut self.taken);
        taken.clear();
        let book = &self.books[b as usize];
        if book.has_loads() {
            book.best_loads(
                &self.load_slab,
                p.ask_fen,
                p.capacity_kg,
                p.capacity_dm3,
                p.available_from,
                p.available_to,
                p.consolidate,
                &mut taken,
            );
        }
        let any = !taken.is_empty();
        for &i in taken.iter() {
            self.books[b as usize].remove_load(&self.load_slab, i);
            let load = self.load_slab.remove(i);
            self.loads.remove(&load.load_id);
            self.forget();
            rem_kg -= load.weight_kg;
            rem_dm3 -= load.volume_dm3;
            self.deal(
                out,
                cid,
                b,
                &load.load_id,
                Some(p.offer_id),
                None,
                &load.shipper_id,
                &carrier_id,
                load.limit_fen,
            );
        }
        self.taken = taken;
        if any && !(p.consolidate && rem_kg > 0 && rem_dm3 > 0) {
            return;
        }
        let offer_id: Name = Rc::from(p.offer_id);
        let i = self.offer_slab.insert(Offer {
            offer_id: offer_id.clone(),
            carrier_id,
            book: b,
            remaining_kg: rem_kg,
            remaining_dm3: rem_dm3,
            available_from: p.available_from,
            available_to: p.available_to,
            ask_fen: p.ask_fen,
            consolidate: p.consolidate,
            seq,
        });
        self.books[b as usize].add_offer(p.ask_fen, i);
        if self.id_maps() {
            self.offers.insert(offer_id, i);
        }
        self.timers
            .add_expiry(p.available_to, seq, Target::Offer(i));
        out.head(cid, OFFER_RESTED, now, &self.books[b as usize].key_json);
        let buf = &mut out.buf;
        buf.extend_from_slice(b"{\"offer_id\":");
        json_str(buf, p.offer_id);
        buf.extend_from_slice(b",\"remaining_kg\":");
        json_int(buf, rem_kg);
        buf.extend_from_slice(b",\"remaining_dm3\":");
        json_int(buf, rem_dm3);
        buf.push(b'}');
        out.end(Key::Book(b));
    }

    fn bid_place(&mut self, out: &mut Out, cid: &str, key: Option<&str>, p: Parsed<BidPlace>) {
        let p = match p {
            Ok(p) => p,
            Err(r) => return self.reject(out, cid, key, r, Reason::Invalid),
        };
        let now = self.now;
        let bid_ref = Some(p.bid_id);
        if self.bids.contains_key(p.bid_id) {
            return self.reject(out, cid, key, bid_ref, Reason::DuplicateId);
        }
        let a = match self.loads.get(p.load_id) {
            None => return self.reject(out, cid, key, bid_ref, Reason::UnknownOrder),
            Some(LoadRef::Market(_)) => {
                return self.reject(out, cid, key, bid_ref, Reason::NotAuction)
            }
            Some(&LoadRef::Auction(a)) => a,
        };
        let auction = self.auction_slab.get(a);
        if let Some(reserve) = auction.reserve_fen {
            if p.price_fen > reserve {
                return self.reject(out, cid, key, bid_ref, Reason::AboveReserve);
            }
        }
        let best = self.best_bid(a).map(|bid| self.bid_slab.get(bid).price_fen);
        let auction = self.auction_slab.get(a);
        // Only an open auction shows its best bid, so only there must a bid beat it.
        if let Some(best) = best {
            if !auction.sealed && p.price_fen >= best {
                return self.reject(out, cid, key, bid_ref, Reason::NotImproving);
            }
        }
        let (sealed, instant_fen, b) = (auction.sealed, auction.instant_fen, auction.book);
        let carrier_id = self.name(p.carrier_id);
        self.seq += 1;
        let seq = self.seq;
        let bid = self.bid_slab.insert(Bid {
            bid_id: Rc::from(p.bid_id),
            carrier_id,
            auction: a,
            price_fen: p.price_fen,
            seq,
        });
        let bid_id = self.bid_slab.get(bid).bid_id.clone();
        self.auction_slab
            .get_mut(a)
            .bids
            .push(Reverse((p.price_fen, seq, bid)));
        self.bids.insert(bid_id, bid);
        let best_fen = if sealed {
            None
        } else {
            match best {
                Some(best) if p.price_fen >= best => Some(best),
                _ => Some(p.price_fen),
            }
        };
        out.head(cid, BID_ACCEPTED, now, &self.books[b as usize].key_json);
        let buf = &mut out.buf;
        buf.extend_from_slice(b"{\"bid_id\":");
        json_str(buf, p.bid_id);
        buf.extend_from_slice(b",\"load_id\":");
        json_str(buf, p.load_id);
        buf.extend_from_slice(b",\"carrier_id\":");
        json_str(buf, p.carrier_id);
        buf.extend_from_slice(b",\"price_fen\":");
        json_int(buf, p.price_fen);
        buf.extend_from_slice(b",\"best_fen\":");
        json_opt_int(buf, best_fen);
        buf.push(b'}');
        out.end(Key::Book(b));
        if let Some(instant) = instant_fen {
            if p.price_fen <= instant {
                // Every earlier live bid is above instant_fen (else it would have closed
                // the auction), so this bid is the lowest and the close makes its deal.
                self.close(out, cid, a, false);
            }
        }
    }

    /// The order a cancel or a withdrawal names (by `find`), when the command is well
    /// formed, the order live and the command's owner its owner (`owner` reads it);
    /// else None, the rejection written: invalid, unknown_order, not_owner, in that
    /// precedence.
    fn owned<'p, T: Copy>(
        &self,
        out: &mut Out,
        cid: &str,
        key: Option<&str>,
        p: Parsed<'p, Pair<'p>>,
        find: impl Fn(&Self, &str) -> Option<T>,
        owner: impl Fn(&Self, T) -> &str,
    ) -> Option<(&'p str, T)> {
        let p = match p {
            Ok(p) => p,
            Err(r) => {
                self.reject(out, cid, key, r, Reason::Invalid);
                return None;
            }
        };
        let r = Some(p.ref_id);
        let Some(order) = find(self, p.ref_id) else {
            self.reject(out, cid, key, r, Reason::UnknownOrder);
            return None;
        };
        if owner(self, order) != p.owner_id {
            self.reject(out, cid, key, r, Reason::NotOwner);
            return None;
        }
        Some((p.ref_id, order))
    }

    fn load_cancel(&mut self, out: &mut Out, cid: &str, key: Option<&str>, p: Parsed<Pair>) {
        let Some((load_id, load)) = self.owned(
            out,
            cid,
            key,
            p,
            |e, id| e.loads.get(id).copied(),
            |e, load| match load {
                LoadRef::Market(i) => &e.load_slab.get(i).shipper_id,
                LoadRef::Auction(a) => &e.auction_slab.get(a).shipper_id,
            },
        ) else {
            return;
        };
        self.loads.remove(load_id);
        let b = match load {
            LoadRef::Auction(a) => {
                let b = self.auction_slab.get(a).book;
                self.drop_bids(a);
                self.auction_slab.remove(a);
                b
            }
            LoadRef::Market(i) => {
                let b = self.load_slab.get(i).book;
                self.books[b as usize].remove_load(&self.load_slab, i);
                self.load_slab.remove(i);
                b
            }
        };
        self.forget();
        self.cancelled(out, cid, b, load_id);
    }

    fn offer_cancel(&mut self, out: &mut Out, cid: &str, key: Option<&str>, p: Parsed<Pair>) {
        let Some((offer_id, i)) = self.owned(
            out,
            cid,
            key,
            p,
            |e, id| e.offers.get(id).copied(),
            |e, i| &e.offer_slab.get(i).carrier_id,
        ) else {
            return;
        };
        let b = self.offer_slab.get(i).book;
        self.offers.remove(offer_id);
        self.books[b as usize].remove_offer(&self.offer_slab, i);
        self.offer_slab.remove(i);
        self.forget();
        self.cancelled(out, cid, b, offer_id);
    }

    fn bid_withdraw(&mut self, out: &mut Out, cid: &str, key: Option<&str>, p: Parsed<Pair>) {
        let Some((bid_id, i)) = self.owned(
            out,
            cid,
            key,
            p,
            |e, id| e.bids.get(id).copied(),
            |e, i| &e.bid_slab.get(i).carrier_id,
        ) else {
            return;
        };
        self.bids.remove(bid_id);
        let bid = self.bid_slab.remove(i);
        let a = self.auction_slab.get_mut(bid.auction);
        a.dead += 1;
        if a.dead > BIDS_DEAD_MIN && (a.dead as usize) * 2 > a.bids.len() {
            let slab = &self.bid_slab;
            let heap = std::mem::take(&mut a.bids).into_vec();
            a.bids = heap
                .into_iter()
                .filter(|Reverse((_, s, b))| slab.holds(*b, *s))
                .collect();
            a.dead = 0;
        }
        let b = a.book;
        self.cancelled(out, cid, b, bid_id);
    }

    fn cancelled(&self, out: &mut Out, cid: &str, book: u32, ref_id: &str) {
        out.head(
            cid,
            ORDER_CANCELLED,
            self.now,
            &self.books[book as usize].key_json,
        );
        out.buf.extend_from_slice(b"{\"ref_id\":");
        json_str(&mut out.buf, ref_id);
        out.buf.push(b'}');
        out.end(Key::Book(book));
    }

    // -- auctions ------------------------------------------------------------------

    /// The lowest live bid of auction `a`, earliest first (pops withdrawn tops).
    fn best_bid(&mut self, a: u32) -> Option<u32> {
        let slab = &self.bid_slab;
        let auction = self.auction_slab.get_mut(a);
        while let Some(&Reverse((_, seq, bid))) = auction.bids.peek() {
            if slab.holds(bid, seq) {
                return Some(bid);
            }
            auction.bids.pop();
            auction.dead = auction.dead.saturating_sub(1);
        }
        None
    }

    /// Deal with the lowest live bid, earliest first, then auction.closed.
    fn close(&mut self, out: &mut Out, cid: &str, a: u32, by_timer: bool) {
        let load_id = self.auction_slab.get(a).load_id.clone();
        self.loads.remove(&load_id);
        if !by_timer {
            // Its close entry stays in the heap, dead once the slot is freed below.
            self.forget();
        }
        let winner = self.best_bid(a);
        let auction = self.auction_slab.get(a);
        let b = auction.book;
        let (bid_id, price_fen) = match winner {
            None => (None, None),
            Some(w) => {
                let bid = self.bid_slab.get(w);
                self.deal(
                    out,
                    cid,
                    b,
                    &load_id,
                    None,
                    Some(&bid.bid_id),
                    &auction.shipper_id,
                    &bid.carrier_id,
                    bid.price_fen,
                );
                (Some(bid.bid_id.clone()), Some(bid.price_fen))
            }
        };
        out.head(
            cid,
            AUCTION_CLOSED,
            self.now,
            &self.books[b as usize].key_json,
        );
        let buf = &mut out.buf;
        buf.extend_from_slice(b"{\"load_id\":");
        json_str(buf, &load_id);
        buf.extend_from_slice(b",\"bid_id\":");
        match &bid_id {
            Some(id) => json_str(buf, id),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"price_fen\":");
        json_opt_int(buf, price_fen);
        buf.push(b'}');
        out.end(Key::Book(b));
        self.drop_bids(a);
        self.auction_slab.remove(a);
    }

    /// Drop the live bids of an auction that closed or was cancelled (silently).
    fn drop_bids(&mut self, a: u32) {
        let heap = std::mem::take(&mut self.auction_slab.get_mut(a).bids);
        for Reverse((_, seq, bid)) in heap.into_vec() {
            if self.bid_slab.holds(bid, seq) {
                let bid = self.bid_slab.remove(bid);
                self.bids.remove(&bid.bid_id);
            }
        }
        self.auction_slab.get_mut(a).dead = 0;
    }

    // -- events --------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn deal(
        &self,
        out: &mut Out,
        cid: &str,
        b: u32,
        load_id: &str,
        offer_id: Option<&str>,
        bid_id: Option<&str>,
        shipper_id: &str,
        carrier_id: &str,
        price_fen: i64,
    ) {
        let book = &self.books[b as usize];
        out.head(cid, DEAL_MADE, self.now, &book.key_json);
        let buf = &mut out.buf;
        buf.extend_from_slice(b"{\"deal_id\":\"deal:");
        crate::emit::json_body(buf, load_id);
        buf.extend_from_slice(b"\",\"load_id\":");
        json_str(buf, load_id);
        buf.extend_from_slice(b",\"offer_id\":");
        crate::emit::json_opt_str(buf, offer_id);
        buf.extend_from_slice(b",\"bid_id\":");
        crate::emit::json_opt_str(buf, bid_id);
        buf.extend_from_slice(b",\"shipper_id\":");
        json_str(buf, shipper_id);
        buf.extend_from_slice(b",\"carrier_id\":");
        json_str(buf, carrier_id);
        buf.extend_from_slice(b",\"price_fen\":");
        json_int(buf, price_fen);
        buf.extend_from_slice(b",\"lane\":");
        buf.extend_from_slice(&book.lane_json);
        buf.push(b'}');
        out.end(Key::Book(b));
    }

    fn reject(
        &self,
        out: &mut Out,
        cid: &str,
        key: Option<&str>,
        ref_id: Option<&str>,
        why: Reason,
    ) {
        let mut key_json = Vec::new();
        crate::emit::json_opt_str(&mut key_json, key);
        out.head(cid, ORDER_REJECTED, self.now, &key_json);
        let buf = &mut out.buf;
        buf.extend_from_slice(b"{\"ref_id\":");
        crate::emit::json_opt_str(buf, ref_id);
        buf.extend_from_slice(b",\"reason\":");
        buf.extend_from_slice(&self.reasons[why as usize]);
        buf.push(b'}');
        let k = out.raw_key(key);
        out.end(k);
    }

    // -- gauges --------------------------------------------------------------------

    /// (resting market loads and offers, open auctions).
    pub fn order_counts(&self) -> (usize, usize) {
        (
            self.load_slab.len() + self.offer_slab.len(),
            self.auction_slab.len(),
        )
    }

    // -- restore -------------------------------------------------------------------

    /// Insert a restored market load (in seq order, with the other loads/auctions).
    #[allow(clippy::too_many_arguments)]
    pub fn restore_load(
        &mut self,
        seq: i64,
        load_id: &str,
        shipper_id: &str,
        lane: &Lane,
        w: i64,
        v: i64,
        from: i64,
        to: i64,
        limit: i64,
    ) {
        let b = self.book(lane);
        let shipper_id = self.name(shipper_id);
        let load_id: Name = Rc::from(load_id);
        let i = self.load_slab.insert(Load {
            load_id: load_id.clone(),
            shipper_id,
            book: b,
            weight_kg: w,
            volume_dm3: v,
            pickup_from: from,
            pickup_to: to,
            limit_fen: limit,
            seq,
        });
        self.books[b as usize].add_load(limit, i);
        self.loads.insert(load_id, LoadRef::Market(i));
        self.timers.add_expiry(to, seq, Target::Load(i));
    }

    #[allow(clippy::too_many_arguments)]
    pub fn restore_offer(
        &mut self,
        seq: i64,
        offer_id: &str,
        carrier_id: &str,
        lane: &Lane,
        kg: i64,
        dm3: i64,
        from: i64,
        to: i64,
        ask: i64,
        consolidate: bool,
    ) {
        let b = self.book(lane);
        let carrier_id = self.name(carrier_id);
        let offer_id: Name = Rc::from(offer_id);
        let i = self.offer_slab.insert(Offer {
            offer_id: offer_id.clone(),
            carrier_id,
            book: b,
            remaining_kg: kg,
            remaining_dm3: dm3,
            available_from: from,
            available_to: to,
            ask_fen: ask,
            consolidate,
            seq,
        });
        self.books[b as usize].add_offer(ask, i);
        self.offers.insert(offer_id, i);
        self.timers.add_expiry(to, seq, Target::Offer(i));
    }

    /// Insert a restored auction; returns its slot for `restore_bid`.
    #[allow(clippy::too_many_arguments)]
    pub fn restore_auction(
        &mut self,
        seq: i64,
        load_id: &str,
        shipper_id: &str,
        lane: &Lane,
        closes_at: i64,
        reserve_fen: Option<i64>,
        instant_fen: Option<i64>,
        sealed: bool,
    ) -> u32 {
        let b = self.book(lane);
        let shipper_id = self.name(shipper_id);
        let load_id: Name = Rc::from(load_id);
        let a = self.auction_slab.insert(Auction {
            load_id: load_id.clone(),
            shipper_id,
            book: b,
            closes_at,
            reserve_fen,
            instant_fen,
            sealed,
            seq,
            bids: Default::default(),
            dead: 0,
        });
        self.loads.insert(load_id, LoadRef::Auction(a));
        self.timers.add_close(closes_at, seq, a);
        a
    }

    pub fn restore_bid(
        &mut self,
        a: u32,
        seq: i64,
        bid_id: &str,
        carrier_id: &str,
        price_fen: i64,
    ) {
        let carrier_id = self.name(carrier_id);
        let bid_id: Name = Rc::from(bid_id);
        let bid = self.bid_slab.insert(Bid {
            bid_id: bid_id.clone(),
            carrier_id,
            auction: a,
            price_fen,
            seq,
        });
        self.auction_slab
            .get_mut(a)
            .bids
            .push(Reverse((price_fen, seq, bid)));
        self.bids.insert(bid_id, bid);
    }
}
