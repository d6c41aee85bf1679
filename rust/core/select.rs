//! Exact order statistics and the top-ρ (forking-token) mask over millions of float32 values
//! (`rollout.md` §3), in two reads of the data and no sort:
//!
//! 1. a histogram of the high 16 bits of the order-preserving `u32` image of the values locates
//!    the bins that hold the wanted order statistics;
//! 2. one pass writes the mask of every value outside those bins (decided by its bin alone) and
//!    collects the few values inside them, whose exact order statistics and marks finish the job.

use rayon::prelude::*;

use crate::core::error::{Error, Result};
use crate::core::pool;

const BINS: usize = 1 << 16;
/// Elements per task of the marking pass.
const CHUNK: usize = 1 << 18;

/// The order-preserving image of a non-NaN float: `a < b ⇔ key(a) < key(b)` (−0 < +0).
#[inline(always)]
pub fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    // Negative: flip every bit; non-negative: set the sign bit (branch-free, vectorisable).
    bits ^ ((((bits as i32) >> 31) as u32) | 0x8000_0000)
}

/// The quantile conventions of `rollout.md` §3.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// TRL: `torch.quantile(..., "linear")` then `>=`.
    Linear,
    Lower,
    Nearest,
    /// Threshold `x_(⌈h⌉)`; selects the `Linear` set.
    Higher,
    /// Threshold `(x_(⌊h⌋) + x_(⌈h⌉)) / 2`; selects the `Linear` set.
    Midpoint,
    /// Exactly `⌈ρN⌉` largest, ties by lower index.
    TopK,
}

impl Method {
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "linear" => Method::Linear,
            "lower" => Method::Lower,
            "nearest" => Method::Nearest,
            "higher" => Method::Higher,
            "midpoint" => Method::Midpoint,
            "topk" => Method::TopK,
            _ => return None,
        })
    }
}

/// What a valid NaN entropy does (`conventions.md`): raise, be skipped, or empty its unit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NanPolicy {
    Raise,
    Omit,
    /// The unit selects nothing and its threshold is NaN.
    Propagate,
}

impl NanPolicy {
    pub fn from_name(name: &str) -> Option<NanPolicy> {
        Some(match name {
            "raise" => NanPolicy::Raise,
            "omit" => NanPolicy::Omit,
            "propagate" => NanPolicy::Propagate,
            _ => return None,
        })
    }
}

/// A unit's selection: the threshold `τ` (NaN for an empty unit and when `TopK` keeps nothing;
/// for `TopK` the smallest kept value),
/// the number kept and the number of valid values.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Selection {
    pub threshold: f64,
    pub kept: usize,
    pub valid: usize,
}

/// The values that take part are the valid (mask non-zero) ones that are not NaN.
#[derive(Copy, Clone)]
struct Entries<'a> {
    values: &'a [f32],
    valid: Option<&'a [u8]>,
}

/// High-16-bit histogram of the taken values and the first valid NaN index. Counts are integers,
/// so the split into tasks cannot change them.
fn high_histogram(e: Entries<'_>) -> (Vec<u64>, Option<usize>) {
    let n = e.values.len();
    let tasks = if n < pool::PARALLEL_MIN_WORK {
        1
    } else {
        2 * pool::num_threads()
    };
    let per = n.div_ceil(tasks).max(1);
    let parts = pool::map_indexed(
        tasks,
        1,
        n,
        || (),
        |_, t| {
            let lo = (t * per).min(n);
            let hi = (lo + per).min(n);
            // Two interleaved histograms halve the store-to-load chains of runs of equal bins.
            let mut hist = vec![0u32; 2 * BINS];
            let mut nan = None;
            let values = &e.values[lo..hi];
            match e.valid {
                None => {
                    for (j, &x) in values.iter().enumerate() {
                        if x.is_nan() {
                            nan = nan.or(Some(lo + j));
                            continue;
                        }
                        hist[((order_key(x) >> 16) as usize) * 2 + (j & 1)] += 1;
                    }
                }
                Some(valid) => {
                    for (j, (&x, &v)) in values.iter().zip(&valid[lo..hi]).enumerate() {
                        if v == 0 {
                            continue;
                        }
                        if x.is_nan() {
                            nan = nan.or(Some(lo + j));
                            continue;
                        }
                        hist[((order_key(x) >> 16) as usize) * 2 + (j & 1)] += 1;
                    }
                }
            }
            (hist, nan)
        },
    );
    let mut total = vec![0u64; BINS];
    let mut first_nan = None;
    for (hist, nan) in parts {
        for (b, t) in total.iter_mut().enumerate() {
            *t += (hist[2 * b] + hist[2 * b + 1]) as u64;
        }
        first_nan = first_nan.or(nan);
    }
    (total, first_nan)
}

/// Bin holding the rank-`r` (0-based) value and the number of values in lower bins.
fn locate(hist: &[u64], r: u64) -> (usize, u64) {
    let mut below = 0u64;
    for (b, &c) in hist.iter().enumerate() {
        if below + c > r {
            return (b, below);
        }
        below += c;
    }
    unreachable!("rank {r} is below the total count")
}

/// Pass 2: `out[i] = 1` for taken values in bins above `hi_bin`, 0 elsewhere; returns that count
/// and, in index order, the `(index, value)` of taken values in bins `lo_bin..=hi_bin`.
fn mark_and_collect(
    e: Entries<'_>,
    lo_bin: u32,
    hi_bin: u32,
    out: &mut [u8],
) -> (usize, Vec<(usize, f32)>) {
    let mark = |c: usize, part: &mut [u8]| {
        let base = c * CHUNK;
        let values = &e.values[base..base + part.len()];
        let valid = e.valid.map(|v| &v[base..base + part.len()]);
        mark_chunk(values, valid, base, lo_bin, hi_bin, part)
    };
    let parts: Vec<(usize, Vec<(usize, f32)>)> = if out.len() < pool::PARALLEL_MIN_WORK {
        out.chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, p)| mark(c, p))
            .collect()
    } else {
        pool::install(|| {
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .map(|(c, p)| mark(c, p))
                .collect()
        })
    };
    let kept = parts.iter().map(|(k, _)| k).sum();
    let undecided = parts.into_iter().flat_map(|(_, u)| u).collect();
    (kept, undecided)
}

/// Block of the marking pass: a branch-free (vectorisable) loop marks the block and counts the
/// values at or above the undecided bins; only a block with undecided values is looked at again.
const BLOCK: usize = 64;

/// `(marks, count ≥ lo_bin)` of one block; `valid` is the block's mask or all ones.
#[inline(always)]
fn mark_block(
    xs: &[f32],
    valid: impl Fn(usize) -> bool,
    lo: u32,
    hi: u32,
    os: &mut [u8],
) -> (u32, u32) {
    let mut kept = 0u32;
    let mut at_least_lo = 0u32;
    for (j, (o, &x)) in os.iter_mut().zip(xs).enumerate() {
        let taken = !x.is_nan() & valid(j);
        let bin = order_key(x) >> 16;
        let keep = taken & (bin > hi);
        *o = keep as u8;
        kept += keep as u32;
        at_least_lo += (taken & (bin >= lo)) as u32;
    }
    (kept, at_least_lo)
}

fn mark_chunk(
    values: &[f32],
    valid: Option<&[u8]>,
    base: usize,
    lo_bin: u32,
    hi_bin: u32,
    out: &mut [u8],
) -> (usize, Vec<(usize, f32)>) {
    let mut kept = 0usize;
    let mut undecided = Vec::new();
    for (b, (xs, os)) in values.chunks(BLOCK).zip(out.chunks_mut(BLOCK)).enumerate() {
        let vs = valid.map(|v| &v[b * BLOCK..b * BLOCK + xs.len()]);
        let (block_kept, at_least_lo) = match vs {
            None => mark_block(xs, |_| true, lo_bin, hi_bin, os),
            Some(vs) => mark_block(xs, |j| vs[j] != 0, lo_bin, hi_bin, os),
        };
        kept += block_kept as usize;
        if at_least_lo != block_kept {
            for (j, &x) in xs.iter().enumerate() {
                let taken = !x.is_nan() && vs.is_none_or(|v| v[j] != 0);
                if taken && (lo_bin..=hi_bin).contains(&(order_key(x) >> 16)) {
                    undecided.push((base + b * BLOCK + j, x));
                }
            }
        }
    }
    (kept, undecided)
}

/// `h = (N−1)(1−ρ)` (or `ρN` for top-k) snapped to the nearest integer when within
/// `2⁻³⁰·max(1, h)` of it, so that a decimal ρ lands on integer positions exactly.
pub fn snapped(h: f64) -> f64 {
    let r = h.round();
    if (h - r).abs() <= 2f64.powi(-30) * h.abs().max(1.0) {
        r
    } else {
        h
    }
}

/// Select the top-ρ values of one unit (`rollout.md` §3): `out[i] = 1` for kept values, 0
/// elsewhere (invalid and NaN values included).
pub fn high_entropy_select(
    values: &[f32],
    valid: Option<&[u8]>,
    rho: f64,
    method: Method,
    nan_policy: NanPolicy,
    out: &mut [u8],
) -> Result<Selection> {
    if !(0.0..=1.0).contains(&rho) {
        return Err(Error::value(
            "rho",
            format!("expected a value in [0, 1], got {rho}"),
        ));
    }
    if valid.is_some_and(|v| v.len() != values.len()) || out.len() != values.len() {
        return Err(Error::value("mask", "expected one entry per entropy value"));
    }
    let e = Entries { values, valid };
    let (hist, first_nan) = high_histogram(e);
    let n: u64 = hist.iter().sum();
    match (first_nan, nan_policy) {
        (Some(i), NanPolicy::Raise) => {
            return Err(Error::value(
                "entropy",
                format!("valid token {i} is NaN (nan_policy=\"omit\" excludes such tokens)"),
            ))
        }
        (Some(_), NanPolicy::Propagate) => {
            out.fill(0);
            return Ok(Selection {
                threshold: f64::NAN,
                kept: 0,
                valid: n as usize,
            });
        }
        _ => {}
    }
    if n == 0 {
        out.fill(0);
        return Ok(Selection {
            threshold: f64::NAN,
            kept: 0,
            valid: 0,
        });
    }
    // The ranks (0-based, ascending) whose values decide the selection.
    let (lo, hi) = match method {
        Method::TopK => {
            let k = snapped(rho * n as f64).ceil() as u64;
            if k == 0 {
                out.fill(0);
                return Ok(Selection {
                    threshold: f64::NAN,
                    kept: 0,
                    valid: n as usize,
                });
            }
            (n - k, n - k)
        }
        Method::Linear | Method::Higher | Method::Midpoint => {
            let h = snapped((n - 1) as f64 * (1.0 - rho));
            (h.floor() as u64, h.ceil() as u64)
        }
        Method::Lower => {
            let h = snapped((n - 1) as f64 * (1.0 - rho)).floor() as u64;
            (h, h)
        }
        Method::Nearest => {
            let h = snapped((n - 1) as f64 * (1.0 - rho)).round_ties_even() as u64;
            (h, h)
        }
    };
    let (lo_bin, below) = locate(&hist, lo);
    let (hi_bin, _) = locate(&hist, hi);
    let (mut kept, mut undecided) = mark_and_collect(e, lo_bin as u32, hi_bin as u32, out);
    let mut sorted: Vec<f32> = undecided.iter().map(|&(_, v)| v).collect();
    sorted.sort_unstable_by(f32::total_cmp);
    let x_lo = sorted[(lo - below) as usize];
    let x_hi = sorted[(hi - below) as usize];
    let threshold = match method {
        Method::Linear => {
            let h = snapped((n - 1) as f64 * (1.0 - rho));
            x_lo as f64 + (h - h.floor()) * (x_hi as f64 - x_lo as f64)
        }
        Method::Midpoint => 0.5 * (x_lo as f64 + x_hi as f64),
        _ => x_hi as f64,
    };
    if method == Method::TopK {
        // Exactly k: every value above x_hi, then ties at x_hi by lower index.
        let k = (n - lo) as usize;
        let above = kept + undecided.iter().filter(|&&(_, v)| v > x_hi).count();
        let mut ties = k - above;
        undecided.retain(|&(_, v)| {
            let keep = v > x_hi || (v == x_hi && ties > 0);
            if v == x_hi && keep {
                ties -= 1;
            }
            keep
        });
    } else {
        // `≥ x_hi` is exactly `≥ τ`: no value lies strictly between sorted neighbours.
        undecided.retain(|&(_, v)| v >= x_hi);
    }
    for &(i, _) in &undecided {
        out[i] = 1;
    }
    kept += undecided.len();
    Ok(Selection {
        threshold,
        kept,
        valid: n as usize,
    })
}
