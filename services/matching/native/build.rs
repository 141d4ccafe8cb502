//! Sets the cfgs of the target Python (Py_3_11.., PyPy, GraalPy), as pyo3 does for
//! itself, so the core can tell where CPython's inline string layout may be read.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
