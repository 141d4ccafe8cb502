//! The engine's timers: expiries of resting orders and closes of auctions.
//!
//! Two min-heaps, as in services/matching/timers.py: an order expires once its deadline
//! is *before* now, an auction closes once closes_at is *at or before* now, and one heap
//! would let a not-yet-due expiry hide a due close. Entries are (deadline, seq, target);
//! seq is unique, so ties never reach the target. Cancellation is lazy: an entry whose
//! slot no longer holds an order of that seq is dead and skipped; the heaps are rebuilt
//! when the dead outnumber the live, which bounds memory.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// An expiry's target: a resting market load or offer (slot index).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Load(u32),
    Offer(u32),
}

/// What fires before a command, in (deadline, seq) order.
#[derive(Clone, Copy)]
pub enum Fired {
    Load(u32),
    Offer(u32),
    Auction(u32),
}

const DEAD_MIN: usize = 1024;

pub struct Timers {
    pub expiries: BinaryHeap<Reverse<(i64, i64, Target)>>,
    pub closes: BinaryHeap<Reverse<(i64, i64, u32)>>,
    pub dead: usize,
}

impl Timers {
    pub fn new() -> Timers {
        Timers {
            expiries: BinaryHeap::new(),
            closes: BinaryHeap::new(),
            dead: 0,
        }
    }

    pub fn add_expiry(&mut self, deadline: i64, seq: i64, target: Target) {
        self.expiries.push(Reverse((deadline, seq, target)));
    }

    pub fn add_close(&mut self, closes_at: i64, seq: i64, auction: u32) {
        self.closes.push(Reverse((closes_at, seq, auction)));
    }

    /// Whether anything may fire at `now` (dead entries included: cheap to check).
    #[inline]
    pub fn due(&self, now: i64) -> bool {
        matches!(self.expiries.peek(), Some(Reverse((d, _, _))) if *d < now)
            || matches!(self.closes.peek(), Some(Reverse((d, _, _))) if *d <= now)
    }

    /// The live orders due at `now`, in (deadline, seq) order, taken off the heaps.
    /// `live_expiry` / `live_close` tell whether an entry still names its order.
    pub fn pop_due(
        &mut self,
        now: i64,
        live_expiry: impl Fn(Target, i64) -> bool,
        live_close: impl Fn(u32, i64) -> bool,
        fired: &mut Vec<(i64, i64, Fired)>,
    ) {
        fired.clear();
        while let Some(&Reverse((deadline, seq, target))) = self.expiries.peek() {
            if deadline >= now {
                break;
            }
            self.expiries.pop();
            if live_expiry(target, seq) {
                let f = match target {
                    Target::Load(i) => Fired::Load(i),
                    Target::Offer(i) => Fired::Offer(i),
                };
                fired.push((deadline, seq, f));
            } else {
                self.dead = self.dead.saturating_sub(1);
            }
        }
        let n_expiries = fired.len();
        while let Some(&Reverse((closes_at, seq, a))) = self.closes.peek() {
            if closes_at > now {
                break;
            }
            self.closes.pop();
            if live_close(a, seq) {
                fired.push((closes_at, seq, Fired::Auction(a)));
            } else {
                self.dead = self.dead.saturating_sub(1);
            }
        }
        if n_expiries > 0 && n_expiries < fired.len() {
            fired.sort_by_key(|&(d, s, _)| (d, s));
        }
    }

    /// One timed order left the market early: its entry is now dead weight. Rebuilds
    /// the heaps without dead entries when those pass DEAD_MIN and half of all.
    pub fn forget(
        &mut self,
        live_expiry: impl Fn(Target, i64) -> bool,
        live_close: impl Fn(u32, i64) -> bool,
    ) {
        self.dead += 1;
        if self.dead > DEAD_MIN && self.dead * 2 > self.expiries.len() + self.closes.len() {
            let e = std::mem::take(&mut self.expiries).into_vec();
            self.expiries = e
                .into_iter()
                .filter(|Reverse((_, s, t))| live_expiry(*t, *s))
                .collect();
            let c = std::mem::take(&mut self.closes).into_vec();
            self.closes = c
                .into_iter()
                .filter(|Reverse((_, s, a))| live_close(*a, *s))
                .collect();
            self.dead = 0;
        }
    }
}
