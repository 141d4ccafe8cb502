//! Python bindings of the native matching core (module `wlex_matching_native`).
//!
//! Only the crossing lives here: a batch of command dicts in, one (key, value) pair of
//! bytes per event out, the snapshot as bytes, a restore from orjson's decoded state.
//! The rules are in engine.rs, the reading of commands in parse.rs (from dicts:
//! pysource.rs; from Kafka value bytes: json.rs), the JSON writing in emit.rs and
//! snapshot.rs. services/matching/native_engine.py is the Python face.

mod book;
mod commands;
mod emit;
mod engine;
mod ids;
mod json;
mod orders;
mod parse;
mod pysource;
mod snapshot;
mod timers;

/// mimalloc for the core's own allocations (ids, levels, output buffers): glibc's
/// malloc spent 6-7 % of a freight batch consolidating and unlinking the small chunks
/// that orders leave behind when they trade or expire. Python's objects still come
/// from Python's allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::commands::Lane;
use crate::emit::{Key, Out, EVENT_TYPES};
use crate::engine::{Engine, REASONS};
use crate::json::Json;
use crate::parse::Reader;
use crate::pysource::{BorrowedSource, Keys, Obj, PySource};

/// The engine with its reusable output buffer. Not thread-safe (`unsendable`): one
/// engine belongs to one service loop.
#[pyclass(unsendable, module = "wlex_matching_native")]
struct Core {
    engine: Engine,
    out: Out,
    keys: Keys,
    json: Json,
    /// Each book's lane key as bytes, made once: most events are keyed by it.
    book_keys: Vec<Py<PyBytes>>,
}

fn reasons_of(reasons: &[String]) -> PyResult<[&str; REASONS]> {
    if reasons.len() != REASONS {
        return Err(PyValueError::new_err(
            "expected the eight engine reject reasons",
        ));
    }
    Ok(std::array::from_fn(|i| reasons[i].as_str()))
}

#[pymethods]
impl Core {
    /// `reasons`: the words of invalid, expired, duplicate_id, unknown_order,
    /// not_owner, not_auction, above_reserve, not_improving, in that order.
    #[new]
    fn new(py: Python<'_>, reasons: Vec<String>) -> PyResult<Core> {
        Ok(Core {
            engine: Engine::new(reasons_of(&reasons)?),
            out: Out::default(),
            keys: Keys::new(py),
            json: Json::default(),
            book_keys: Vec::new(),
        })
    }

    /// Handle `commands` (envelope dicts, in log order); return one
    /// (key bytes | None, value bytes) per outcome event, in order, the value being the
    /// exact bytes orjson gives for the Python engine's event dict.
    fn process_encoded<'py>(
        &mut self,
        py: Python<'py>,
        commands: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.out.clear();
        let mut fast = BorrowedSource::new(py, &self.keys).map(|src| Reader { src });
        let mut careful = Reader {
            src: PySource::new(py, &self.keys),
        };
        let mut one = |cmd: &Bound<'py, PyAny>| {
            // An error of the borrowed read comes before the engine saw the command
            // (parse.rs reads all of a command before handling it): read it again with
            // the careful source, whose answer, error or not, is the command's.
            if let Some(fast) = &mut fast {
                if fast
                    .command(&mut self.engine, &mut self.out, &Obj(cmd.as_ptr()))
                    .is_ok()
                {
                    return Ok(());
                }
            }
            let r = careful.command(&mut self.engine, &mut self.out, cmd);
            careful.src.clear();
            r
        };
        if let Ok(list) = commands.cast::<PyList>() {
            let n = list.len();
            for i in 0..n {
                // Command dicts lie scattered in memory, and a command's lookups wait
                // on each miss in turn: ask for the dict two ahead, then (cached by
                // then) its keys table one ahead.
                if i + 2 < n {
                    prefetch_dict(list, i + 2, false);
                }
                if i + 1 < n {
                    prefetch_dict(list, i + 1, true);
                }
                one(&list.get_item(i)?)?;
            }
        } else {
            for cmd in commands.try_iter()? {
                one(&cmd?)?;
            }
        }
        self.pairs(py)
    }

    /// Handle `values` (Kafka record values: bytes, or None for a null record, in log
    /// order) as `process_encoded` would handle `decode(value)` after the matching
    /// service's envelope validation. A value the native parser is sure of (json.rs)
    /// is read in place; any other goes to `fallback(value, index)`, which returns the
    /// decoded, validated envelope (handled as by process_encoded) or None: a dead
    /// letter, skipped (the fallback records it). Same return as process_encoded.
    /// `counts`, a dict, gets the number of events of each type added.
    #[pyo3(signature = (values, fallback, counts=None))]
    fn process_raw<'py>(
        &mut self,
        py: Python<'py>,
        values: &Bound<'py, PyList>,
        fallback: &Bound<'py, PyAny>,
        counts: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.out.clear();
        let mut reader = Reader {
            src: PySource::new(py, &self.keys),
        };
        let n = values.len();
        for (i, value) in values.iter().enumerate() {
            if i + 1 < n {
                // The values of a batch lie scattered in memory: fetch the next one's
                // bytes while this one is handled.
                prefetch_bytes(&values.get_item(i + 1)?);
            }
            let bytes = if unsafe { ffi::PyBytes_CheckExact(value.as_ptr()) } != 0 {
                Some(unsafe { value.cast_unchecked::<PyBytes>() }.as_bytes())
            } else {
                None
            };
            if let Some(bytes) = bytes {
                if let Some(root) = self.json.parse_envelope(bytes) {
                    let mut fast = Reader {
                        src: self.json.view(bytes),
                    };
                    fast.command(&mut self.engine, &mut self.out, &root)?;
                    continue;
                }
            }
            let envelope = fallback.call1((&value, i))?;
            if !envelope.is_none() {
                let r = reader.command(&mut self.engine, &mut self.out, &envelope);
                reader.src.clear();
                r?;
            }
        }
        if let Some(counts) = counts {
            // The caller's per-type metric, without reading every event's type back
            // out of its bytes in Python.
            for (typ, &n) in EVENT_TYPES.iter().zip(&self.out.types) {
                if n == 0 {
                    continue;
                }
                let before: u64 = match counts.get_item(typ.0)? {
                    Some(v) => v.extract()?,
                    None => 0,
                };
                counts.set_item(typ.0, before + u64::from(n))?;
            }
        }
        self.pairs(py)
    }

    /// The whole state as the Python engine's snapshot bytes (services/matching/snapshot.py).
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &snapshot::dump(&self.engine))
    }

    /// Load a decoded snapshot (format 1, as orjson decodes it) into this fresh engine.
    fn restore_state(
        &mut self,
        now: i64,
        seq: i64,
        loads: Vec<LoadRow>,
        offers: Vec<OfferRow>,
        auctions: Vec<AuctionRow>,
    ) -> PyResult<()> {
        if self.engine.seq != 0 || !self.engine.books.is_empty() {
            return Err(PyValueError::new_err("restore into a fresh engine only"));
        }
        let e = &mut self.engine;
        e.now = now;
        e.seq = seq;
        // Loads and auctions share one id space: insert them in seq order, as the
        // Python restore does, so every level's FIFO is rebuilt in arrival order.
        let mut posted: Vec<(i64, Result<usize, usize>)> = loads
            .iter()
            .enumerate()
            .map(|(i, r)| (r.0, Ok(i)))
            .chain(auctions.iter().enumerate().map(|(i, r)| (r.0, Err(i))))
            .collect();
        posted.sort_by_key(|p| p.0);
        for (_, which) in posted {
            match which {
                Ok(i) => {
                    let r = &loads[i];
                    let lane = Lane {
                        origin: &r.3,
                        destination: &r.4,
                        vehicle_class: &r.5,
                    };
                    e.restore_load(r.0, &r.1, &r.2, &lane, r.6, r.7, r.8, r.9, r.10);
                }
                Err(i) => {
                    let (
                        seq,
                        load_id,
                        shipper_id,
                        o,
                        d,
                        c,
                        closes_at,
                        reserve,
                        instant,
                        sealed,
                        bids,
                    ) = &auctions[i];
                    let lane = Lane {
                        origin: o,
                        destination: d,
                        vehicle_class: c,
                    };
                    let a = e.restore_auction(
                        *seq, load_id, shipper_id, &lane, *closes_at, *reserve, *instant, *sealed,
                    );
                    for (bseq, bid_id, carrier_id, price_fen) in bids {
                        e.restore_bid(a, *bseq, bid_id, carrier_id, *price_fen);
                    }
                }
            }
        }
        for r in &offers {
            let lane = Lane {
                origin: &r.3,
                destination: &r.4,
                vehicle_class: &r.5,
            };
            e.restore_offer(r.0, &r.1, &r.2, &lane, r.6, r.7, r.8, r.9, r.10, r.11);
        }
        Ok(())
    }

    /// The engine's clock: the largest valid ts seen.
    #[getter]
    fn now(&self) -> i64 {
        self.engine.now
    }

    /// Benchmark builds only: see Engine::ablation.
    #[cfg(feature = "ablation")]
    fn set_ablation(&mut self, mode: u8) {
        self.engine.ablation = mode;
    }

    /// (resting market loads and offers, open auctions).
    fn order_counts(&self) -> (usize, usize) {
        self.engine.order_counts()
    }
}

/// Ask the CPU to load a bytes object's contents into the cache (a hint only).
#[inline]
fn prefetch_bytes(value: &Bound<'_, PyAny>) {
    #[cfg(target_arch = "x86_64")]
    if unsafe { ffi::PyBytes_CheckExact(value.as_ptr()) } != 0 {
        let bytes = unsafe { value.cast_unchecked::<PyBytes>() }.as_bytes();
        for off in (0..bytes.len().min(1024)).step_by(64) {
            // SAFETY: a prefetch of an address inside the object never faults.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    bytes.as_ptr().add(off) as *const i8,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Prefetch the object at `list[i]`, or (`table`) the first lines of its keys table,
/// where its entries are, when it is an exact dict. Hints only: nothing is read that
/// the command's own lookups would not read.
#[inline]
fn prefetch_dict(list: &Bound<'_, PyList>, i: usize, table: bool) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: i < len; the borrowed item stays alive in the list meanwhile.
        let d = ffi::PyList_GET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t);
        if !table {
            _mm_prefetch::<_MM_HINT_T0>(d as *const i8);
        } else if ffi::PyDict_CheckExact(d) != 0 {
            let keys = (*(d as *mut ffi::PyDictObject)).ma_keys as *const i8;
            // A prefetch never faults, even past the end of the table.
            for off in [0, 64, 128, 192, 256] {
                _mm_prefetch::<_MM_HINT_T0>(keys.wrapping_add(off));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (list, i, table);
}

impl Core {
    /// The batch's events as a list of (key, value) tuples, built in place. Only after
    /// the batch: making a tuple can start the cyclic collector, which can run any
    /// Python code (finalizers), and `BorrowedSource` relies on none running while a
    /// command is read and handled (pysource.rs).
    fn pairs<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        for b in self.book_keys.len()..self.engine.books.len() {
            self.book_keys
                .push(PyBytes::new(py, self.engine.books[b].key.as_bytes()).unbind());
        }
        let out = &self.out;
        // SAFETY: a new list of n slots, each set exactly once below before the list
        // is seen by anyone; SET_ITEM steals the references it is given.
        unsafe {
            let list = ffi::PyList_New(out.events.len() as ffi::Py_ssize_t);
            if list.is_null() {
                return Err(PyErr::fetch(py));
            }
            let list = Bound::from_owned_ptr(py, list);
            let mut start = 0;
            for (i, ev) in out.events.iter().enumerate() {
                let value = PyBytes::new(py, &out.buf[start..ev.end]);
                start = ev.end;
                let key = match ev.key {
                    Key::Book(b) => self.book_keys[b as usize].bind(py).clone().into_any(),
                    Key::Raw(s, e) => {
                        PyBytes::new(py, &out.keys[s as usize..e as usize]).into_any()
                    }
                    Key::Null => py.None().into_bound(py),
                };
                let pair = ffi::PyTuple_New(2);
                if pair.is_null() {
                    return Err(PyErr::fetch(py));
                }
                ffi::PyTuple_SET_ITEM(pair, 0, key.into_ptr());
                ffi::PyTuple_SET_ITEM(pair, 1, value.into_ptr());
                ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, pair);
            }
            Ok(list.cast_into_unchecked::<PyList>())
        }
    }
}

// The snapshot's rows as orjson decodes them (services/matching/snapshot.py's layout).
type LoadRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
);
type OfferRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    bool,
);
type AuctionRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    bool,
    Vec<(i64, String, String, i64)>,
);

#[pymodule]
fn wlex_matching_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    Ok(())
}
