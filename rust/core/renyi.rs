//! Rényi entropy of order α ≠ 1 per row (`token.md` §6), summed in float64.

use crate::core::error::{Error, Result};
use crate::core::pool;
use crate::core::token::{
    masked_or_overflow, row_error, rows_per_task, Element, RowStatus, Temperature,
};

/// Orders closer than this to 1 use the expansion `H − (α−1) Var_p(z') / 2`.
pub const NEAR_ONE: f64 = 1e-4;

fn renyi_row<E: Element>(row: &[E], t: f64, alpha: f64) -> (f64, RowStatus) {
    let mut m = f64::NEG_INFINITY;
    let mut nan = false;
    for &z in row {
        let x = z.scaled(t);
        if x == f64::INFINITY {
            return (
                f64::NAN,
                if z.widen() == f64::INFINITY {
                    RowStatus::PosInf
                } else {
                    RowStatus::Overflow
                },
            );
        }
        nan |= x.is_nan();
        m = m.max(x);
    }
    if nan {
        return (f64::NAN, RowStatus::Nan);
    }
    if m == f64::NEG_INFINITY {
        return (f64::NAN, masked_or_overflow(row));
    }
    // Sums relative to the maximum; the m terms of the closed form cancel exactly.
    let (mut s, mut s_alpha, mut w, mut v, mut finite) = (0.0, 0.0, 0.0, 0.0, 0usize);
    for &z in row {
        let x = z.scaled(t) - m;
        if x == f64::NEG_INFINITY {
            continue;
        }
        finite += 1;
        let e = x.exp();
        s += e;
        w += x * e;
        v += x * x * e;
        if alpha.is_finite() {
            s_alpha += (alpha * x).exp();
        }
    }
    let value = if alpha == 0.0 {
        (finite as f64).ln()
    } else if alpha == f64::INFINITY {
        s.ln()
    } else if (alpha - 1.0).abs() < NEAR_ONE {
        let mean = w / s;
        let shannon = s.ln() - mean;
        shannon - (alpha - 1.0) * (v / s - mean * mean) / 2.0
    } else {
        // (log s_α − α log s) / (1 − α), arranged so that a huge α cannot overflow.
        alpha / (alpha - 1.0) * s.ln() - s_alpha.ln() / (alpha - 1.0)
    };
    (value, RowStatus::Ok)
}

/// `H_α` of each row of `logits (N, V)`; `alpha` in `[0, ∞]`, `alpha != 1` (Shannon is
/// `token_stats`). Values are clamped at 0 from below (rounding only).
pub fn renyi_entropy<E: Element>(
    logits: &[E],
    vocab: usize,
    alpha: f64,
    temperature: Temperature<'_>,
    propagate_nan: bool,
) -> Result<Vec<f32>> {
    if vocab == 0 {
        return Err(Error::value(
            "logits",
            "the vocabulary (last) dimension is empty",
        ));
    }
    if alpha.is_nan() || alpha < 0.0 || alpha == 1.0 {
        return Err(Error::value(
            "alpha",
            format!("expected a value in [0, inf] other than 1, got {alpha}"),
        ));
    }
    if !logits.len().is_multiple_of(vocab) {
        return Err(Error::value(
            "logits",
            format!("{} values do not form rows of {vocab}", logits.len()),
        ));
    }
    let rows = logits.len() / vocab;
    temperature.validate(rows, E::SCALES_IN_F32)?;
    let results = pool::map_indexed(
        rows,
        rows_per_task(vocab),
        logits.len(),
        || (),
        |_, r| {
            let t = match temperature {
                Temperature::Scalar(t) => t,
                Temperature::PerRow(ts) => ts[r],
            };
            renyi_row(&logits[r * vocab..(r + 1) * vocab], t, alpha)
        },
    );
    let mut out = Vec::with_capacity(rows);
    for (r, &(value, status)) in results.iter().enumerate() {
        match status {
            RowStatus::Ok => out.push(value.max(0.0) as f32),
            RowStatus::Nan if propagate_nan => out.push(f32::NAN),
            _ => return Err(row_error(r, status)),
        }
    }
    Ok(out)
}
