//! Outcome envelopes written straight to JSON bytes, exactly as orjson encodes the
//! dicts the Python engine builds: the same key order, no spaces, orjson's string
//! escaping (`"`, `\`, and control characters below 0x20 as \b \t \n \f \r or \u00xx
//! with lowercase hex; everything else, non-ASCII included, as is).
//!
//! One batch writes every event into one buffer; `events` records where each ends and
//! what its Kafka key is, so the binding cuts the buffer into one bytes object each.

/// The Kafka key of an event: its order's lane (a book index), the command's own key
/// (a rejection: a range of `Out::keys`), or none.
#[derive(Clone, Copy)]
pub enum Key {
    Book(u32),
    Raw(u32, u32),
    Null,
}

pub struct Event {
    pub end: usize,
    pub key: Key,
}

#[derive(Default)]
pub struct Out {
    pub buf: Vec<u8>,
    pub events: Vec<Event>,
    pub keys: Vec<u8>,
    /// events.len() when the current command began: event ids count from there.
    base: usize,
    /// Events written since clear(), by type (EventType's slot).
    pub types: [u32; EVENT_TYPES.len()],
}

/// An event type: its name, and its slot in Out::types (so counting costs an add).
#[derive(Clone, Copy)]
pub struct EventType(pub &'static str, usize);

pub const ORDER_EXPIRED: EventType = EventType("order.expired", 0);
pub const AUCTION_OPENED: EventType = EventType("auction.opened", 1);
pub const LOAD_RESTED: EventType = EventType("load.rested", 2);
pub const OFFER_RESTED: EventType = EventType("offer.rested", 3);
pub const BID_ACCEPTED: EventType = EventType("bid.accepted", 4);
pub const ORDER_CANCELLED: EventType = EventType("order.cancelled", 5);
pub const AUCTION_CLOSED: EventType = EventType("auction.closed", 6);
pub const DEAL_MADE: EventType = EventType("deal.made", 7);
pub const ORDER_REJECTED: EventType = EventType("order.rejected", 8);

/// Every event type, in slot order.
pub const EVENT_TYPES: [EventType; 9] = [
    ORDER_EXPIRED,
    AUCTION_OPENED,
    LOAD_RESTED,
    OFFER_RESTED,
    BID_ACCEPTED,
    ORDER_CANCELLED,
    AUCTION_CLOSED,
    DEAL_MADE,
    ORDER_REJECTED,
];

use crate::json::special;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Append `s` as a JSON string, escaped as orjson escapes it.
#[inline]
pub fn json_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if is_clean(bytes) {
        buf.reserve(bytes.len() + 2);
        // SAFETY: the room is reserved, and exactly that much is written.
        unsafe {
            let start = buf.as_mut_ptr().add(buf.len());
            let mut p = put(start, b"\"");
            p = put(p, bytes);
            put(p, b"\"");
            buf.set_len(buf.len() + bytes.len() + 2);
        }
        return;
    }
    buf.push(b'"');
    escaped_body(buf, bytes);
    buf.push(b'"');
}

/// Whether `bytes` is ASCII with nothing JSON escapes (ids, lanes and types always
/// are), checked eight bytes at a time with the JSON parser's word test, the last word
/// overlapping the one before it. Other text takes the byte-by-byte writer.
#[inline]
fn is_clean(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n < 8 {
        return bytes
            .iter()
            .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
    let mut i = 0;
    while i + 8 <= n {
        if special(word(i)) != 0 {
            return false;
        }
        i += 8;
    }
    i == n || special(word(n - 8)) == 0
}

/// The bytes of `head`'s fixed text: `{"id":"` `:` `","type":"` `","v":1,"ts":`
/// `,"key":` `,"source":"matching","cause":` `,"data":`.
const HEAD_FIXED: usize = 7 + 1 + 10 + 13 + 7 + 29 + 8;

/// Copy `s` to `p`, returning the end. Short pieces (most: ids, types, numbers) go
/// as two overlapping words (or bytes), each within `s`, instead of a call to memcpy.
///
/// # Safety
/// `p` has room for `s.len()` bytes.
#[inline(always)]
unsafe fn put(p: *mut u8, s: &[u8]) -> *mut u8 {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    let n = s.len();
    let q = s.as_ptr();
    match n {
        16..=32 => {
            wr(p as *mut u128, rd(q as *const u128));
            wr(p.add(n - 16) as *mut u128, rd(q.add(n - 16) as *const u128));
        }
        8..=15 => {
            wr(p as *mut u64, rd(q as *const u64));
            wr(p.add(n - 8) as *mut u64, rd(q.add(n - 8) as *const u64));
        }
        4..=7 => {
            wr(p as *mut u32, rd(q as *const u32));
            wr(p.add(n - 4) as *mut u32, rd(q.add(n - 4) as *const u32));
        }
        // An event's index and a closing quote: one byte, mostly.
        1..=3 => {
            *p = *q;
            *p.add(n / 2) = *q.add(n / 2);
            *p.add(n - 1) = *q.add(n - 1);
        }
        0 => {}
        _ => std::ptr::copy_nonoverlapping(q, p, n),
    }
    p.add(n)
}

/// Append the escaped characters of `s`, without the quotes.
#[inline]
pub fn json_body(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if is_clean(bytes) {
        buf.reserve(bytes.len());
        // SAFETY: the room is reserved, and exactly that much is written.
        unsafe {
            put(buf.as_mut_ptr().add(buf.len()), bytes);
            buf.set_len(buf.len() + bytes.len());
        }
    } else {
        escaped_body(buf, bytes);
    }
}

/// Append `bytes` (UTF-8 text), escaping what JSON escapes.
fn escaped_body(buf: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x09 => buf.extend_from_slice(b"\\t"),
            0x0a => buf.extend_from_slice(b"\\n"),
            0x0c => buf.extend_from_slice(b"\\f"),
            0x0d => buf.extend_from_slice(b"\\r"),
            _ => buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]),
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

pub fn json_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// Append an integer in decimal, as JSON writes it.
#[inline]
pub fn json_int(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub fn json_opt_int(buf: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => json_int(buf, v),
        None => buf.extend_from_slice(b"null"),
    }
}

pub fn json_bool(buf: &mut Vec<u8>, v: bool) {
    buf.extend_from_slice(if v { b"true" } else { b"false" });
}

impl Out {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.events.clear();
        self.keys.clear();
        self.base = 0;
        self.types = [0; EVENT_TYPES.len()];
    }

    /// A new command begins: its events' ids count from 0 again.
    #[inline]
    pub fn begin_command(&mut self) {
        self.base = self.events.len();
    }

    /// Write an envelope up to and including `"data":`; the caller writes the data
    /// object, then calls `end`. `key_json` is the key as JSON (a string or null).
    /// `cause` is the command id, or null when it is empty.
    pub fn head(&mut self, cid: &str, typ: EventType, now: i64, key_json: &[u8]) {
        let i = (self.events.len() - self.base) as i64;
        self.types[typ.1] += 1;
        let typ = typ.0;
        // The command id as JSON string content: itself, unless it has characters to
        // escape (then escaped aside; the Vec allocates only then).
        let mut escaped = Vec::new();
        let c = if is_clean(cid.as_bytes()) {
            cid.as_bytes()
        } else {
            escaped_body(&mut escaped, cid.as_bytes());
            &escaped
        };
        let (cause_open, cause, cause_close): (&[u8], &[u8], &[u8]) = if cid.is_empty() {
            (b"null", b"", b"")
        } else {
            (b"\"", c, b"\"")
        };
        // Every event writes one: its pieces are copied into room reserved once, not
        // pushed one by one (each push checks the capacity, each short copy is a call).
        let mut ts = itoa::Buffer::new();
        let ts = ts.format(now).as_bytes();
        let mut ix = itoa::Buffer::new();
        let ix = ix.format(i).as_bytes();
        let n = HEAD_FIXED
            + c.len()
            + ix.len()
            + typ.len()
            + ts.len()
            + key_json.len()
            + cause_open.len()
            + cause.len()
            + cause_close.len();
        let buf = &mut self.buf;
        buf.reserve(n);
        // SAFETY: n bytes are reserved past len, and exactly n are written (each
        // within the room) before set_len.
        unsafe {
            let start = buf.as_mut_ptr().add(buf.len());
            let mut p = start;
            p = put(p, b"{\"id\":\"");
            p = put(p, c);
            p = put(p, b":");
            p = put(p, ix);
            p = put(p, b"\",\"type\":\"");
            p = put(p, typ.as_bytes());
            p = put(p, b"\",\"v\":1,\"ts\":");
            p = put(p, ts);
            p = put(p, b",\"key\":");
            p = put(p, key_json);
            p = put(p, b",\"source\":\"matching\",\"cause\":");
            p = put(p, cause_open);
            p = put(p, cause);
            p = put(p, cause_close);
            p = put(p, b",\"data\":");
            let written = p.offset_from(start) as usize;
            debug_assert_eq!(written, n);
            buf.set_len(buf.len() + written);
        }
    }

    /// Close the envelope written since `head` and record it under `key`.
    #[inline]
    pub fn end(&mut self, key: Key) {
        self.buf.push(b'}');
        self.events.push(Event {
            end: self.buf.len(),
            key,
        });
    }

    /// A rejection's key: the command's own key, kept as raw bytes for the binding.
    pub fn raw_key(&mut self, key: Option<&str>) -> Key {
        match key {
            None => Key::Null,
            Some(k) => {
                let start = self.keys.len() as u32;
                self.keys.extend_from_slice(k.as_bytes());
                Key::Raw(start, self.keys.len() as u32)
            }
        }
    }
}
