//! Core errors as Python exceptions: `Error::Value` → `ValueError`, `Error::Type` → `TypeError`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::PyErr;

use crate::core::error::Error;

pub fn to_py(err: Error) -> PyErr {
    match &err {
        Error::Value { .. } => PyValueError::new_err(err.to_string()),
        Error::Type { .. } => PyTypeError::new_err(err.to_string()),
    }
}

pub fn value_error(arg: &str, message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{arg}: {message}"))
}

pub fn type_error(arg: &str, message: impl std::fmt::Display) -> PyErr {
    PyTypeError::new_err(format!("{arg}: {message}"))
}
