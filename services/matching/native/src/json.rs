//! Commands read straight from their Kafka value bytes: a strict JSON parser for the
//! fast path of `process_raw`, and `Source` over what it parsed.
//!
//! It accepts only what it is sure `orjson.loads` + the service's envelope check
//! (services/common/envelope_check.plainly_valid) would accept and decode to the same
//! values: UTF-8 JSON with an object at the top, no duplicate key in any object, ints
//! within i64 (no floats at all), string escapes decoded exactly (a \uXXXX surrogate
//! pair combined, a lone surrogate refused), nesting at most MAX_DEPTH deep, and an
//! envelope of exactly the eight keys with plainly valid values. Anything else is
//! `None`: not an error, only "ask Python" (the caller's fallback decides, and may
//! dead-letter it).

use pyo3::prelude::*;

use crate::parse::{Source, F, NAMES};

const MAX_DEPTH: u32 = 32;
/// Objects larger than this are left to Python: the duplicate check is quadratic.
const MAX_MEMBERS: usize = 64;

/// A string's bytes: in the input (no escapes) or in the scratch buffer (decoded),
/// as two u32 (the flag in the top bit of `end`) so that it travels in registers.
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

const IN_SCRATCH: u32 = 1 << 31;

impl Span {
    #[inline]
    fn input(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    #[inline]
    fn scratch(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32 | IN_SCRATCH,
        }
    }

    #[inline]
    fn in_scratch(self) -> bool {
        self.end & IN_SCRATCH != 0
    }

    #[inline]
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.end & !IN_SCRATCH) as usize
    }
}

#[derive(Clone, Copy)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Str(Span),
    /// members[first..first + len]
    Obj {
        first: u32,
        len: u32,
    },
    /// The engine never reads an array's contents; they are only parsed (and checked).
    Arr,
}

/// An object's member: its key as a field id (UNKNOWN for a key the engine never
/// reads, compared by text only in the duplicate check) and its value's node.
#[derive(Clone, Copy)]
struct Member {
    id: u8,
    key: Span,
    value: u32,
}

const UNKNOWN: u8 = u8::MAX;

/// The parser's buffers, reused from value to value.
pub struct Json {
    nodes: Vec<Node>,
    members: Vec<Member>,
    pending: Vec<Member>,
    scratch: String,
    /// The field names by length, each as its bytes in a zero-padded u128: a key is
    /// named once, when it is parsed (one integer compare a candidate), and every later
    /// lookup compares one byte.
    by_len: Vec<Vec<(u128, u8)>>,
}

/// Up to 16 bytes as a zero-padded little-endian u128 (longer: None).
#[inline]
fn word(b: &[u8]) -> Option<u128> {
    if b.len() > 16 {
        return None;
    }
    let mut w = [0u8; 16];
    w[..b.len()].copy_from_slice(b);
    Some(u128::from_le_bytes(w))
}

impl Default for Json {
    fn default() -> Json {
        let mut by_len: Vec<Vec<(u128, u8)>> = vec![Vec::new(); 17];
        for (i, name) in NAMES.iter().enumerate() {
            let w = word(name.as_bytes()).expect("field names fit 16 bytes");
            by_len[name.len()].push((w, i as u8));
        }
        assert!(NAMES.len() < 64, "field ids index a u64 bit set");
        Json {
            nodes: Vec::new(),
            members: Vec::new(),
            pending: Vec::new(),
            scratch: String::new(),
            by_len,
        }
    }
}

struct Cursor<'b> {
    s: &'b [u8],
    pos: usize,
}

impl Cursor<'_> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&b) = self.s.get(self.pos) {
            if b == b' ' || b == b'\n' || b == b'\r' || b == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.pos..self.pos + 4)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16)?;
        }
        self.pos += 4;
        Some(v)
    }
}

impl Json {
    /// Parse `input` and check it is a plainly valid envelope; the root object's node.
    pub fn parse_envelope(&mut self, input: &[u8]) -> Option<u32> {
        // UTF-8 is checked string by string: outside strings only ASCII is JSON.
        if input.len() >= IN_SCRATCH as usize {
            return None;
        }
        self.nodes.clear();
        self.members.clear();
        self.pending.clear();
        self.scratch.clear();
        let mut c = Cursor { s: input, pos: 0 };
        c.ws();
        if c.peek() != Some(b'{') {
            return None;
        }
        let root = self.value(&mut c, 0)?;
        c.ws();
        if c.pos != input.len() {
            return None;
        }
        self.plainly_valid(input, root).then_some(root)
    }

    /// The parsed value's reader; `input` is the bytes last parsed.
    pub fn view<'a>(&'a self, input: &'a [u8]) -> JsonSource<'a> {
        JsonSource {
            input,
            scratch: &self.scratch,
            nodes: &self.nodes,
            members: &self.members,
        }
    }

    #[inline]
    fn push(&mut self, n: Node) -> u32 {
        self.nodes.push(n);
        (self.nodes.len() - 1) as u32
    }

    fn value(&mut self, c: &mut Cursor, depth: u32) -> Option<u32> {
        if depth > MAX_DEPTH {
            return None;
        }
        c.ws();
        match c.peek()? {
            b'{' => self.object(c, depth),
            b'[' => {
                c.pos += 1;
                c.ws();
                if c.peek()? == b']' {
                    c.pos += 1;
                    return Some(self.push(Node::Arr));
                }
                loop {
                    self.value(c, depth + 1)?;
                    c.ws();
                    match c.peek()? {
                        b',' => c.pos += 1,
                        b']' => {
                            c.pos += 1;
                            return Some(self.push(Node::Arr));
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => {
                let s = self.string(c)?;
                Some(self.push(Node::Str(s)))
            }
            b't' => self.literal(c, b"true", Node::Bool(true)),
            b'f' => self.literal(c, b"false", Node::Bool(false)),
            b'n' => self.literal(c, b"null", Node::Null),
            _ => {
                let v = number(c)?;
                Some(self.push(Node::Int(v)))
            }
        }
    }

    fn literal(&mut self, c: &mut Cursor, word: &[u8], n: Node) -> Option<u32> {
        if c.s.get(c.pos..c.pos + word.len())? != word {
            return None;
        }
        c.pos += word.len();
        Some(self.push(n))
    }

    fn object(&mut self, c: &mut Cursor, depth: u32) -> Option<u32> {
        c.pos += 1; // '{'
        let base = self.pending.len();
        c.ws();
        if c.peek()? == b'}' {
            c.pos += 1;
        } else {
            loop {
                c.ws();
                if c.peek()? != b'"' {
                    return None;
                }
                let k = self.string(c)?;
                let id = self.field_id(c.s, k);
                c.ws();
                if c.peek()? != b':' {
                    return None;
                }
                c.pos += 1;
                let v = self.value(c, depth + 1)?;
                self.pending.push(Member {
                    id,
                    key: k,
                    value: v,
                });
                if self.pending.len() - base > MAX_MEMBERS {
                    return None;
                }
                c.ws();
                match c.peek()? {
                    b',' => c.pos += 1,
                    b'}' => {
                        c.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        // orjson keeps the last of duplicate keys: never guess, refuse them.
        let own = &self.pending[base..];
        let mut seen = 0u64;
        for (i, m) in own.iter().enumerate() {
            if m.id != UNKNOWN {
                if seen & (1 << m.id) != 0 {
                    return None;
                }
                seen |= 1 << m.id;
            } else {
                let k = self.text_of(c.s, m.key);
                if own[..i]
                    .iter()
                    .any(|o| o.id == UNKNOWN && self.text_of(c.s, o.key) == k)
                {
                    return None;
                }
            }
        }
        let first = self.members.len() as u32;
        let len = (self.pending.len() - base) as u32;
        self.members.extend(self.pending.drain(base..));
        Some(self.push(Node::Obj { first, len }))
    }

    /// The field id of a key's text, or UNKNOWN.
    #[inline]
    fn field_id(&self, input: &[u8], k: Span) -> u8 {
        let r = k.range();
        let (start, len) = (r.start, r.len());
        if len > 16 {
            return UNKNOWN;
        }
        // One unaligned 16-byte load where the bytes after the key are there (they
        // are, but for the very end of a value), masked to the key's length.
        let src = if k.in_scratch() {
            self.scratch.as_bytes()
        } else {
            input
        };
        let w = match src.get(start..start + 16) {
            Some(b) => {
                let w = u128::from_le_bytes(b.try_into().unwrap());
                if len == 16 {
                    w
                } else {
                    w & ((1u128 << (len * 8)) - 1)
                }
            }
            None => match word(&src[start..start + len]) {
                Some(w) => w,
                None => return UNKNOWN,
            },
        };
        for (name, id) in &self.by_len[len] {
            if *name == w {
                return *id;
            }
        }
        UNKNOWN
    }

    fn text_of<'s>(&'s self, input: &'s [u8], s: Span) -> &'s [u8] {
        let src = if s.in_scratch() {
            self.scratch.as_bytes()
        } else {
            input
        };
        &src[s.range()]
    }

    /// A string at the opening quote; its decoded text's span.
    fn string(&mut self, c: &mut Cursor) -> Option<Span> {
        c.pos += 1;
        let start = c.pos;
        let mut ascii = true;
        // Eight bytes at a time while none is a quote, a backslash, a control
        // character or non-ASCII (the usual id, lane part or type name).
        while let Some(chunk) = c.s.get(c.pos..c.pos + 8) {
            let w = u64::from_le_bytes(chunk.try_into().unwrap());
            let m = special(w);
            if m != 0 {
                // The lowest flagged byte is a true one: go straight to it.
                c.pos += (m.trailing_zeros() / 8) as usize;
                break;
            }
            c.pos += 8;
        }
        loop {
            let b = *c.s.get(c.pos)?;
            if b == b'"' {
                let end = c.pos;
                c.pos += 1;
                if !ascii {
                    std::str::from_utf8(&c.s[start..end]).ok()?;
                }
                return Some(Span::input(start, end));
            }
            if b == b'\\' {
                break;
            }
            if b < 0x20 {
                return None; // a raw control character: not JSON
            }
            ascii &= b < 0x80;
            c.pos += 1;
        }
        // Escapes: decode the whole string into the scratch buffer.
        let s_start = self.scratch.len();
        // Checked: the cut is next to ASCII, but the bytes before it may not be UTF-8.
        self.scratch
            .push_str(std::str::from_utf8(&c.s[start..c.pos]).ok()?);
        loop {
            let b = *c.s.get(c.pos)?;
            match b {
                b'"' => {
                    c.pos += 1;
                    return Some(Span::scratch(s_start, self.scratch.len()));
                }
                b'\\' => {
                    c.pos += 1;
                    let e = *c.s.get(c.pos)?;
                    c.pos += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let u = c.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&u) {
                                if c.s.get(c.pos..c.pos + 2)? != b"\\u" {
                                    return None; // a lone high surrogate
                                }
                                c.pos += 2;
                                let lo = c.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&u) {
                                return None; // a lone low surrogate
                            } else {
                                u
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    self.scratch.push(ch);
                }
                _ if b < 0x20 => return None,
                _ => {
                    // Copy the run up to the next quote or backslash.
                    let run = c.pos;
                    while let Some(&b) = c.s.get(c.pos) {
                        if b == b'"' || b == b'\\' || b < 0x20 {
                            break;
                        }
                        c.pos += 1;
                    }
                    self.scratch
                        .push_str(std::str::from_utf8(&c.s[run..c.pos]).ok()?);
                }
            }
        }
    }

    fn node(&self, i: u32) -> Node {
        self.nodes[i as usize]
    }

    fn str_node<'s>(&'s self, input: &'s [u8], i: u32) -> Option<&'s str> {
        match self.node(i) {
            // Both buffers are UTF-8 and spans cut next to ASCII quotes.
            Node::Str(s) => Some(unsafe { std::str::from_utf8_unchecked(self.text_of(input, s)) }),
            _ => None,
        }
    }

    /// envelope_check.plainly_valid over the parsed root.
    fn plainly_valid(&self, input: &[u8], root: u32) -> bool {
        let Node::Obj { first, len } = self.node(root) else {
            return false;
        };
        if len != 8 {
            return false;
        }
        let mut seen = [None::<u32>; 8];
        for m in &self.members[first as usize..(first + len) as usize] {
            let slot = match m.id {
                x if x == F::id as u8 => 0,
                x if x == F::typ as u8 => 1,
                x if x == F::v as u8 => 2,
                x if x == F::ts as u8 => 3,
                x if x == F::key as u8 => 4,
                x if x == F::source as u8 => 5,
                x if x == F::cause as u8 => 6,
                x if x == F::data as u8 => 7,
                _ => return false,
            };
            seen[slot] = Some(m.value);
        }
        // Eight distinct keys (duplicates were refused), each one of the eight.
        let [Some(id), Some(typ), Some(v), Some(ts), Some(key), Some(source), Some(cause), Some(data)] =
            seen
        else {
            return false;
        };
        // Lengths count code points, as Python's len() does. The lower bounds are 0
        // or 1, where bytes and code points agree; above, bytes >= code points.
        let chars_within = |s: &str, lo: usize, hi: usize| {
            s.len() >= lo && (s.len() <= hi || s.chars().count() <= hi)
        };
        let opt_str = |i: u32, hi: usize| match self.node(i) {
            Node::Null => true,
            Node::Str(_) => chars_within(self.str_node(input, i).unwrap_or(""), 0, hi),
            _ => false,
        };
        let (Some(id), Some(typ), Some(source)) = (
            self.str_node(input, id),
            self.str_node(input, typ),
            self.str_node(input, source),
        ) else {
            return false;
        };
        chars_within(id, 1, 160)
            && typ.len() <= 64
            && type_pattern(typ)
            && matches!(self.node(v), Node::Int(x) if x >= 1)
            && matches!(self.node(ts), Node::Int(x) if x >= 0)
            && opt_str(key, 256)
            && chars_within(source, 1, 64)
            && opt_str(cause, 160)
            && matches!(self.node(data), Node::Obj { .. })
    }
}

/// The bytes of w that are `"`, `\\`, below 0x20 or above 0x7f, as their high bits
/// (SWAR: a zero byte of x shows as a high bit of (x - 0x01..) & !x & 0x80..). Bytes
/// above a flagged one may be flagged falsely (a borrow); the lowest never is. (The
/// JSON writer, emit.rs, uses it too: no flag means nothing to escape.)
#[inline]
pub(crate) fn special(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero(w ^ (ONES * b'"' as u64));
    let backslash = zero(w ^ (ONES * b'\\' as u64));
    // Bytes below 0x20: (b - 0x20) borrows into the high bit when b < 0x20 (for
    // b < 0x80; bytes >= 0x80 are caught by their own high bit).
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    quote | backslash | control | (w & HIGH)
}

/// `[a-z][a-z_]*(?:\.[a-z][a-z_]*)+`, the whole string (envelope.schema.json's type).
fn type_pattern(t: &str) -> bool {
    let mut parts = 0;
    for part in t.split('.') {
        let b = part.as_bytes();
        if b.is_empty() || !b[0].is_ascii_lowercase() {
            return false;
        }
        if !b[1..].iter().all(|&c| c.is_ascii_lowercase() || c == b'_') {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

/// A JSON number that is an integer within i64; None for a float or a bigger one.
fn number(c: &mut Cursor) -> Option<i64> {
    let neg = c.peek()? == b'-';
    if neg {
        c.pos += 1;
    }
    let first = c.peek()?;
    if !first.is_ascii_digit() {
        return None;
    }
    let mut v: u64 = 0;
    if first == b'0' {
        c.pos += 1;
    } else {
        while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
            v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
            c.pos += 1;
        }
    }
    if matches!(c.peek(), Some(b'.' | b'e' | b'E' | b'0'..=b'9')) {
        return None; // a float, or a leading zero
    }
    if neg {
        if v > 1u64 << 63 {
            return None;
        }
        Some((v as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(v).ok()
    }
}

/// The reader's view of one parsed value. Values are node indices.
pub struct JsonSource<'a> {
    input: &'a [u8],
    scratch: &'a str,
    nodes: &'a [Node],
    members: &'a [Member],
}

impl<'a> JsonSource<'a> {
    #[inline]
    fn str_of(&self, s: Span) -> &'a str {
        let src = if s.in_scratch() {
            self.scratch.as_bytes()
        } else {
            self.input
        };
        // SAFETY: every string span was checked to be UTF-8 when it was parsed.
        unsafe { std::str::from_utf8_unchecked(&src[s.range()]) }
    }
}

impl<'a> Source<'a> for JsonSource<'a> {
    type V = u32;

    #[inline]
    fn is_dict(&self, v: &u32) -> bool {
        matches!(self.nodes[*v as usize], Node::Obj { .. })
    }

    #[inline]
    fn is_exact_dict(&self, v: &u32) -> bool {
        self.is_dict(v)
    }

    #[inline]
    fn get(&mut self, d: &u32, f: F) -> PyResult<Option<u32>> {
        let Node::Obj { first, len } = self.nodes[*d as usize] else {
            return Ok(None);
        };
        let f = f as u8;
        Ok(self.members[first as usize..(first + len) as usize]
            .iter()
            .find(|m| m.id == f)
            .map(|m| m.value))
    }

    #[inline]
    fn int(&self, v: &u32) -> Option<i64> {
        match self.nodes[*v as usize] {
            Node::Int(x) => Some(x),
            _ => None,
        }
    }

    #[inline]
    fn boolean(&self, v: &u32) -> Option<bool> {
        match self.nodes[*v as usize] {
            Node::Bool(b) => Some(b),
            _ => None,
        }
    }

    #[inline]
    fn is_none(&self, v: &u32) -> bool {
        matches!(self.nodes[*v as usize], Node::Null)
    }

    #[inline]
    fn text(&mut self, v: &u32) -> PyResult<Option<&'a str>> {
        Ok(match self.nodes[*v as usize] {
            Node::Str(s) => Some(self.str_of(s)),
            _ => None,
        })
    }

    #[inline]
    fn any_text(&mut self, v: &u32) -> PyResult<Option<&'a str>> {
        self.text(v)
    }
}
