//! Entropy bounds and estimates from the top-k log-probs of each row (`token.md` §7).

use crate::core::error::{Error, Result};
use crate::core::pool;

/// The top-k conventions: the bounds of §7 and the ones found in the wild.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TopkMode {
    Lower,
    Estimate,
    Upper,
    /// `H_k`, the entropy of the listed entries only (ARES's percentile routine).
    Truncated,
    /// `H_k + h(τ)`: the tail as one pseudo-token (ARES's rollout entropy).
    Bucket,
    /// The entropy of `p_i / Σ p`.
    Renormalized,
}

impl TopkMode {
    pub fn from_name(name: &str) -> Option<TopkMode> {
        Some(match name {
            "lower" => TopkMode::Lower,
            "estimate" => TopkMode::Estimate,
            "upper" => TopkMode::Upper,
            "truncated" => TopkMode::Truncated,
            "bucket" => TopkMode::Bucket,
            "renormalized" => TopkMode::Renormalized,
            _ => return None,
        })
    }

    fn needs_vocab(self) -> bool {
        matches!(self, TopkMode::Lower | TopkMode::Estimate | TopkMode::Upper)
    }
}

/// `h(x) = −x log x`, `h(0) = 0`.
fn h(x: f64) -> f64 {
    if x > 0.0 {
        -x * x.ln()
    } else {
        0.0
    }
}

fn topk_row(row: &[f64], vocab: Option<usize>, mode: TopkMode) -> std::result::Result<f64, String> {
    let mut total = 0.0;
    let mut h_k = 0.0;
    let mut cap = f64::INFINITY;
    let mut listed = 0usize;
    for &lp in row {
        if lp.is_nan() || lp == f64::INFINITY {
            return Err(format!("contains {lp}"));
        }
        if lp == f64::NEG_INFINITY {
            continue;
        }
        let p = lp.exp();
        listed += 1;
        total += p;
        h_k += h(p);
        cap = cap.min(p);
    }
    if listed == 0 {
        return Err("has no finite entry (every entry is absent)".into());
    }
    if total > 1.0 + 1e-3 {
        return Err(format!(
            "probabilities sum to {total:.6} > 1 + 1e-3: not the log-probs of one distribution"
        ));
    }
    let tail = (1.0 - total).max(0.0);
    Ok(match mode {
        TopkMode::Truncated => h_k,
        TopkMode::Bucket => h_k + h(tail),
        TopkMode::Renormalized => row
            .iter()
            .filter(|lp| lp.is_finite())
            .map(|&lp| h(lp.exp() / total))
            .sum(),
        TopkMode::Lower | TopkMode::Estimate | TopkMode::Upper => {
            let vocab = vocab.expect("checked by the caller");
            if listed >= vocab || tail == 0.0 {
                return Ok(h_k);
            }
            let rest = (vocab - listed) as f64;
            let upper = h_k + tail * (rest / tail).ln();
            let n = (tail / cap).floor();
            let lower = if n + 1.0 > rest {
                upper
            } else {
                h_k + n * h(cap) + h(tail - n * cap)
            };
            match mode {
                TopkMode::Lower => lower,
                TopkMode::Upper => upper,
                _ => 0.5 * (lower + upper),
            }
        }
    })
}

/// One convention per row of `topk_logprobs (N, k)`; `vocab` is `None` when unknown.
pub fn topk_entropy(
    topk_logprobs: &[f64],
    k: usize,
    vocab: Option<usize>,
    mode: TopkMode,
) -> Result<Vec<f32>> {
    if k == 0 {
        return Err(Error::value(
            "topk_logprobs",
            "expected k >= 1 entries per row",
        ));
    }
    match vocab {
        None if mode.needs_vocab() => {
            return Err(Error::value(
                "vocab_size",
                format!("required for mode {mode:?}"),
            ))
        }
        Some(v) if v < k => {
            return Err(Error::value(
                "vocab_size",
                format!("expected >= k = {k}, got {v}"),
            ))
        }
        _ => {}
    }
    if !topk_logprobs.len().is_multiple_of(k) {
        return Err(Error::value(
            "topk_logprobs",
            format!("{} values do not form rows of {k}", topk_logprobs.len()),
        ));
    }
    let rows = topk_logprobs.len() / k;
    let results = pool::map_indexed(
        rows,
        4096,
        topk_logprobs.len(),
        || (),
        |_, r| topk_row(&topk_logprobs[r * k..(r + 1) * k], vocab, mode),
    );
    results
        .into_iter()
        .enumerate()
        .map(|(r, res)| {
            res.map(|v| v as f32)
                .map_err(|msg| Error::value("topk_logprobs", format!("row {r} {msg}")))
        })
        .collect()
}
