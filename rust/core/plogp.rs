//! Entropy `H = −Σ_j p_j ln(p_j + eps)` of rows of probabilities (`more.md` §1: attention maps
//! given as softmax outputs), summed in float64 with `0 · ln 0 = 0`; the terms are evaluated in
//! f32 (a branch-free logarithm) for f32, f16 and bf16 input and in f64 for f64 input.

use crate::core::error::{Error, Result};
use crate::core::pool;
use crate::core::token::{rows_per_task, Element};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    Nan,
    /// A negative or infinite probability.
    Invalid,
}

/// Natural log of a positive finite f32 (subnormals included), branch-free so that a loop of
/// it vectorises: `x = 2^e · m` with `m ∈ [√½, √2)`, then Cephes' `logf` polynomial for
/// `ln(m)` (about 1 ulp).
#[inline(always)]
fn ln_f32(x: f32) -> f32 {
    let small = x < f32::MIN_POSITIVE;
    let x = if small { x * 8_388_608.0 } else { x }; // 2^23
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32 - if small { 23.0 } else { 0.0 };
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let high = m > std::f32::consts::SQRT_2;
    m = if high { m * 0.5 } else { m };
    e += if high { 1.0 } else { 0.0 };
    let f = m - 1.0;
    let z = f * f;
    let mut y = 7.037_683_6e-2_f32;
    for c in [
        -1.151_461e-1_f32,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_5e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        y = y * f + c;
    }
    y = y * f * z;
    y += e * -2.121_944_4e-4;
    y -= 0.5 * z;
    f + y + e * 0.693_359_4
}

/// `Σ p ln(p + eps)` of a row already checked (no NaN, no negative or infinite entry).
fn row_sum<E: Element>(row: &[E], eps: f64) -> f64 {
    if !E::SCALES_IN_F32 {
        return row
            .iter()
            .map(|&x| x.widen())
            .filter(|&p| p > 0.0)
            .map(|p| p * (p + eps).ln())
            .sum();
    }
    // 32-bit and narrower kinds: terms in f32 (relative error ~1e-7) into 16 f32 lanes over
    // blocks of 256 values (16 terms per lane), each block's lanes then added in f64.
    let eps32 = eps as f32;
    let mut total = 0.0f64;
    let mut blocks = row.chunks_exact(256);
    for block in &mut blocks {
        let mut acc = [0.0f32; 16];
        for chunk in block.chunks_exact(16) {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                let p = x.widen() as f32;
                let q = if p > 0.0 { p + eps32 } else { 1.0 };
                *a += p * ln_f32(q);
            }
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>();
    }
    let mut chunks = blocks.remainder().chunks_exact(16);
    let mut acc = [0.0f64; 16];
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            let p = x.widen() as f32;
            let q = if p > 0.0 { p + eps32 } else { 1.0 };
            *a += (p * ln_f32(q)) as f64;
        }
    }
    total += acc.iter().sum::<f64>();
    for &x in chunks.remainder() {
        let p = x.widen() as f32;
        if p > 0.0 {
            total += (p * ln_f32(p + eps32)) as f64;
        }
    }
    total
}

fn row_entropy<E: Element>(row: &[E], eps: f64) -> (f64, Status) {
    let mut nan = false;
    let mut invalid = false;
    for &x in row {
        let p = x.widen();
        nan |= p.is_nan();
        invalid |= p < 0.0 || p == f64::INFINITY;
    }
    if invalid {
        (f64::NAN, Status::Invalid)
    } else if nan {
        (f64::NAN, Status::Nan)
    } else {
        (-row_sum(row, eps), Status::Ok)
    }
}

/// `−Σ_j p_j ln(p_j + eps)` for each row of `probs (N, cols)`; `eps ≥ 0`. NaN rows give NaN with
/// `propagate_nan`, else an error; a negative or infinite entry is an error. Errors name `attn`.
pub fn prob_entropy<E: Element>(
    probs: &[E],
    cols: usize,
    eps: f64,
    propagate_nan: bool,
) -> Result<Vec<f32>> {
    if cols == 0 {
        return Err(Error::value("attn", "the key (last) dimension is empty"));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::value(
            "eps",
            format!("expected a finite value >= 0, got {eps}"),
        ));
    }
    if !probs.len().is_multiple_of(cols) {
        return Err(Error::value(
            "attn",
            format!("{} values do not form rows of {cols}", probs.len()),
        ));
    }
    let rows = probs.len() / cols;
    let results = pool::map_indexed(
        rows,
        rows_per_task(cols),
        probs.len(),
        || (),
        |_, r| row_entropy(&probs[r * cols..(r + 1) * cols], eps),
    );
    let mut out = Vec::with_capacity(rows);
    for (r, &(value, status)) in results.iter().enumerate() {
        match status {
            Status::Ok => out.push(value as f32),
            Status::Nan if propagate_nan => out.push(f32::NAN),
            Status::Nan => {
                return Err(Error::value(
                    "attn",
                    format!(
                        "row {r} contains NaN (nan_policy=\"propagate\" gives NaN for such rows \
                         instead)"
                    ),
                ))
            }
            Status::Invalid => {
                return Err(Error::value(
                    "attn",
                    format!("row {r}: probabilities must be finite and >= 0"),
                ))
            }
        }
    }
    Ok(out)
}
