//! Bindings of the exact selections (`rollout.md` §3).

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;

use super::arrays::{mask_bytes, slice};
use super::errors::{to_py, value_error};
use crate::core::select::{high_entropy_select as select_kernel, Method, NanPolicy};

type SelectResult<'py> = (Bound<'py, PyArray1<bool>>, f64, usize, usize);

/// `(mask, threshold, kept, valid)` for one unit of float32 entropies.
#[pyfunction]
#[pyo3(signature = (values, valid, rho, method, nan_policy))]
fn high_entropy_select<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, f32>,
    valid: Option<PyReadonlyArray1<'py, bool>>,
    rho: f64,
    method: &str,
    nan_policy: &str,
) -> PyResult<SelectResult<'py>> {
    let nan_policy = NanPolicy::from_name(nan_policy).ok_or_else(|| {
        value_error(
            "nan_policy",
            format!("expected raise, omit or propagate, got {nan_policy:?}"),
        )
    })?;
    let method = Method::from_name(method).ok_or_else(|| {
        value_error(
            "method",
            format!("expected linear, lower, nearest or topk, got {method:?}"),
        )
    })?;
    let values = slice("entropy", &values)?;
    let valid_bytes = mask_bytes(&valid)?;
    let out = PyArray1::<bool>::zeros(py, values.len(), false);
    let selection = {
        let mut out_rw = out.readwrite();
        let out_bools = out_rw.as_slice_mut().expect("a new array is contiguous");
        // SAFETY: the kernel writes only 0 or 1, which are valid bools.
        let out_bytes = unsafe {
            std::slice::from_raw_parts_mut(out_bools.as_mut_ptr() as *mut u8, out_bools.len())
        };
        py.detach(|| select_kernel(values, valid_bytes, rho, method, nan_policy, out_bytes))
            .map_err(to_py)?
    };
    Ok((out, selection.threshold, selection.kept, selection.valid))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(high_entropy_select, m)?)?;
    Ok(())
}
