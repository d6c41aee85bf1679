//! The `entcore._core` extension module: argument extraction, dtype dispatch, the GIL released
//! around every kernel, and [`crate::core::error::Error`] mapped to Python exceptions.

mod arrays;
mod cov;
mod distance;
mod errors;
mod matrix;
mod segment;
mod select;
mod system;
mod token;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    token::register(m)?;
    select::register(m)?;
    segment::register(m)?;
    cov::register(m)?;
    matrix::register(m)?;
    distance::register(m)?;
    system::register(m)?;
    Ok(())
}
