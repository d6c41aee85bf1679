//! Bindings of the matrix entropy kernels (`matrix.md` §1). The Python layer (`entcore.matrix`)
//! has already checked dtypes, ranks, options and the mask shape, and passes `x` flattened
//! (`problems × rows × d`, C order) with the mask broadcast to `problems × rows`.

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use super::arrays::{mask_bytes, slice};
use super::errors::{to_py, type_error, value_error};
use crate::core::dtype::{as_bf16, as_f16};
use crate::core::eigen::symmetric_eigenvalues as eigen_kernel;
use crate::core::matrix::{
    matrix_entropy as entropy_kernel, matrix_renyi2 as renyi2_kernel,
    matrix_spectrum as spectrum_kernel, EntropyArgs, Method, Normalize, Prep, Shape,
};

/// A flat C-contiguous token array of one of the four kinds.
enum Tokens<'py> {
    F32(PyReadonlyArray1<'py, f32>),
    F64(PyReadonlyArray1<'py, f64>),
    F16(PyReadonlyArray1<'py, u16>),
    Bf16(PyReadonlyArray1<'py, u16>),
}

impl<'py> Tokens<'py> {
    fn extract(obj: &Bound<'py, PyAny>, kind: &str) -> PyResult<Self> {
        let wrong = |_| type_error("x", format!("does not match kind {kind:?}"));
        Ok(match kind {
            "f32" => Tokens::F32(obj.extract().map_err(wrong)?),
            "f64" => Tokens::F64(obj.extract().map_err(wrong)?),
            "f16" => Tokens::F16(obj.extract().map_err(wrong)?),
            "bf16" => Tokens::Bf16(obj.extract().map_err(wrong)?),
            other => return Err(type_error("kind", format!("unknown float kind {other:?}"))),
        })
    }
}

/// Run `$body` with `$slice` bound to the tokens as a typed slice, the GIL released.
macro_rules! with_tokens {
    ($py:expr, $tokens:expr, |$slice:ident| $body:expr) => {{
        let not_contiguous = |_| value_error("x", "expected a C-contiguous array");
        match &$tokens {
            Tokens::F32(a) => {
                let $slice = a.as_slice().map_err(not_contiguous)?;
                $py.detach(|| $body)
            }
            Tokens::F64(a) => {
                let $slice = a.as_slice().map_err(not_contiguous)?;
                $py.detach(|| $body)
            }
            Tokens::F16(a) => {
                let $slice = as_f16(a.as_slice().map_err(not_contiguous)?);
                $py.detach(|| $body)
            }
            Tokens::Bf16(a) => {
                let $slice = as_bf16(a.as_slice().map_err(not_contiguous)?);
                $py.detach(|| $body)
            }
        }
    }};
}

fn method(name: &str) -> PyResult<Method> {
    match name {
        "auto" => Ok(Method::Auto),
        "covariance" => Ok(Method::Covariance),
        "gram" => Ok(Method::Gram),
        other => Err(value_error("method", format!("unknown method {other:?}"))),
    }
}

fn normalize(name: Option<&str>, base: f64) -> PyResult<Normalize> {
    match name {
        Some("log_d") => Ok(Normalize::LogD),
        Some("log_k") => Ok(Normalize::LogK),
        Some("log_rank") => Ok(Normalize::LogRank),
        None => Ok(Normalize::Base(base)),
        Some(other) => Err(value_error(
            "normalize",
            format!("unknown divisor {other:?}"),
        )),
    }
}

/// Spectra `(problems · d,)` float64 (`matrix.md` §1.1).
#[pyfunction]
#[pyo3(signature = (x, kind, mask, problems, rows, d, center, row_normalize, zero_tol, method_name))]
fn matrix_spectrum<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    mask: Option<PyReadonlyArray1<'py, bool>>,
    problems: usize,
    rows: usize,
    d: usize,
    center: bool,
    row_normalize: bool,
    zero_tol: f64,
    method_name: &str,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let tokens = Tokens::extract(x, kind)?;
    let mask = mask_bytes(&mask)?;
    let shape = Shape {
        problems,
        rows,
        d,
        pool: 1,
    };
    let prep = Prep {
        center,
        row_normalize,
        zero_tol,
        method: method(method_name)?,
    };
    let out =
        with_tokens!(py, tokens, |xs| spectrum_kernel(xs, mask, shape, &prep)).map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

/// Entropies `(problems / pool,)` float64 (`matrix.md` §1.2); `pool > 1` averages `Â` over
/// consecutive problems.
#[pyfunction]
#[pyo3(signature = (x, kind, mask, problems, rows, d, pool, center, row_normalize, zero_tol, method_name, k, renormalized, normalize_name, base, eps, propagate_nan))]
fn matrix_entropy<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    mask: Option<PyReadonlyArray1<'py, bool>>,
    problems: usize,
    rows: usize,
    d: usize,
    pool: usize,
    center: bool,
    row_normalize: bool,
    zero_tol: f64,
    method_name: &str,
    k: Option<usize>,
    renormalized: bool,
    normalize_name: Option<&str>,
    base: f64,
    eps: f64,
    propagate_nan: bool,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let tokens = Tokens::extract(x, kind)?;
    let mask = mask_bytes(&mask)?;
    let shape = Shape {
        problems,
        rows,
        d,
        pool,
    };
    let prep = Prep {
        center,
        row_normalize,
        zero_tol,
        method: method(method_name)?,
    };
    let args = EntropyArgs {
        k,
        renormalized,
        normalize: normalize(normalize_name, base)?,
        eps,
    };
    let out = with_tokens!(py, tokens, |xs| entropy_kernel(
        xs,
        mask,
        shape,
        &prep,
        &args,
        propagate_nan
    ))
    .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

/// Rényi-2 entropies `(problems / pool,)` float64 (`matrix.md` §1.3).
#[pyfunction]
#[pyo3(signature = (x, kind, mask, problems, rows, d, pool, center, row_normalize, zero_tol, normalize_name))]
fn matrix_renyi2<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    mask: Option<PyReadonlyArray1<'py, bool>>,
    problems: usize,
    rows: usize,
    d: usize,
    pool: usize,
    center: bool,
    row_normalize: bool,
    zero_tol: f64,
    normalize_name: Option<&str>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let tokens = Tokens::extract(x, kind)?;
    let mask = mask_bytes(&mask)?;
    let shape = Shape {
        problems,
        rows,
        d,
        pool,
    };
    let prep = Prep {
        center,
        row_normalize,
        zero_tol,
        method: Method::Auto,
    };
    let divisor = normalize(normalize_name, std::f64::consts::E)?;
    let out = with_tokens!(py, tokens, |xs| renyi2_kernel(
        xs, mask, shape, &prep, divisor
    ))
    .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

/// Eigenvalues `(batch · dim,)` float64 of `batch` symmetric `dim × dim` float64 matrices
/// (lower triangles read), clamped at 0, descending per matrix.
#[pyfunction]
#[pyo3(signature = (a, batch, dim))]
fn symmetric_eigenvalues<'py>(
    py: Python<'py>,
    a: PyReadonlyArray1<'py, f64>,
    batch: usize,
    dim: usize,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let values = slice("a", &a)?;
    let out = py
        .detach(|| eigen_kernel(values, batch, dim))
        .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(symmetric_eigenvalues, m)?)?;
    m.add_function(wrap_pyfunction!(matrix_spectrum, m)?)?;
    m.add_function(wrap_pyfunction!(matrix_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(matrix_renyi2, m)?)?;
    Ok(())
}
