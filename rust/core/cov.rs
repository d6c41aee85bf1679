//! Centred covariance terms of a unit of tokens and the top-k selection of KL-Cov
//! (`rollout.md` §5), in f64: `c_t = (A_t − Ā)(ℓ_t − ℓ̄)` over the valid tokens.

use crate::core::error::{Error, Result};
use crate::core::pool;

const CHUNK: usize = 1 << 16;

/// Mean of the valid values as `x₀ + Σ(x − x₀)/n` (`x₀` the first valid value), so that a
/// constant unit has a mean equal to its value exactly and covariances of exactly 0. Chunk sums
/// are combined in chunk order: the result does not depend on the thread count.
fn shifted_mean(x: &[f64], valid: Option<&[u8]>) -> Option<f64> {
    let take = |i: usize| valid.is_none_or(|v| v[i] != 0);
    let first = (0..x.len()).find(|&i| take(i))?;
    let x0 = x[first];
    let parts = pool::map_indexed(
        x.len().div_ceil(CHUNK),
        1,
        x.len(),
        || (),
        |_, c| {
            let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(x.len()));
            let (mut sum, mut n) = (0f64, 0u64);
            for i in (lo..hi).filter(|&i| take(i)) {
                sum += x[i] - x0;
                n += 1;
            }
            (sum, n)
        },
    );
    let (sum, n) = parts
        .iter()
        .fold((0f64, 0u64), |(s, n), &(ps, pn)| (s + ps, n + pn));
    Some(x0 + sum / n as f64)
}

/// `c_t` for every token of one unit (0 where invalid). NaN advantages or log-probs at valid
/// tokens are errors naming the argument.
pub fn centered_cov(a: &[f64], l: &[f64], valid: Option<&[u8]>) -> Result<Vec<f64>> {
    if a.len() != l.len() || valid.is_some_and(|v| v.len() != a.len()) {
        return Err(Error::value(
            "logprob",
            "expected the shape of advantages (and of mask)",
        ));
    }
    let take = |i: usize| valid.is_none_or(|v| v[i] != 0);
    for (name, x) in [("advantages", a), ("logprob", l)] {
        if let Some(i) = (0..x.len()).find(|&i| take(i) && !x[i].is_finite()) {
            return Err(Error::value(name, format!("valid token {i} is {}", x[i])));
        }
    }
    let (Some(a_bar), Some(l_bar)) = (shifted_mean(a, valid), shifted_mean(l, valid)) else {
        return Ok(vec![0.0; a.len()]);
    };
    let parts = pool::map_indexed(
        a.len().div_ceil(CHUNK),
        1,
        a.len(),
        || (),
        |_, c| {
            let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(a.len()));
            (lo..hi)
                .map(|i| {
                    if take(i) {
                        (a[i] - a_bar) * (l[i] - l_bar)
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<f64>>()
        },
    );
    Ok(parts.concat())
}

/// Indices of the `k` valid values that are largest, ties by lower index, in increasing index
/// order (O(N) selection, no sort of the whole unit).
pub fn top_k(values: &[f64], valid: Option<&[u8]>, k: usize) -> Vec<usize> {
    let mut entries: Vec<(f64, usize)> = (0..values.len())
        .filter(|&i| valid.is_none_or(|v| v[i] != 0))
        // + 0.0 turns −0 into +0: the two zeros tie (then the lower index wins).
        .map(|i| (values[i] + 0.0, i))
        .collect();
    let k = k.min(entries.len());
    if k == 0 {
        return Vec::new();
    }
    // Larger value first, then lower index: a total order, so the first k are unique.
    let order = |x: &(f64, usize), y: &(f64, usize)| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1));
    if k < entries.len() {
        entries.select_nth_unstable_by(k - 1, order);
    }
    let mut chosen: Vec<usize> = entries[..k].iter().map(|&(_, i)| i).collect();
    chosen.sort_unstable();
    chosen
}
