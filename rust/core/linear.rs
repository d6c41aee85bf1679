//! Log-prob and entropy from hidden states and the LM head without the `(N, V)` logits
//! (`token.md` §8.2): row blocks × vocabulary tiles, each tile merged into the row state; the
//! label logit is taken from the same tile value. A CPU oracle and convenience.

use crate::core::error::{Error, Result};
use crate::core::pool;
use crate::core::state::State;
use crate::core::tile::TILE;
use crate::core::token::TokenOutputs;

/// Rows that share one pass over the weight tiles.
const ROW_BLOCK: usize = 16;

/// The accumulation type of the head: f32 for f32 inputs, f64 for f64 inputs.
pub trait HeadFloat: Copy + Send + Sync + Default + std::ops::Add<Output = Self> + 'static {
    fn mul_add_acc(acc: Self, a: Self, b: Self) -> Self;
    fn to_f64(self) -> f64;
}

impl HeadFloat for f32 {
    #[inline(always)]
    fn mul_add_acc(acc: f32, a: f32, b: f32) -> f32 {
        acc + a * b
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl HeadFloat for f64 {
    #[inline(always)]
    fn mul_add_acc(acc: f64, a: f64, b: f64) -> f64 {
        acc + a * b
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// `Σ a_i b_i` with eight independent partial sums (vectorisable, fixed order).
#[inline(always)]
fn dot<F: HeadFloat>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::default(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = F::mul_add_acc(acc[l], x[l], y[l]);
        }
    }
    let mut tail = F::default();
    for (&x, &y) in ra.iter().zip(rb) {
        tail = F::mul_add_acc(tail, x, y);
    }
    let pairs = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// Shapes and options of one head evaluation.
pub struct HeadArgs<'a> {
    pub rows: usize,
    pub dim: usize,
    pub vocab: usize,
    pub labels: &'a [i64],
    pub temperature: f64,
    pub ignore_index: Option<i64>,
    pub collision: bool,
}

/// `(logprob, entropy[, collision])` of `softmax((hidden @ weightᵀ + bias) / T)`.
pub fn linear_logprob_entropy<F: HeadFloat>(
    hidden: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    args: &HeadArgs<'_>,
) -> Result<TokenOutputs> {
    let (rows, dim, vocab) = (args.rows, args.dim, args.vocab);
    if vocab == 0 {
        return Err(Error::value("weight", "the vocabulary is empty (V = 0)"));
    }
    if hidden.len() != rows * dim || weight.len() != vocab * dim {
        return Err(Error::value(
            "weight",
            "shapes of hidden (N, D) and weight (V, D) disagree",
        ));
    }
    if bias.is_some_and(|b| b.len() != vocab) {
        return Err(Error::value("bias", format!("expected {vocab} values")));
    }
    if args.labels.len() != rows {
        return Err(Error::value("labels", format!("expected {rows} labels")));
    }
    if let Some(i) = args
        .labels
        .iter()
        .position(|&y| Some(y) != args.ignore_index && !(0..vocab as i64).contains(&y))
    {
        return Err(Error::value(
            "labels",
            format!(
                "value {} at index {i} is outside [0, {vocab})",
                args.labels[i]
            ),
        ));
    }
    let t = args.temperature;
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::value(
            "temperature",
            format!("expected a finite value > 0, got {t}"),
        ));
    }
    let blocks = pool::map_indexed(
        rows.div_ceil(ROW_BLOCK),
        1,
        rows * vocab * dim.max(1),
        || (),
        |_, b| {
            let lo = b * ROW_BLOCK;
            let hi = (lo + ROW_BLOCK).min(rows);
            head_block(
                &hidden[lo * dim..hi * dim],
                weight,
                bias,
                &args.labels[lo..hi],
                args,
            )
        },
    );
    let results: Vec<(State, f64, bool)> = blocks.into_iter().flatten().collect();
    if let Some(r) = results
        .iter()
        .position(|(st, _, bad)| *bad || st.is_empty())
    {
        return Err(Error::value(
            "hidden",
            format!("row {r} gives a NaN or +inf logit, or no finite one (check hidden, weight and bias)"),
        ));
    }
    let logprob = results
        .iter()
        .zip(args.labels)
        .map(|((st, zy, _), &y)| {
            if Some(y) == args.ignore_index {
                0.0
            } else {
                st.logprob(*zy) as f32
            }
        })
        .collect();
    Ok(TokenOutputs {
        logprob: Some(logprob),
        entropy: results
            .iter()
            .map(|(st, _, _)| st.entropy() as f32)
            .collect(),
        collision: args.collision.then(|| {
            results
                .iter()
                .map(|(st, _, _)| st.collision() as f32)
                .collect()
        }),
        lse: None,
    })
}

/// One block of rows over every vocabulary tile: `(state, z'_y, bad)` per row.
fn head_block<F: HeadFloat>(
    hidden: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    labels: &[i64],
    args: &HeadArgs<'_>,
) -> Vec<(State, f64, bool)> {
    let dim = args.dim;
    let n = labels.len();
    let mut out = vec![(State::EMPTY, f64::NEG_INFINITY, false); n];
    let mut tile = vec![0f64; n * TILE];
    for lo in (0..args.vocab).step_by(TILE) {
        let hi = (lo + TILE).min(args.vocab);
        let width = hi - lo;
        for j in lo..hi {
            let w = &weight[j * dim..(j + 1) * dim];
            let b = bias.map_or(F::default(), |b| b[j]);
            for r in 0..n {
                let z = (dot(&hidden[r * dim..(r + 1) * dim], w) + b).to_f64();
                tile[r * TILE + (j - lo)] = z / args.temperature;
            }
        }
        for r in 0..n {
            let values = &tile[r * TILE..r * TILE + width];
            // −∞ logits (from a −∞ bias) are masked entries; +∞ and NaN are errors.
            if values.iter().any(|v| v.is_nan() || *v == f64::INFINITY) {
                out[r].2 = true;
                continue;
            }
            let m = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut part = State {
                m,
                s: 0.0,
                w: 0.0,
                q: 0.0,
            };
            if m > f64::NEG_INFINITY {
                for &v in values.iter().filter(|v| **v > f64::NEG_INFINITY) {
                    let e = (v - m).exp();
                    part.s += e;
                    part.w += (v - m) * e;
                    part.q += e * e;
                }
            } else {
                part = State::EMPTY;
            }
            out[r].0 = out[r].0.merge(part);
            let y = labels[r];
            if (lo as i64..hi as i64).contains(&y) {
                out[r].1 = values[y as usize - lo];
            }
        }
    }
    out
}
