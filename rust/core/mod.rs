//! Pure-Rust kernels on slices: no Python, testable with `cargo test --no-default-features`.

pub mod cov;
pub mod distance;
pub mod dtype;
pub mod eigen;
pub mod error;
pub mod gram;
pub mod linear;
pub mod matrix;
pub mod partition;
pub mod plogp;
pub mod pool;
pub mod renyi;
pub mod segment;
pub mod select;
pub mod simd;
pub mod state;
pub mod tile;
pub mod token;
pub mod topk;
pub mod tridiag;

#[cfg(test)]
mod tests;
