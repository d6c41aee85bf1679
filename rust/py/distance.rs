//! Bindings of the distance kernels of the intrinsic-dimension estimators (`matrix.md` §3.8).
//! The Python layer (`entcore.geometry`) has already removed duplicate rows and passes the
//! points as float64, flattened.

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use super::arrays::slice;
use super::errors::to_py;
use crate::core::distance::{
    knn_distances as knn_kernel, mst_weights as mst_kernel, sq_distances as sq_kernel,
};

/// Distances `(n · k,)` float64 to the `k` nearest other rows of `x (n × dim)`, ascending.
#[pyfunction]
#[pyo3(signature = (x, n, dim, k))]
fn knn_distances<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    n: usize,
    dim: usize,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let xs = slice("x", &x)?;
    let out = py.detach(|| knn_kernel(xs, n, dim, k)).map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

/// `Σ |e|^α` over the Euclidean minimum spanning tree of each of `batch` point sets
/// `(batch · n · dim,)`, `(batch,)` float64.
#[pyfunction]
#[pyo3(signature = (x, batch, n, dim, alpha))]
fn mst_weights<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    batch: usize,
    n: usize,
    dim: usize,
    alpha: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let xs = slice("x", &x)?;
    let out = py
        .detach(|| mst_kernel(xs, batch, n, dim, alpha))
        .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

/// Squared distances `(n · n,)` float64 between the rows of `x (n × dim)`.
#[pyfunction]
#[pyo3(signature = (x, n, dim))]
fn sq_distances<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    n: usize,
    dim: usize,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let xs = slice("x", &x)?;
    let out = py.detach(|| sq_kernel(xs, n, dim)).map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sq_distances, m)?)?;
    m.add_function(wrap_pyfunction!(knn_distances, m)?)?;
    m.add_function(wrap_pyfunction!(mst_weights, m)?)?;
    Ok(())
}
