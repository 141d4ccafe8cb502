//! Snapshot encoding: the exact bytes services/matching/snapshot.py writes (orjson of
//! the live state), so either engine restores the other's snapshots and equal states
//! give equal bytes whichever engine wrote them. Layout (format 1):
//!   {"format":1,"now":ms,"seq":n,
//!    "loads":[[seq,load_id,shipper_id,origin,destination,vehicle_class,
//!              weight_kg,volume_dm3,pickup_from,pickup_to,limit_fen],...],
//!    "offers":[[seq,offer_id,carrier_id,origin,destination,vehicle_class,remaining_kg,
//!               remaining_dm3,available_from,available_to,ask_fen,consolidate],...],
//!    "auctions":[[seq,load_id,shipper_id,origin,destination,vehicle_class,closes_at,
//!                 reserve_fen,instant_fen,sealed,[[seq,bid_id,carrier_id,price_fen],...]],...]}
//! every list in seq order. Decoding is the binding's (it reads orjson's objects).

use crate::book::Book;
use crate::emit::{json_bool, json_int, json_opt_int, json_str};
use crate::engine::Engine;

fn lane(buf: &mut Vec<u8>, b: &Book) {
    json_str(buf, &b.origin);
    buf.push(b',');
    json_str(buf, &b.destination);
    buf.push(b',');
    json_str(buf, &b.vehicle_class);
}

/// `[seq,id,owner,origin,destination,vehicle_class` (the common head of a load, offer
/// or auction row), after a comma when the row is not its list's first.
fn row_head(buf: &mut Vec<u8>, first: bool, seq: i64, id: &str, owner: &str, b: &Book) {
    if !first {
        buf.push(b',');
    }
    buf.push(b'[');
    json_int(buf, seq);
    buf.push(b',');
    json_str(buf, id);
    buf.push(b',');
    json_str(buf, owner);
    buf.push(b',');
    lane(buf, b);
}

fn ints(buf: &mut Vec<u8>, values: &[i64]) {
    for &v in values {
        buf.push(b',');
        json_int(buf, v);
    }
}

pub fn dump(e: &Engine) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + 160 * (e.load_slab.len() + e.offer_slab.len()));
    buf.extend_from_slice(b"{\"format\":1,\"now\":");
    json_int(&mut buf, e.now);
    buf.extend_from_slice(b",\"seq\":");
    json_int(&mut buf, e.seq);

    buf.extend_from_slice(b",\"loads\":[");
    let mut loads: Vec<_> = e.load_slab.iter().collect();
    loads.sort_unstable_by_key(|l| l.seq);
    for (n, l) in loads.iter().enumerate() {
        row_head(
            &mut buf,
            n == 0,
            l.seq,
            &l.load_id,
            &l.shipper_id,
            &e.books[l.book as usize],
        );
        ints(
            &mut buf,
            &[
                l.weight_kg,
                l.volume_dm3,
                l.pickup_from,
                l.pickup_to,
                l.limit_fen,
            ],
        );
        buf.push(b']');
    }

    buf.extend_from_slice(b"],\"offers\":[");
    let mut offers: Vec<_> = e.offer_slab.iter().collect();
    offers.sort_unstable_by_key(|o| o.seq);
    for (n, o) in offers.iter().enumerate() {
        row_head(
            &mut buf,
            n == 0,
            o.seq,
            &o.offer_id,
            &o.carrier_id,
            &e.books[o.book as usize],
        );
        ints(
            &mut buf,
            &[
                o.remaining_kg,
                o.remaining_dm3,
                o.available_from,
                o.available_to,
                o.ask_fen,
            ],
        );
        buf.push(b',');
        json_bool(&mut buf, o.consolidate);
        buf.push(b']');
    }

    buf.extend_from_slice(b"],\"auctions\":[");
    let mut auctions: Vec<_> = e.auction_slab.iter().collect();
    auctions.sort_unstable_by_key(|a| a.seq);
    for (n, a) in auctions.iter().enumerate() {
        row_head(
            &mut buf,
            n == 0,
            a.seq,
            &a.load_id,
            &a.shipper_id,
            &e.books[a.book as usize],
        );
        buf.push(b',');
        json_int(&mut buf, a.closes_at);
        buf.push(b',');
        json_opt_int(&mut buf, a.reserve_fen);
        buf.push(b',');
        json_opt_int(&mut buf, a.instant_fen);
        buf.push(b',');
        json_bool(&mut buf, a.sealed);
        buf.extend_from_slice(b",[");
        let mut bids: Vec<_> = a
            .bids
            .iter()
            .filter(|r| e.bid_slab.holds(r.0 .2, r.0 .1))
            .map(|r| e.bid_slab.get(r.0 .2))
            .collect();
        bids.sort_unstable_by_key(|b| b.seq);
        for (m, b) in bids.iter().enumerate() {
            if m > 0 {
                buf.push(b',');
            }
            buf.push(b'[');
            json_int(&mut buf, b.seq);
            buf.push(b',');
            json_str(&mut buf, &b.bid_id);
            buf.push(b',');
            json_str(&mut buf, &b.carrier_id);
            buf.push(b',');
            json_int(&mut buf, b.price_fen);
            buf.push(b']');
        }
        buf.extend_from_slice(b"]]");
    }
    buf.extend_from_slice(b"]}");
    buf
}
