//! Borrowing NumPy arrays as slices, shared by the bindings.

use numpy::PyReadonlyArray1;
use pyo3::prelude::*;

use super::errors::value_error;

/// The array's data as a slice; `ValueError` naming `name` if it is not contiguous.
pub fn slice<'a, T: numpy::Element>(
    name: &str,
    a: &'a PyReadonlyArray1<'_, T>,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| value_error(name, "expected a contiguous array"))
}

/// [`slice`] of an optional array.
pub fn optional_slice<'a, T: numpy::Element>(
    name: &str,
    a: &'a Option<PyReadonlyArray1<'_, T>>,
) -> PyResult<Option<&'a [T]>> {
    a.as_ref().map(|a| slice(name, a)).transpose()
}

/// An optional bool mask as bytes (`bool` is one byte holding 0 or 1), without a copy.
pub fn mask_bytes<'a>(mask: &'a Option<PyReadonlyArray1<'_, bool>>) -> PyResult<Option<&'a [u8]>> {
    let Some(m) = mask else { return Ok(None) };
    let bools = slice("mask", m)?;
    // SAFETY: bool has the size and alignment of u8 and only the values 0 and 1.
    Ok(Some(unsafe {
        std::slice::from_raw_parts(bools.as_ptr() as *const u8, bools.len())
    }))
}
