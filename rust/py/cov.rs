//! Bindings of the covariance terms and the KL-Cov top-k (`rollout.md` §5).

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use super::arrays::{mask_bytes, slice};
use super::errors::to_py;
use crate::core::cov::{centered_cov as cov_kernel, top_k as top_k_kernel};

/// `c_t = (A_t − Ā)(ℓ_t − ℓ̄)` over one unit (float64, 0 off-mask).
#[pyfunction]
fn centered_cov<'py>(
    py: Python<'py>,
    advantages: PyReadonlyArray1<'py, f64>,
    logprob: PyReadonlyArray1<'py, f64>,
    valid: Option<PyReadonlyArray1<'py, bool>>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let a = slice("advantages", &advantages)?;
    let l = slice("logprob", &logprob)?;
    let v = mask_bytes(&valid)?;
    let c = py.detach(|| cov_kernel(a, l, v)).map_err(to_py)?;
    Ok(PyArray1::from_vec(py, c))
}

/// Indices (ascending) of the `k` largest valid values, ties by lower index.
#[pyfunction]
fn top_k<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, f64>,
    valid: Option<PyReadonlyArray1<'py, bool>>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let x = slice("values", &values)?;
    let v = mask_bytes(&valid)?;
    let chosen = py.detach(|| top_k_kernel(x, v, k));
    Ok(PyArray1::from_vec(
        py,
        chosen.into_iter().map(|i| i as i64).collect(),
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(centered_cov, m)?)?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    Ok(())
}
