//! Maps keyed by id strings (order ids, participant names), each entry keeping its
//! hash beside the id.
//!
//! Why not std's HashMap: when it grows it hashes every key again, which reads every
//! id's text, each a separate allocation scattered over the heap (a cache miss per entry;
//! perf put the growth of the id maps at 6 % of a 200,000-order run). Here the table
//! grows by the stored hashes, and a lookup compares the full hash before it reads an
//! id's text, so the 1-in-128 entries whose short tag matches by chance cost no miss.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::orders::Name;

/// foldhash, not FxHash: with Fx, similar ids ("shipper-17", "shipper-18") shared
/// hashbrown's tag bits so often that a lookup compared several keys byte by byte
/// (perf: the participant-id lookup and its memcmp went from 8.8 % to 6.8 % of
/// process_raw's samples). A fixed seed: runs stay alike (no map is iterated for
/// output, but profiles should repeat).
pub const HASH: FixedState = FixedState::with_seed(0x776c_6578);

#[inline]
fn hash(id: &str) -> u64 {
    HASH.hash_one(id)
}

pub struct IdMap<V> {
    table: HashTable<(u64, Name, V)>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            table: HashTable::new(),
        }
    }
}

/// Whether an entry is `id`'s: the full hash first, so that an entry whose short tag
/// matched by chance is told apart without reading its text.
#[inline]
fn is<V>(h: u64, id: &str) -> impl Fn(&(u64, Name, V)) -> bool + '_ {
    move |e| e.0 == h && *e.1 == *id
}

impl<V> IdMap<V> {
    #[inline]
    fn find(&self, h: u64, id: &str) -> Option<&(u64, Name, V)> {
        self.table.find(h, is(h, id))
    }

    pub fn get(&self, id: &str) -> Option<&V> {
        self.find(hash(id), id).map(|e| &e.2)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.find(hash(id), id).is_some()
    }

    /// The shared string held for `id`, if any.
    pub fn name(&self, id: &str) -> Option<&Name> {
        self.find(hash(id), id).map(|e| &e.1)
    }

    /// Map `id` to `v`, replacing the value (not the id) when it is present.
    pub fn insert(&mut self, id: Name, v: V) {
        let h = hash(&id);
        match self.table.find_mut(h, is(h, &id)) {
            Some(e) => e.2 = v,
            None => {
                self.table.insert_unique(h, (h, id, v), |e| e.0);
            }
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<V> {
        let h = hash(id);
        match self.table.find_entry(h, is(h, id)) {
            Ok(entry) => Some(entry.remove().0 .2),
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn clear(&mut self) {
        self.table.clear();
    }
}
