//! The errors every kernel reports; the bindings map them to Python exceptions.

use std::fmt;

/// A bad input, named after the argument it concerns (`conventions.md`, Inputs and errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A value, shape or range is wrong (Python `ValueError`).
    Value { arg: &'static str, message: String },
    /// A dtype or kind is wrong (Python `TypeError`).
    Type { arg: &'static str, message: String },
}

impl Error {
    pub fn value(arg: &'static str, message: impl Into<String>) -> Self {
        Error::Value {
            arg,
            message: message.into(),
        }
    }

    pub fn type_(arg: &'static str, message: impl Into<String>) -> Self {
        Error::Type {
            arg,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Value { arg, message } | Error::Type { arg, message } => {
                write!(f, "{arg}: {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
