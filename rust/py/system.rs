//! Thread-pool and SIMD-level control.

use pyo3::prelude::*;

use super::errors::value_error;
use crate::core::{pool, simd};

#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(value_error("n", "expected a thread count >= 1, got 0"));
    }
    pool::set_num_threads(n);
    Ok(())
}

#[pyfunction]
fn get_num_threads() -> usize {
    pool::num_threads()
}

#[pyfunction]
fn simd_level() -> &'static str {
    simd::level().name()
}

#[pyfunction]
fn supported_simd_levels() -> Vec<&'static str> {
    simd::supported()
        .into_iter()
        .map(simd::Level::name)
        .collect()
}

#[pyfunction]
fn set_simd_level(level: &str) -> PyResult<()> {
    let wanted = match level {
        "auto" => None,
        name => Some(simd::Level::from_name(name).ok_or_else(|| {
            value_error(
                "level",
                format!("expected auto, avx512, avx2 or scalar, got {name:?}"),
            )
        })?),
    };
    if simd::force(wanted) {
        Ok(())
    } else {
        Err(value_error(
            "level",
            format!("{level} is not supported by this CPU"),
        ))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(supported_simd_levels, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_level, m)?)?;
    Ok(())
}
