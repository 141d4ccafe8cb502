//! Commands read from Python objects (the dict path): `Source` over CPython's C API,
//! and where this CPython's layouts are known (`inplace`, checked at start), over the
//! objects themselves: a field from the dict entry it sat at in the previous command,
//! a small int from its digits.
//!
//! Values are owned references; strings are borrowed from the str objects, not copied:
//! `keep` holds a strong reference to every string handed out until the command is
//! done (`clear`), and a str's UTF-8 form never changes while the object lives.

use std::cell::Cell;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::parse::{Source, F, NAMES};

/// The field names as interned strs, made once per engine: a dict lookup by an
/// interned str with its hash cached is one probe and, on a hit, one pointer compare.
pub struct Keys {
    names: Vec<Py<PyString>>,
    /// Whether `inplace::entries` reads this CPython's dicts right (checked at start).
    inplace: bool,
    /// Whether `inplace::small_int` reads this CPython's ints right (checked at start).
    inplace_int: bool,
    /// For each field, the entry index it was last found at (see `PySource::get`).
    hints: [Cell<u8>; NF],
}

const NF: usize = NAMES.len();

impl Keys {
    pub fn new(py: Python<'_>) -> Keys {
        let names: Vec<Py<PyString>> = NAMES
            .iter()
            .map(|n| PyString::intern(py, n).unbind())
            .collect();
        let inplace = inplace::works(py, &names);
        Keys {
            names,
            inplace,
            inplace_int: inplace::ints_work(py),
            hints: std::array::from_fn(|_| Cell::new(0)),
        }
    }
}

/// A command dict's entries read in place: the dicts of a batch are built by the same
/// code, so a field sits at the same entry index dict after dict, under the same
/// interned key object. Checking that one entry is a few loads; a lookup through
/// PyDict_GetItemWithError costs about 90 instructions even when it finds the key by
/// identity, and a command reads some twenty fields.
mod inplace {
    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::types::{PyDict, PyString};

    // CPython 3.11 and 3.12's PyDictKeysObject (Include/internal/pycore_dict.h):
    // dk_refcnt, dk_log2_size, dk_log2_index_bytes, dk_kind, dk_version, dk_usable,
    // dk_nentries, then dk_indices (1 << dk_log2_index_bytes bytes), then the entries;
    // a table of str keys (DICT_KEYS_UNICODE) has (me_key, me_value) entries.
    const LOG2_INDEX_BYTES: usize = 9;
    const KIND: usize = 10;
    const NENTRIES: usize = 24;
    const INDICES: usize = 32;
    const KIND_GENERAL: u8 = 0;
    const KIND_UNICODE: u8 = 1;

    pub type Entry = [*mut ffi::PyObject; 2];

    /// The entries of dict `d` and their count (deleted ones have no value), when it
    /// is a combined table of str keys; None otherwise (split tables, other keys).
    ///
    /// # Safety
    /// `d` is a live dict (a subclass too), `works()` said yes, and the entries are
    /// read before any Python code runs.
    #[inline]
    pub unsafe fn entries(d: *mut ffi::PyObject) -> Option<(*const Entry, isize)> {
        #[cfg(all(Py_3_11, not(Py_3_13), not(PyPy), not(GraalPy)))]
        {
            let d = d as *mut ffi::PyDictObject;
            if !(*d).ma_values.is_null() {
                return None;
            }
            let k = (*d).ma_keys as *const u8;
            if *k.add(KIND) != KIND_UNICODE {
                return None;
            }
            let n = *(k.add(NENTRIES) as *const isize);
            let base = k.add(INDICES + (1usize << *k.add(LOG2_INDEX_BYTES)));
            Some((base as *const Entry, n))
        }
        #[cfg(not(all(Py_3_11, not(Py_3_13), not(PyPy), not(GraalPy))))]
        {
            let _ = d;
            None
        }
    }

    /// Whether dict `d`'s table holds only str keys (a combined table of str keys, or a
    /// split table): a lookup by an exact str then runs no Python code, since CPython
    /// compares such keys itself. False for a table that may hold other keys (their
    /// `__eq__` may be called) and on interpreters whose dicts are not read here.
    ///
    /// # Safety
    /// `d` is a live dict (a subclass too) and `works()` said yes.
    #[inline]
    pub unsafe fn str_keyed(d: *mut ffi::PyObject) -> bool {
        #[cfg(all(Py_3_11, not(Py_3_13), not(PyPy), not(GraalPy)))]
        {
            let k = (*(d as *mut ffi::PyDictObject)).ma_keys as *const u8;
            *k.add(KIND) != KIND_GENERAL
        }
        #[cfg(not(all(Py_3_11, not(Py_3_13), not(PyPy), not(GraalPy))))]
        {
            let _ = d;
            false
        }
    }

    /// The value of exact int `p` when it has at most two 30-bit digits (below 2**60
    /// in size: every amount, time and id count a command carries), None otherwise.
    ///
    /// # Safety
    /// `p` is a live exact int and `ints_work()` said yes.
    #[inline(always)]
    pub unsafe fn small_int(p: *mut ffi::PyObject) -> Option<i64> {
        #[cfg(all(Py_3_11, not(Py_3_12), not(PyPy), not(GraalPy)))]
        {
            // CPython 3.11's PyLongObject: the digit count, signed, in ob_size, then
            // the digits, 30 bits each, least significant first.
            let size = (*(p as *mut ffi::PyVarObject)).ob_size;
            let digits =
                (p as *const u8).add(std::mem::size_of::<ffi::PyVarObject>()) as *const u32;
            let magnitude = match size.unsigned_abs() {
                0 => 0,
                1 => *digits as i64,
                2 => *digits as i64 | (*digits.add(1) as i64) << 30,
                _ => return None,
            };
            Some(if size < 0 { -magnitude } else { magnitude })
        }
        #[cfg(not(all(Py_3_11, not(Py_3_12), not(PyPy), not(GraalPy))))]
        {
            let _ = p;
            None
        }
    }

    /// Whether `small_int` reads this interpreter's ints: each of a range of values
    /// made here must read back as itself.
    pub fn ints_work(py: Python<'_>) -> bool {
        let values = [
            0i64,
            1,
            -1,
            7,
            (1 << 30) - 1,
            1 << 30,
            -(1 << 30) - 5,
            1_772_409_600_001,
            (1 << 60) - 1,
            -((1 << 60) - 1),
        ];
        values.iter().all(|&v| {
            let obj = v.into_pyobject(py).unwrap();
            // SAFETY: obj is a live exact int.
            let read = unsafe { small_int(obj.as_ptr()) };
            read == Some(v)
        })
    }

    /// Whether `entries` reads this interpreter's dicts: a dict of the field names
    /// built here must read back as (name, value) pairs, in order. On any other
    /// layout every field is looked up the usual way.
    pub fn works(py: Python<'_>, names: &[Py<PyString>]) -> bool {
        let d = PyDict::new(py);
        let values: Vec<Bound<'_, PyAny>> = (0..names.len())
            .map(|i| (i * 7 + 1000).into_pyobject(py).unwrap().into_any())
            .collect();
        for (n, v) in names.iter().zip(&values) {
            if d.set_item(n.bind(py), v).is_err() {
                return false;
            }
        }
        // SAFETY: d is a live dict; no Python code runs while it is read.
        let Some((e, n)) = (unsafe { entries(d.as_ptr()) }) else {
            return false;
        };
        let read_back = n as usize == names.len()
            && names.iter().zip(&values).enumerate().all(|(i, (k, v))| {
                let [ek, ev] = unsafe { *e.add(i) };
                ek == k.as_ptr() && ev == v.as_ptr()
            });
        // str_keyed must tell the two kinds of table apart: this one holds only str
        // keys, the same with an int key added may hold anything.
        // SAFETY: both are live dicts, read before any Python code runs.
        let general = PyDict::new(py);
        let told_apart = unsafe { str_keyed(d.as_ptr()) }
            && general.set_item(names[0].bind(py), 1).is_ok()
            && general.set_item(1, 1).is_ok()
            && !unsafe { str_keyed(general.as_ptr()) };
        read_back && told_apart
    }
}

/// The UTF-8 text of a str: read in place when it is compact ASCII (ids, lanes,
/// types: nearly every string of a command), else CPython's cached UTF-8 form. None,
/// with a Python error set, when it has none (a lone surrogate).
///
/// # Safety
/// `s` is a live str; the text borrows it.
#[inline(always)]
unsafe fn ascii_or_utf8<'a>(s: *mut ffi::PyObject) -> Option<&'a str> {
    #[cfg(not(any(Py_3_14, PyPy, GraalPy)))]
    if ffi::PyUnicode_IS_COMPACT_ASCII(s) != 0 {
        let p = ffi::_PyUnicode_COMPACT_DATA(s) as *const u8;
        let n = ffi::PyUnicode_GET_LENGTH(s) as usize;
        return Some(std::str::from_utf8_unchecked(std::slice::from_raw_parts(
            p, n,
        )));
    }
    let mut size: ffi::Py_ssize_t = 0;
    let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut size);
    if p.is_null() {
        return None;
    }
    Some(std::str::from_utf8_unchecked(std::slice::from_raw_parts(
        p as *const u8,
        size as usize,
    )))
}

// What a command's values are read as, the same for both sources below (`p` a live
// object in each).

#[inline(always)]
fn int_of(keys: &Keys, p: *mut ffi::PyObject) -> Option<i64> {
    if unsafe { ffi::PyLong_CheckExact(p) } == 0 {
        return None;
    }
    if keys.inplace_int {
        // SAFETY: p is a live exact int; ints_work() said yes.
        if let Some(x) = unsafe { inplace::small_int(p) } {
            return Some(x);
        }
    }
    let mut overflow: std::os::raw::c_int = 0;
    let x = unsafe { ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow) };
    // Too large for i64: out of range (an exact int cannot fail otherwise).
    (overflow == 0 && !(x == -1 && unsafe { !ffi::PyErr_Occurred().is_null() })).then_some(x)
}

#[inline(always)]
fn boolean_of(p: *mut ffi::PyObject) -> Option<bool> {
    if unsafe { ffi::PyBool_Check(p) } == 0 {
        return None;
    }
    Some(p == unsafe { ffi::Py_True() })
}

/// The text of str `p` (exact or not, the caller checked), borrowed from the object.
/// Err if it is not valid Unicode (a lone surrogate).
///
/// # Safety
/// `p` is a live str that outlives 'a.
#[inline(always)]
unsafe fn text_of<'a>(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<&'a str> {
    match ascii_or_utf8(p) {
        Some(text) => Ok(text),
        None => Err(PyErr::take(py)
            .unwrap_or_else(|| PyValueError::new_err("a str that is not valid Unicode"))),
    }
}

/// `d[key]` found in place where this field sat in the previous command's dict: a few
/// loads and compares, no call. None when it is not there (look it up another way).
///
/// # Safety
/// `d` is a live dict; the value is borrowed.
#[inline(always)]
unsafe fn hinted(keys: &Keys, d: *mut ffi::PyObject, f: F) -> Option<*mut ffi::PyObject> {
    if !keys.inplace {
        return None;
    }
    let (e, n) = inplace::entries(d)?;
    let h = keys.hints[f as usize].get() as isize;
    if h >= n {
        return None;
    }
    let [k, v] = *e.offset(h);
    (k == keys.names[f as usize].as_ptr() && !v.is_null()).then_some(v)
}

/// `d[key]` by the same key object anywhere in d's entries, remembering where for the
/// next command. None when the key object is not among them.
///
/// # Safety
/// `d` is a live dict; the value is borrowed.
#[inline]
unsafe fn scanned(keys: &Keys, d: *mut ffi::PyObject, f: F) -> Option<*mut ffi::PyObject> {
    if !keys.inplace {
        return None;
    }
    let (e, n) = inplace::entries(d)?;
    let key = keys.names[f as usize].as_ptr();
    for j in 0..n.min(u8::MAX as isize) {
        let [k, v] = *e.offset(j);
        if k == key && !v.is_null() {
            keys.hints[f as usize].set(j as u8);
            return Some(v);
        }
    }
    None
}

/// `d[key]` through the C API: borrowed, None when absent.
///
/// # Safety
/// `d` is a live dict. This may run Python code (a non-str key's `__eq__`).
unsafe fn looked_up(
    py: Python<'_>,
    keys: &Keys,
    d: *mut ffi::PyObject,
    f: F,
) -> PyResult<Option<*mut ffi::PyObject>> {
    let p = ffi::PyDict_GetItemWithError(d, keys.names[f as usize].as_ptr());
    if p.is_null() {
        return match PyErr::take(py) {
            Some(e) => Err(e),
            None => Ok(None),
        };
    }
    Ok(Some(p))
}

/// A borrowed object of a command (see `BorrowedSource`).
#[derive(Clone, Copy)]
pub struct Obj(pub *mut ffi::PyObject);

/// Commands read without taking a reference to anything: the source of the dict path.
///
/// Sound because no Python code runs while a command is read and handled: this source
/// reads objects in place or through C-API calls that run none (a lookup in a table of
/// str keys by an exact str compares the keys in C), and the binding makes its Python
/// objects only after the batch. So nothing can free what it borrows. The one lookup
/// that could run Python code, in a table that may hold other keys (their `__eq__`),
/// it refuses with an error before the engine has seen the command; the binding then
/// reads that command again with `PySource`, which holds what it reads.
pub struct BorrowedSource<'py, 'k> {
    py: Python<'py>,
    keys: &'k Keys,
}

impl<'py, 'k> BorrowedSource<'py, 'k> {
    /// None when this interpreter's dicts are not read in place (then every command
    /// would be refused: use `PySource`).
    pub fn new(py: Python<'py>, keys: &'k Keys) -> Option<Self> {
        keys.inplace.then_some(BorrowedSource { py, keys })
    }

    #[cold]
    #[inline(never)]
    fn get_slow(&mut self, d: *mut ffi::PyObject, f: F) -> PyResult<Option<Obj>> {
        // SAFETY: d is a live dict; a value is borrowed while no Python code runs,
        // and none runs here: the C-API lookup only in a table of str keys.
        unsafe {
            if let Some(v) = scanned(self.keys, d, f) {
                return Ok(Some(Obj(v)));
            }
            if !inplace::str_keyed(d) {
                return Err(PyValueError::new_err(
                    "a dict that may hold keys other than str",
                ));
            }
            Ok(looked_up(self.py, self.keys, d, f)?.map(Obj))
        }
    }
}

impl<'a, 'py, 'k> Source<'a> for BorrowedSource<'py, 'k> {
    type V = Obj;

    #[inline(always)]
    fn is_dict(&self, v: &Obj) -> bool {
        unsafe { ffi::PyDict_Check(v.0) != 0 }
    }

    #[inline(always)]
    fn is_exact_dict(&self, v: &Obj) -> bool {
        unsafe { ffi::PyDict_CheckExact(v.0) != 0 }
    }

    #[inline(always)]
    fn get(&mut self, d: &Obj, f: F) -> PyResult<Option<Obj>> {
        // SAFETY: d is a dict (the caller checked); the value is borrowed (see above).
        match unsafe { hinted(self.keys, d.0, f) } {
            Some(v) => Ok(Some(Obj(v))),
            None => self.get_slow(d.0, f),
        }
    }

    #[inline(always)]
    fn int(&self, v: &Obj) -> Option<i64> {
        int_of(self.keys, v.0)
    }

    #[inline(always)]
    fn boolean(&self, v: &Obj) -> Option<bool> {
        boolean_of(v.0)
    }

    #[inline(always)]
    fn is_none(&self, v: &Obj) -> bool {
        v.0 == unsafe { ffi::Py_None() }
    }

    #[inline(always)]
    fn text(&mut self, v: &Obj) -> PyResult<Option<&'a str>> {
        if unsafe { ffi::PyUnicode_CheckExact(v.0) } == 0 {
            return Ok(None);
        }
        // SAFETY: a str of the command, alive while it is read and handled (above).
        unsafe { text_of(self.py, v.0) }.map(Some)
    }

    #[inline(always)]
    fn any_text(&mut self, v: &Obj) -> PyResult<Option<&'a str>> {
        if unsafe { ffi::PyUnicode_Check(v.0) } == 0 {
            return Ok(None);
        }
        // SAFETY: as in text.
        unsafe { text_of(self.py, v.0) }.map(Some)
    }
}

/// Commands read holding a reference to every value: the careful source, for the
/// commands `BorrowedSource` refuses and for interpreters whose dicts it cannot read.
/// A lookup may run Python code here (a key's `__eq__` may even change the dict), and
/// what was read stays alive through it.
pub struct PySource<'py, 'k> {
    py: Python<'py>,
    keys: &'k Keys,
    keep: Vec<Bound<'py, PyAny>>,
}

impl<'py, 'k> PySource<'py, 'k> {
    pub fn new(py: Python<'py>, keys: &'k Keys) -> Self {
        PySource {
            py,
            keys,
            keep: Vec::with_capacity(16),
        }
    }

    /// Drop the strings of the command just done.
    pub fn clear(&mut self) {
        self.keep.clear();
    }

    /// The UTF-8 text of a str (exact or not), kept alive until `clear`.
    fn utf8<'a>(&mut self, v: &Bound<'py, PyAny>) -> PyResult<&'a str> {
        // SAFETY: v is a str; the text lives as long as the object, which `keep`
        // holds until `clear`, run only after the command's borrowed strings are gone.
        let text = unsafe { text_of(self.py, v.as_ptr()) }?;
        self.keep.push(v.clone());
        Ok(text)
    }
}

impl<'a, 'py, 'k> Source<'a> for PySource<'py, 'k> {
    type V = Bound<'py, PyAny>;

    #[inline]
    fn is_dict(&self, v: &Self::V) -> bool {
        unsafe { ffi::PyDict_Check(v.as_ptr()) != 0 }
    }

    #[inline]
    fn is_exact_dict(&self, v: &Self::V) -> bool {
        unsafe { ffi::PyDict_CheckExact(v.as_ptr()) != 0 }
    }

    #[inline]
    fn get(&mut self, d: &Self::V, f: F) -> PyResult<Option<Self::V>> {
        let dp = d.as_ptr();
        // SAFETY: d is a dict (the caller checked); each value is taken as an owned
        // reference at once, before any Python code can run.
        unsafe {
            if let Some(v) = hinted(self.keys, dp, f).or_else(|| scanned(self.keys, dp, f)) {
                return Ok(Some(Bound::from_borrowed_ptr(self.py, v)));
            }
            Ok(looked_up(self.py, self.keys, dp, f)?.map(|v| Bound::from_borrowed_ptr(self.py, v)))
        }
    }

    #[inline]
    fn int(&self, v: &Self::V) -> Option<i64> {
        int_of(self.keys, v.as_ptr())
    }

    #[inline]
    fn boolean(&self, v: &Self::V) -> Option<bool> {
        boolean_of(v.as_ptr())
    }

    #[inline]
    fn is_none(&self, v: &Self::V) -> bool {
        v.is_none()
    }

    #[inline]
    fn text(&mut self, v: &Self::V) -> PyResult<Option<&'a str>> {
        if unsafe { ffi::PyUnicode_CheckExact(v.as_ptr()) } == 0 {
            return Ok(None);
        }
        self.utf8(v).map(Some)
    }

    #[inline]
    fn any_text(&mut self, v: &Self::V) -> PyResult<Option<&'a str>> {
        if unsafe { ffi::PyUnicode_Check(v.as_ptr()) } == 0 {
            return Ok(None);
        }
        self.utf8(v).map(Some)
    }
}
