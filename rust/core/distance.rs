//! Nearest-neighbour distances for the intrinsic-dimension estimators (`matrix.md` §3.8):
//! brute force in f64, `‖x_i − x_j‖²` from exact row differences (no `‖a‖² + ‖b‖² − 2a·b`, which
//! cancels for close points), one block of [`BLOCK_ROWS`] query rows per task on entcore's pool
//! (each candidate row is read once per block, from cache), so results do not depend on the
//! thread count.

use crate::core::error::{Error, Result};
use crate::core::pool;
use crate::core::simd::{self, Level};

/// Query rows per task.
pub const BLOCK_ROWS: usize = 64;

/// Independent f64 accumulators of one squared distance (vectorisable; the order is fixed).
const LANES: usize = 8;

/// Distances `(n, k)` from each of the `n` rows of `x (n × dim, row-major)` to its `k` nearest
/// other rows, ascending (`i ≠ j`; equal distances keep the lower index first, which fixes the
/// order but not the values). Needs `1 ≤ k < n`.
pub fn knn_distances(x: &[f64], n: usize, dim: usize, k: usize) -> Result<Vec<f64>> {
    if dim == 0 || n.checked_mul(dim) != Some(x.len()) {
        return Err(Error::value(
            "x",
            format!("expected {n}·{dim} elements with dim >= 1, got {}", x.len()),
        ));
    }
    if k == 0 || k >= n {
        return Err(Error::value(
            "k",
            format!("expected 1 <= k < N = {n} neighbours, got {k}"),
        ));
    }
    let level = simd::level();
    let blocks = n.div_ceil(BLOCK_ROWS);
    let work = n.saturating_mul(n).saturating_mul(dim);
    let parts = pool::map_indexed(
        blocks,
        1,
        work,
        || (),
        |_, b| {
            let rows = b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(n);
            // SAFETY: `level` comes from `simd::level()`, which only returns supported levels.
            unsafe {
                match level {
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx2 | Level::Avx512 => block_avx2(x, n, dim, k, rows),
                    _ => block(x, n, dim, k, rows),
                }
            }
        },
    );
    Ok(parts.concat())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    x: &[f64],
    n: usize,
    dim: usize,
    k: usize,
    rows: std::ops::Range<usize>,
) -> Vec<f64> {
    block(x, n, dim, k, rows)
}

/// The `k` nearest distances of the query rows `rows`, `(rows.len(), k)` row-major.
#[inline(always)]
fn block(x: &[f64], n: usize, dim: usize, k: usize, rows: std::ops::Range<usize>) -> Vec<f64> {
    let m = rows.len();
    // Per query row, the `k` best (squared distance, index) so far, ascending.
    let mut best = vec![(f64::INFINITY, usize::MAX); m * k];
    for j in 0..n {
        let xj = &x[j * dim..(j + 1) * dim];
        for (q, i) in rows.clone().enumerate() {
            if i == j {
                continue;
            }
            let d2 = squared_distance(&x[i * dim..(i + 1) * dim], xj);
            let list = &mut best[q * k..(q + 1) * k];
            if d2 < list[k - 1].0 {
                // Candidates arrive by increasing index: after every equal distance.
                let mut at = k - 1;
                while at > 0 && list[at - 1].0 > d2 {
                    list[at] = list[at - 1];
                    at -= 1;
                }
                list[at] = (d2, j);
            }
        }
    }
    best.into_iter().map(|(d2, _)| d2.sqrt()).collect()
}

/// Squared distances `‖x_i − x_j‖²` `(n, n)` row-major between the `n` rows of `x (n × dim)`, from
/// exact differences, one block of [`BLOCK_ROWS`] rows per task; exactly symmetric with a zero
/// diagonal (every pair is summed in the same order both ways). Needs `n ≥ 1`, `dim ≥ 1`.
pub fn sq_distances(x: &[f64], n: usize, dim: usize) -> Result<Vec<f64>> {
    if n == 0 || dim == 0 || n.checked_mul(dim) != Some(x.len()) {
        return Err(Error::value(
            "x",
            format!(
                "expected {n}·{dim} elements with n, dim >= 1, got {}",
                x.len()
            ),
        ));
    }
    let level = simd::level();
    let work = n.saturating_mul(n).saturating_mul(dim);
    let parts = pool::map_indexed(
        n.div_ceil(BLOCK_ROWS),
        1,
        work,
        || (),
        |_, b| {
            let rows = b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(n);
            // SAFETY: `level` comes from `simd::level()`, which only returns supported levels.
            unsafe {
                match level {
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx2 | Level::Avx512 => distance_rows_avx2(x, n, dim, rows),
                    _ => distance_rows(x, n, dim, rows),
                }
            }
        },
    );
    Ok(parts.concat())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn distance_rows_avx2(
    x: &[f64],
    n: usize,
    dim: usize,
    rows: std::ops::Range<usize>,
) -> Vec<f64> {
    distance_rows(x, n, dim, rows)
}

#[inline(always)]
fn distance_rows(x: &[f64], n: usize, dim: usize, rows: std::ops::Range<usize>) -> Vec<f64> {
    let mut out = vec![0f64; rows.len() * n];
    for j in 0..n {
        let xj = &x[j * dim..(j + 1) * dim];
        for (q, i) in rows.clone().enumerate() {
            out[q * n + j] = squared_distance(&x[i * dim..(i + 1) * dim], xj);
        }
    }
    out
}

/// `Σ_a (u_a − v_a)²` in [`LANES`] accumulators.
#[inline(always)]
pub fn squared_distance(u: &[f64], v: &[f64]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut us = u.chunks_exact(LANES);
    let mut vs = v.chunks_exact(LANES);
    for (a, b) in (&mut us).zip(&mut vs) {
        for l in 0..LANES {
            let t = a[l] - b[l];
            acc[l] += t * t;
        }
    }
    let tail: f64 = us
        .remainder()
        .iter()
        .zip(vs.remainder())
        .map(|(&a, &b)| (a - b) * (a - b))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// `Σ |e|^α` over the edges of the Euclidean minimum spanning tree of each of `batch` point sets
/// stored one after another in `x` (`batch × n × dim`, row-major): dense Prim from point 0,
/// distances from exact differences computed when a point joins the tree (`O(n² dim)` time,
/// `O(n)` memory), the nearest outside point taken with ties to the lower index. One set per task
/// on entcore's pool. Needs `n ≥ 1`, `dim ≥ 1`.
pub fn mst_weights(x: &[f64], batch: usize, n: usize, dim: usize, alpha: f64) -> Result<Vec<f64>> {
    let size = n.checked_mul(dim);
    if n == 0 || dim == 0 || size.and_then(|s| s.checked_mul(batch)) != Some(x.len()) {
        return Err(Error::value(
            "x",
            format!(
                "expected {batch}·{n}·{dim} elements with n, dim >= 1, got {}",
                x.len()
            ),
        ));
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(Error::value(
            "alpha",
            format!("expected a finite value > 0, got {alpha}"),
        ));
    }
    let level = simd::level();
    let size = n * dim;
    let work = batch.saturating_mul(n).saturating_mul(size);
    Ok(pool::map_indexed(
        batch,
        1,
        work,
        || (),
        |_, b| {
            let pts = &x[b * size..(b + 1) * size];
            // SAFETY: `level` comes from `simd::level()`, which only returns supported levels.
            unsafe {
                match level {
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx2 | Level::Avx512 => prim_avx2(pts, n, dim, alpha),
                    _ => prim(pts, n, dim, alpha),
                }
            }
        },
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn prim_avx2(pts: &[f64], n: usize, dim: usize, alpha: f64) -> f64 {
    prim(pts, n, dim, alpha)
}

#[inline(always)]
fn prim(pts: &[f64], n: usize, dim: usize, alpha: f64) -> f64 {
    let row = |i: usize| &pts[i * dim..(i + 1) * dim];
    let mut in_tree = vec![false; n];
    let mut best = vec![f64::INFINITY; n];
    let mut total = 0f64;
    let mut last = 0usize;
    in_tree[0] = true;
    for _ in 1..n {
        let from = row(last);
        let (mut next, mut next_d) = (usize::MAX, f64::INFINITY);
        for j in 0..n {
            if in_tree[j] {
                continue;
            }
            let d = squared_distance(from, row(j)).sqrt();
            if d < best[j] {
                best[j] = d;
            }
            if best[j] < next_d || next == usize::MAX {
                next = j;
                next_d = best[j];
            }
        }
        total += next_d.powf(alpha);
        in_tree[next] = true;
        last = next;
    }
    total
}
