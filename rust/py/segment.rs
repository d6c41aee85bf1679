//! Bindings of the segmented reductions and sliding windows (`rollout.md` §4, §8).

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use super::arrays::{mask_bytes, slice};
use super::errors::to_py;
use crate::core::segment::{row_stats as row_stats_kernel, window_means as window_kernel};

type Stats<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

/// `(count, sum, sum_sq)` per `cu_seqlens` row of the valid values.
#[pyfunction]
fn row_stats<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, f32>,
    valid: Option<PyReadonlyArray1<'py, bool>>,
    cu_seqlens: PyReadonlyArray1<'py, i64>,
    omit_nan: bool,
) -> PyResult<Stats<'py>> {
    let v = slice("entropy", &values)?;
    let m = mask_bytes(&valid)?;
    let cu = slice("cu_seqlens", &cu_seqlens)?;
    let stats = py
        .detach(|| row_stats_kernel(v, m, cu, omit_nan))
        .map_err(to_py)?;
    Ok((
        PyArray1::from_vec(py, stats.iter().map(|s| s.count as i64).collect()),
        PyArray1::from_vec(py, stats.iter().map(|s| s.sum).collect()),
        PyArray1::from_vec(py, stats.iter().map(|s| s.sum_sq).collect()),
    ))
}

type Windows<'py> = (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<bool>>);

/// `(W, defined)` sliding-window means per token.
#[pyfunction]
fn window_means<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, f32>,
    valid: Option<PyReadonlyArray1<'py, bool>>,
    cu_seqlens: PyReadonlyArray1<'py, i64>,
    window: usize,
    start: usize,
) -> PyResult<Windows<'py>> {
    let v = slice("entropy", &values)?;
    let m = mask_bytes(&valid)?;
    let cu = slice("cu_seqlens", &cu_seqlens)?;
    let (w, defined) = py
        .detach(|| window_kernel(v, m, cu, window, start))
        .map_err(to_py)?;
    let defined: Vec<bool> = defined.into_iter().map(|d| d != 0).collect();
    Ok((PyArray1::from_vec(py, w), PyArray1::from_vec(py, defined)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(row_stats, m)?)?;
    m.add_function(wrap_pyfunction!(window_means, m)?)?;
    Ok(())
}
