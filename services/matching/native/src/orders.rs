//! The live orders of the engine, kept in slabs (arenas) and named by slot index.
//!
//! A slot is `Some` while its order is in the market and `None` once it left (traded,
//! cancelled, expired, closed); freed slots are reused. Timer and bid-heap entries
//! carry the order's `seq` beside its slot, so an entry whose slot was freed or reused
//! by a later order is recognised as dead (seq is unique over the engine's life).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;

/// A shared string: participant ids are interned, order ids are shared between the
/// id map and the order itself.
pub type Name = Rc<str>;

pub struct Load {
    pub load_id: Name,
    pub shipper_id: Name,
    pub book: u32,
    pub weight_kg: i64,
    pub volume_dm3: i64,
    pub pickup_from: i64,
    pub pickup_to: i64,
    pub limit_fen: i64,
    pub seq: i64,
}

pub struct Offer {
    pub offer_id: Name,
    pub carrier_id: Name,
    pub book: u32,
    pub remaining_kg: i64,
    pub remaining_dm3: i64,
    pub available_from: i64,
    pub available_to: i64,
    pub ask_fen: i64,
    pub consolidate: bool,
    pub seq: i64,
}

/// An open auction. `bids` is a min-heap of (price_fen, seq, bid slot): the lowest live
/// bid, earliest first, is on top once withdrawn entries are popped; `dead` counts the
/// withdrawn entries still inside.
pub struct Auction {
    pub load_id: Name,
    pub shipper_id: Name,
    pub book: u32,
    pub closes_at: i64,
    pub reserve_fen: Option<i64>,
    pub instant_fen: Option<i64>,
    pub sealed: bool,
    pub seq: i64,
    pub bids: BinaryHeap<Reverse<(i64, i64, u32)>>,
    pub dead: u32,
}

pub struct Bid {
    pub bid_id: Name,
    pub carrier_id: Name,
    pub auction: u32,
    pub price_fen: i64,
    pub seq: i64,
}

/// Orders that carry their arrival seq (how a heap entry checks it is still current).
pub trait Seq {
    fn seq(&self) -> i64;
}

impl Seq for Load {
    fn seq(&self) -> i64 {
        self.seq
    }
}
impl Seq for Offer {
    fn seq(&self) -> i64 {
        self.seq
    }
}
impl Seq for Auction {
    fn seq(&self) -> i64 {
        self.seq
    }
}
impl Seq for Bid {
    fn seq(&self) -> i64 {
        self.seq
    }
}

/// Slots with a free list: insert and remove in O(1), stable indices.
///
/// The slots live in chunks of a fixed size that never move: a growing book adds a
/// chunk instead of copying every order into a vector twice the size (that copying
/// was 4 % of the instructions of a run that rests most of its orders, and it held
/// the old and the new vector at once).
pub struct Slab<T> {
    chunks: Vec<Vec<Option<T>>>,
    free: Vec<u32>,
    /// Slots ever used: the next new slot's index.
    used: u32,
    live: usize,
}

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
const MASK: u32 = CHUNK as u32 - 1;

impl<T: Seq> Slab<T> {
    pub fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            used: 0,
            live: 0,
        }
    }

    #[inline]
    fn slot(&self, i: u32) -> Option<&Option<T>> {
        self.chunks
            .get((i >> CHUNK_BITS) as usize)
            .and_then(|c| c.get((i & MASK) as usize))
    }

    #[inline]
    fn slot_mut(&mut self, i: u32) -> &mut Option<T> {
        &mut self.chunks[(i >> CHUNK_BITS) as usize][(i & MASK) as usize]
    }

    pub fn insert(&mut self, item: T) -> u32 {
        self.live += 1;
        if let Some(i) = self.free.pop() {
            *self.slot_mut(i) = Some(item);
            return i;
        }
        let i = self.used;
        if i & MASK == 0 {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        // The last chunk has room: it was made with CHUNK slots and holds i & MASK.
        self.chunks.last_mut().expect("a chunk").push(Some(item));
        self.used += 1;
        i
    }

    pub fn remove(&mut self, i: u32) -> T {
        let item = self.slot_mut(i).take().expect("slot is live");
        self.free.push(i);
        self.live -= 1;
        item
    }

    #[inline]
    pub fn get(&self, i: u32) -> &T {
        self.slot(i).and_then(Option::as_ref).expect("slot is live")
    }

    #[inline]
    pub fn get_mut(&mut self, i: u32) -> &mut T {
        self.slot_mut(i).as_mut().expect("slot is live")
    }

    /// Whether slot `i` still holds the order of arrival `seq`.
    #[inline]
    pub fn holds(&self, i: u32, seq: i64) -> bool {
        matches!(self.slot(i), Some(Some(o)) if o.seq() == seq)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten().flatten()
    }
}
