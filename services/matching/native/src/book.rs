//! One lane's order book: resting offers by lowest ask, resting market loads by highest
//! limit, each side a BTreeMap of price levels holding slot indices in arrival order.
//!
//! Removal is eager: an order is found in its level by binary search on its seq (a
//! level is always in seq order: orders are appended as they arrive and a restore
//! re-inserts them in seq order), so no dead entries linger and nothing is compacted.
//! The scan semantics are the Python book's (services/matching/book.py).

use std::collections::{BTreeMap, VecDeque};

use crate::emit::json_str;
use crate::orders::{Load, Offer, Slab};

pub struct Book {
    pub origin: Box<str>,
    pub destination: Box<str>,
    pub vehicle_class: Box<str>,
    /// The lane key `origin>destination>vehicle_class`, UTF-8.
    pub key: Box<str>,
    /// The key as a JSON string and the lane as a JSON object, precomputed: every event
    /// of this lane writes them.
    pub key_json: Box<[u8]>,
    pub lane_json: Box<[u8]>,
    offers: BTreeMap<i64, VecDeque<u32>>,
    loads: BTreeMap<i64, VecDeque<u32>>,
}

impl Book {
    pub fn new(origin: &str, destination: &str, vehicle_class: &str, key: &str) -> Book {
        let mut key_json = Vec::new();
        json_str(&mut key_json, key);
        let mut lane = Vec::new();
        lane.extend_from_slice(b"{\"origin\":");
        json_str(&mut lane, origin);
        lane.extend_from_slice(b",\"destination\":");
        json_str(&mut lane, destination);
        lane.extend_from_slice(b",\"vehicle_class\":");
        json_str(&mut lane, vehicle_class);
        lane.push(b'}');
        Book {
            origin: origin.into(),
            destination: destination.into(),
            vehicle_class: vehicle_class.into(),
            key: key.into(),
            key_json: key_json.into(),
            lane_json: lane.into(),
            offers: BTreeMap::new(),
            loads: BTreeMap::new(),
        }
    }

    pub fn has_offers(&self) -> bool {
        !self.offers.is_empty()
    }

    pub fn has_loads(&self) -> bool {
        !self.loads.is_empty()
    }

    pub fn add_offer(&mut self, price: i64, slot: u32) {
        self.offers
            .entry(price)
            .or_insert_with(|| VecDeque::with_capacity(1))
            .push_back(slot);
    }

    pub fn add_load(&mut self, price: i64, slot: u32) {
        self.loads
            .entry(price)
            .or_insert_with(|| VecDeque::with_capacity(1))
            .push_back(slot);
    }

    pub fn remove_offer(&mut self, offers: &Slab<Offer>, slot: u32) {
        let o = offers.get(slot);
        unlink(&mut self.offers, o.ask_fen, o.seq, slot, |i| {
            offers.get(i).seq
        });
    }

    pub fn remove_load(&mut self, loads: &Slab<Load>, slot: u32) {
        let l = loads.get(slot);
        unlink(&mut self.loads, l.limit_fen, l.seq, slot, |i| {
            loads.get(i).seq
        });
    }

    /// The eligible resting offer with the lowest ask, earliest first: its ask at most
    /// `limit_fen`, the load fitting its remainders, the windows overlapping.
    pub fn best_offer(
        &self,
        offers: &Slab<Offer>,
        weight_kg: i64,
        volume_dm3: i64,
        pickup_from: i64,
        pickup_to: i64,
        limit_fen: i64,
    ) -> Option<u32> {
        for (&price, level) in self.offers.iter() {
            if price > limit_fen {
                return None;
            }
            for &slot in level {
                let o = offers.get(slot);
                if weight_kg <= o.remaining_kg
                    && volume_dm3 <= o.remaining_dm3
                    && o.available_from <= pickup_to
                    && pickup_from <= o.available_to
                {
                    return Some(slot);
                }
            }
        }
        None
    }

    /// The resting market loads an offer takes, in the order it takes them (appended to
    /// `taken`). Its remainders only shrink, so one walk down the levels gives the same
    /// loads as repeated best-searches. The caller updates the offer and removes them.
    #[allow(clippy::too_many_arguments)]
    pub fn best_loads(
        &self,
        loads: &Slab<Load>,
        ask: i64,
        mut rem_kg: i64,
        mut rem_dm3: i64,
        avail_from: i64,
        avail_to: i64,
        consolidate: bool,
        taken: &mut Vec<u32>,
    ) {
        for (&price, level) in self.loads.iter().rev() {
            if price < ask {
                return;
            }
            for &slot in level {
                let l = loads.get(slot);
                if l.weight_kg <= rem_kg
                    && l.volume_dm3 <= rem_dm3
                    && l.pickup_from <= avail_to
                    && avail_from <= l.pickup_to
                {
                    taken.push(slot);
                    if !consolidate {
                        return;
                    }
                    rem_kg -= l.weight_kg;
                    rem_dm3 -= l.volume_dm3;
                    if rem_kg <= 0 || rem_dm3 <= 0 {
                        return;
                    }
                }
            }
        }
    }
}

fn unlink(
    side: &mut BTreeMap<i64, VecDeque<u32>>,
    price: i64,
    seq: i64,
    slot: u32,
    seq_of: impl Fn(u32) -> i64,
) {
    let level = side.get_mut(&price).expect("order's level exists");
    if level.front() == Some(&slot) {
        level.pop_front();
    } else {
        let at = level
            .binary_search_by_key(&seq, |&i| seq_of(i))
            .expect("order is in its level");
        level.remove(at);
    }
    if level.is_empty() {
        side.remove(&price);
    }
}
