//! Segmented reductions over ragged sequences (`rollout.md` §0.1): rows are `cu_seqlens`
//! segments of a flat token array (a padded `(B, L)` array is the segments `[bL, (b+1)L)`),
//! padding and masked tokens never enter. Sums run in f64, rows in parallel, results independent
//! of the thread count.

use crate::core::error::{Error, Result};
use crate::core::pool;

/// Count, sum and sum of squares of a row's valid values (f64).
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct RowStats {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

/// Checks `cu_seqlens` against `n` tokens: starts at 0, non-decreasing, ends at `n`.
pub fn check_offsets(cu: &[i64], n: usize) -> Result<()> {
    if cu.is_empty() || cu[0] != 0 || *cu.last().unwrap() != n as i64 {
        return Err(Error::value(
            "cu_seqlens",
            format!("expected offsets from 0 to N = {n} (B + 1 values)"),
        ));
    }
    if let Some(b) = cu.windows(2).position(|w| w[1] < w[0]) {
        return Err(Error::value(
            "cu_seqlens",
            format!(
                "expected non-decreasing offsets, got {} then {} at row {b}",
                cu[b],
                cu[b + 1]
            ),
        ));
    }
    Ok(())
}

/// `cu_seqlens` and the mask against `values`.
fn check_tokens(values: &[f32], valid: Option<&[u8]>, cu: &[i64]) -> Result<()> {
    check_offsets(cu, values.len())?;
    if valid.is_some_and(|v| v.len() != values.len()) {
        return Err(Error::value("mask", "expected one entry per token"));
    }
    Ok(())
}

/// `f(lo, hi)` for the token range of every row, in row order, rows in parallel for large inputs.
fn each_row<T: Send>(cu: &[i64], n: usize, f: impl Fn(usize, usize) -> T + Sync + Send) -> Vec<T> {
    pool::map_indexed(
        cu.len() - 1,
        64,
        n,
        || (),
        |_, b| f(cu[b] as usize, cu[b + 1] as usize),
    )
}

/// Per-row statistics of the valid, non-NaN values. With `omit_nan == false` a valid NaN is an
/// error naming its flat index.
pub fn row_stats(
    values: &[f32],
    valid: Option<&[u8]>,
    cu: &[i64],
    omit_nan: bool,
) -> Result<Vec<RowStats>> {
    check_tokens(values, valid, cu)?;
    let per_row = each_row(cu, values.len(), |lo, hi| {
        let mut st = RowStats::default();
        for i in lo..hi {
            if valid.is_some_and(|v| v[i] == 0) {
                continue;
            }
            let x = values[i];
            if x.is_nan() {
                if omit_nan {
                    continue;
                }
                return Err(i);
            }
            let x = x as f64;
            st.count += 1;
            st.sum += x;
            st.sum_sq += x * x;
        }
        Ok(st)
    });
    per_row
        .into_iter()
        .collect::<std::result::Result<Vec<_>, usize>>()
        .map_err(|i| {
            Error::value(
                "entropy",
                format!("valid token {i} is NaN (nan_policy=\"omit\" skips it)"),
            )
        })
}

/// Sliding-window means `W_t = (1/w) Σ_{j<w} H_{t+start+j}` for every token `t` (ARES,
/// `rollout.md` §8), defined iff `t` and all `w` window positions exist in `t`'s row and are
/// valid.
/// Returns `(W, defined)`, `W = 0` where undefined.
pub fn window_means(
    values: &[f32],
    valid: Option<&[u8]>,
    cu: &[i64],
    window: usize,
    start: usize,
) -> Result<(Vec<f32>, Vec<u8>)> {
    check_tokens(values, valid, cu)?;
    if window == 0 {
        return Err(Error::value(
            "window",
            "expected a window of at least 1 token",
        ));
    }
    let per_row = each_row(cu, values.len(), |lo, hi| {
        let len = hi - lo;
        let ok = |i: usize| valid.is_none_or(|v| v[lo + i] != 0) && !values[lo + i].is_nan();
        // Prefix sums of valid values and of valid counts, in f64.
        let mut sums = vec![0f64; len + 1];
        let mut counts = vec![0usize; len + 1];
        for i in 0..len {
            let take = ok(i);
            sums[i + 1] = sums[i] + if take { values[lo + i] as f64 } else { 0.0 };
            counts[i + 1] = counts[i] + take as usize;
        }
        let mut w = vec![0f32; len];
        let mut defined = vec![0u8; len];
        for t in 0..len {
            let (a, z) = (t + start, t + start + window);
            if z <= len && ok(t) && counts[z] - counts[a] == window {
                w[t] = ((sums[z] - sums[a]) / window as f64) as f32;
                defined[t] = 1;
            }
        }
        (w, defined)
    });
    let mut w = Vec::with_capacity(values.len());
    let mut defined = Vec::with_capacity(values.len());
    for (rw, rd) in per_row {
        w.extend(rw);
        defined.extend(rd);
    }
    Ok((w, defined))
}
