//! Commands read from Python objects (the dict path): `Source` over CPython's C API.
//!
//! Values are owned references; strings are borrowed from the str objects, not copied:
//! `keep` holds a strong reference to every string handed out until the command is
//! done (`clear`), and a str's UTF-8 form never changes while the object lives.

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::parse::{Source, NAMES};

/// The field names as interned strs, made once per engine: a dict lookup by an
/// interned str with its hash cached is one probe and, on a hit, one pointer compare.
pub struct Keys(Vec<Py<PyString>>);

impl Keys {
    pub fn new(py: Python<'_>) -> Keys {
        Keys(
            NAMES
                .iter()
                .map(|n| PyString::intern(py, n).unbind())
                .collect(),
        )
    }
}

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
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: v is a str; the buffer lives as long as the object, which `keep`
        // holds until `clear`, run only after the command's borrowed strings are gone.
        let p = unsafe { ffi::PyUnicode_AsUTF8AndSize(v.as_ptr(), &mut size) };
        if p.is_null() {
            return Err(PyErr::take(self.py)
                .unwrap_or_else(|| PyValueError::new_err("a str that is not valid Unicode")));
        }
        self.keep.push(v.clone());
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size as usize) };
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
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
    fn get(&mut self, d: &Self::V, f: crate::parse::F) -> PyResult<Option<Self::V>> {
        let key = self.keys.0[f as usize].as_ptr();
        // SAFETY: d is a dict (the caller checked); the result is borrowed, and taken
        // as an owned reference at once.
        let p = unsafe { ffi::PyDict_GetItemWithError(d.as_ptr(), key) };
        if p.is_null() {
            return match PyErr::take(self.py) {
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        Ok(Some(unsafe { Bound::from_borrowed_ptr(self.py, p) }))
    }

    #[inline]
    fn int(&self, v: &Self::V) -> Option<i64> {
        let p = v.as_ptr();
        if unsafe { ffi::PyLong_CheckExact(p) } == 0 {
            return None;
        }
        let mut overflow: std::os::raw::c_int = 0;
        let x = unsafe { ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow) };
        // Too large for i64: out of range (an exact int cannot fail otherwise).
        (overflow == 0 && !(x == -1 && unsafe { !ffi::PyErr_Occurred().is_null() })).then_some(x)
    }

    #[inline]
    fn boolean(&self, v: &Self::V) -> Option<bool> {
        let p = v.as_ptr();
        if unsafe { ffi::PyBool_Check(p) } == 0 {
            return None;
        }
        Some(p == unsafe { ffi::Py_True() })
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
