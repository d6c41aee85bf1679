//! entcore: exact, fast entropy statistics for RL on LLMs and KV-cache compression.
//!
//! [`core`] holds the pure-Rust kernels on slices (no Python); `py` holds the thin PyO3 bindings
//! that build `entcore._core` and exist only with the default `python` feature.

pub mod core;

#[cfg(feature = "python")]
mod py;
