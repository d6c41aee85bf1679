//! Exact order statistics and the top-ρ (forking-token) mask over millions of float32 values
//! (`rollout.md` §3), with no sort:
//!
//! 1. a key bracket that holds the wanted order statistics: from a strided sample of the values
//!    for units of 2^21 values and more (verified by counting, so a misleading sample only costs
//!    time), else from an exact histogram of the high 16 bits of the order-preserving `u32` keys;
//! 2. one marking pass (`partition.rs`) writes the mask of every value outside the bracket and
//!    collects the few values inside it, whose exact order statistics and marks finish the job.
//!
//! Large units therefore read the data once (plus the sample); small units and a missed bracket
//! read it twice.

use crate::core::error::{Error, Result};
use crate::core::partition::{from_key, order_key, partition_pass, Entries};
use crate::core::pool;

const BINS: usize = 1 << 16;

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

/// Values sampled for the bracket of the one-pass selection.
const SAMPLE: usize = 1 << 18;
/// Units smaller than this use the histogram path directly.
const SAMPLED_MIN: usize = 1 << 21;

/// A key bracket that holds the wanted order statistics with overwhelming probability, from a
/// strided sample of the taken values (Floyd and Rivest, "Expected time bounds for selection",
/// CACM 1975). `None` if the sample is too small. The caller verifies the bracket by counting.
fn sample_bracket(e: Entries<'_>, fraction: f64) -> Option<(u32, u32)> {
    let n = e.values.len();
    let stride = (n / SAMPLE).max(1);
    // Gathered in parallel: each read is a cache miss.
    let tasks = 2 * pool::num_threads();
    let per = n.div_ceil(tasks);
    let parts = pool::map_indexed(
        tasks,
        1,
        n,
        || (),
        |_, t| {
            let lo = (t * per).div_ceil(stride) * stride;
            let hi = ((t + 1) * per).min(n);
            (lo..hi)
                .step_by(stride)
                .filter(|&i| e.valid.is_none_or(|v| v[i] != 0) && !e.values[i].is_nan())
                .map(|i| order_key(e.values[i]))
                .collect::<Vec<u32>>()
        },
    );
    let mut keys: Vec<u32> = parts.concat();
    let m = keys.len();
    if m < 1024 {
        return None;
    }
    // 4.5 binomial standard deviations either side of the sample position, plus slack: a miss
    // (probability below 1e-5) only costs the exact histogram path.
    let spread = 4.5 * (m as f64 * fraction * (1.0 - fraction)).sqrt() + 16.0;
    let last = (m - 1) as f64;
    let r_lo = (fraction * last - spread).floor();
    let r_hi = (fraction * last + spread).ceil();
    let hi_key = if r_hi >= last {
        u32::MAX
    } else {
        *keys.select_nth_unstable(r_hi as usize).1
    };
    let lo_key = if r_lo <= 0.0 {
        0
    } else {
        *keys.select_nth_unstable(r_lo as usize).1
    };
    Some((lo_key, hi_key))
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

/// The ranks (0-based, ascending) whose values decide the selection among `n` values; `None`
/// when nothing is selected (an empty unit, or `TopK` with `⌈ρN⌉ = 0`).
fn ranks(method: Method, rho: f64, n: u64) -> Option<(u64, u64)> {
    if n == 0 {
        return None;
    }
    let h = || snapped((n - 1) as f64 * (1.0 - rho));
    Some(match method {
        Method::TopK => {
            let k = snapped(rho * n as f64).ceil() as u64;
            if k == 0 {
                return None;
            }
            (n - k, n - k)
        }
        Method::Linear | Method::Higher | Method::Midpoint => {
            (h().floor() as u64, h().ceil() as u64)
        }
        Method::Lower => (h().floor() as u64, h().floor() as u64),
        Method::Nearest => (h().round_ties_even() as u64, h().round_ties_even() as u64),
    })
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
    let mut pass = None;
    if values.len() >= SAMPLED_MIN {
        if let Some((lo_key, hi_key)) = sample_bracket(e, 1.0 - rho) {
            let p = partition_pass(e, lo_key, hi_key, out);
            let n = (p.above + p.below + p.inside.len()) as u64;
            // The bracket is good when it holds both ranks (verified by counting).
            let good = match ranks(method, rho, n) {
                Some((lo, hi)) => {
                    p.below as u64 <= lo && hi < p.below as u64 + p.inside.len() as u64
                }
                None => true,
            };
            // A NaN that raises or empties the unit decides the result whatever the bracket.
            if good || (p.first_nan.is_some() && nan_policy != NanPolicy::Omit) {
                pass = Some((p, n));
            }
        }
    }
    let (pass, n) = match pass {
        Some(found) => found,
        None => {
            // Exact histogram of the high 16 bits, then the bracket of the bins holding the ranks.
            let (hist, first_nan) = high_histogram(e);
            let n: u64 = hist.iter().sum();
            let nan_decides = first_nan.is_some() && nan_policy != NanPolicy::Omit;
            let (lo_key, hi_key) = match (nan_decides, ranks(method, rho, n)) {
                (false, Some((lo, hi))) => (
                    (locate(&hist, lo).0 as u32) << 16,
                    ((locate(&hist, hi).0 as u32) << 16) | 0xFFFF,
                ),
                _ => (u32::MAX, u32::MAX),
            };
            let mut p = partition_pass(e, lo_key, hi_key, out);
            p.first_nan = p.first_nan.or(first_nan);
            (p, n)
        }
    };
    match (pass.first_nan, nan_policy) {
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
    let Some((lo, hi)) = ranks(method, rho, n) else {
        out.fill(0);
        return Ok(Selection {
            threshold: f64::NAN,
            kept: 0,
            valid: n as usize,
        });
    };
    let below = pass.below as u64;
    let mut kept = pass.above;
    let mut undecided = pass.inside;
    // The two order statistics among the bracketed values, by selection on their keys (O(n), no
    // sort).
    let mut keys: Vec<u32> = undecided.iter().map(|&(_, v)| order_key(v)).collect();
    let (r_lo, r_hi) = ((lo - below) as usize, (hi - below) as usize);
    let k_hi = *keys.select_nth_unstable(r_hi).1;
    let k_lo = if r_lo == r_hi {
        k_hi
    } else {
        *keys[..r_hi].select_nth_unstable(r_lo).1
    };
    let (x_lo, x_hi) = (from_key(k_lo), from_key(k_hi));
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
