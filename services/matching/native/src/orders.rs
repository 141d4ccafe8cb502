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

/// A vector of slots with a free list: insert and remove in O(1), stable indices.
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T: Seq> Slab<T> {
    pub fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    pub fn insert(&mut self, item: T) -> u32 {
        self.live += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(item);
            i
        } else {
            self.slots.push(Some(item));
            (self.slots.len() - 1) as u32
        }
    }

    pub fn remove(&mut self, i: u32) -> T {
        let item = self.slots[i as usize].take().expect("slot is live");
        self.free.push(i);
        self.live -= 1;
        item
    }

    #[inline]
    pub fn get(&self, i: u32) -> &T {
        self.slots[i as usize].as_ref().expect("slot is live")
    }

    #[inline]
    pub fn get_mut(&mut self, i: u32) -> &mut T {
        self.slots[i as usize].as_mut().expect("slot is live")
    }

    /// Whether slot `i` still holds the order of arrival `seq`.
    #[inline]
    pub fn holds(&self, i: u32, seq: i64) -> bool {
        matches!(self.slots.get(i as usize), Some(Some(o)) if o.seq() == seq)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }
}
