//! Per-token entropy, log-prob and collision probability over a batch of logits rows
//! (`token.md` §2–4): rows split across entcore's pool in fixed chunks, so results are bitwise
//! identical for any thread count.

use crate::core::dtype::{Bf16Bits, F16Bits, Source};
use crate::core::error::{Error, Result};
use crate::core::pool;
use crate::core::simd::{self, Level, Scalar};
#[cfg(target_arch = "x86_64")]
use crate::core::simd::{Avx2, Avx512};
use crate::core::state::State;
use crate::core::tile::{reduce_row, reduce_row_f64, TileBuf, TileResult, TILE};

/// A logits element type the kernels read directly.
pub trait Element: Copy + Send + Sync + 'static {
    /// Whether rows are scaled in f32 (`z' = f32(z) / f32(T)`), as for every kind but f64.
    const SCALES_IN_F32: bool;
    /// Exact widening to f64.
    fn widen(self) -> f64;
    /// `z' = z / t` exactly as the kernel scales (f32 division for 32-bit and narrower kinds).
    fn scaled(self, t: f64) -> f64;
    /// Reduce one row with the given kernel family.
    fn reduce(row: &[Self], t: f64, collision: bool, level: Level, buf: &mut TileBuf)
        -> TileResult;
}

macro_rules! simd_element {
    ($ty:ty) => {
        impl Element for $ty {
            const SCALES_IN_F32: bool = true;
            #[inline]
            fn widen(self) -> f64 {
                self.to_f32() as f64
            }
            #[inline]
            fn scaled(self, t: f64) -> f64 {
                let x = self.to_f32();
                (if t == 1.0 { x } else { x / t as f32 }) as f64
            }
            fn reduce(
                row: &[Self],
                t: f64,
                collision: bool,
                level: Level,
                buf: &mut TileBuf,
            ) -> TileResult {
                dispatch_row::<$ty>(row, t as f32, collision, level, buf)
            }
        }
    };
}

simd_element!(f32);
simd_element!(Bf16Bits);
simd_element!(F16Bits);

impl Element for f64 {
    const SCALES_IN_F32: bool = false;
    #[inline]
    fn widen(self) -> f64 {
        self
    }
    #[inline]
    fn scaled(self, t: f64) -> f64 {
        self / t
    }
    fn reduce(row: &[f64], t: f64, collision: bool, _: Level, _: &mut TileBuf) -> TileResult {
        reduce_row_f64(row, t, collision)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512<E: Source, const Q: bool>(row: &[E], t: f32, buf: &mut TileBuf) -> TileResult {
    reduce_row::<Avx512, E, Q>(row, t, buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_avx2<E: Source, const Q: bool>(row: &[E], t: f32, buf: &mut TileBuf) -> TileResult {
    reduce_row::<Avx2, E, Q>(row, t, buf)
}

fn row_scalar<E: Source, const Q: bool>(row: &[E], t: f32, buf: &mut TileBuf) -> TileResult {
    // SAFETY: the scalar lanes run on every CPU.
    unsafe { reduce_row::<Scalar, E, Q>(row, t, buf) }
}

fn dispatch_row<E: Source>(
    row: &[E],
    t: f32,
    collision: bool,
    level: Level,
    buf: &mut TileBuf,
) -> TileResult {
    // SAFETY: `level` comes from `simd::level()`, which only returns levels the CPU supports.
    unsafe {
        match (level, collision) {
            #[cfg(target_arch = "x86_64")]
            (Level::Avx512, false) => row_avx512::<E, false>(row, t, buf),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx512, true) => row_avx512::<E, true>(row, t, buf),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx2, false) => row_avx2::<E, false>(row, t, buf),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx2, true) => row_avx2::<E, true>(row, t, buf),
            (_, false) => row_scalar::<E, false>(row, t, buf),
            (_, true) => row_scalar::<E, true>(row, t, buf),
        }
    }
}

/// Temperature: one value, or one per row. Every value finite and > 0.
#[derive(Copy, Clone, Debug)]
pub enum Temperature<'a> {
    Scalar(f64),
    PerRow(&'a [f64]),
}

impl Temperature<'_> {
    fn of_row(&self, row: usize) -> f64 {
        match self {
            Temperature::Scalar(t) => *t,
            Temperature::PerRow(ts) => ts[row],
        }
    }

    /// Checks the values and, for per-row temperatures, the length. With `in_f32` the values must
    /// also be normal float32 numbers, since the kernel divides in float32.
    pub fn validate(&self, rows: usize, in_f32: bool) -> Result<()> {
        let ok = |t: f64| t.is_finite() && t > 0.0 && (!in_f32 || ((t as f32).is_normal()));
        match self {
            Temperature::Scalar(t) if !ok(*t) => Err(Error::value(
                "temperature",
                format!("expected a finite value > 0, got {t}"),
            )),
            Temperature::PerRow(ts) if ts.len() != rows => Err(Error::value(
                "temperature",
                format!("expected {rows} per-row values, got {}", ts.len()),
            )),
            Temperature::PerRow(ts) => match ts.iter().position(|&t| !ok(t)) {
                Some(i) => Err(Error::value(
                    "temperature",
                    format!("every value must be finite and > 0, row {i} has {}", ts[i]),
                )),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// `K` labels per row, row-major `(N, K)`.
#[derive(Copy, Clone, Debug)]
pub struct Labels<'a> {
    pub values: &'a [i64],
    pub per_row: usize,
}

/// What to compute over `logits (N, V)`.
#[derive(Copy, Clone, Debug)]
pub struct TokenArgs<'a> {
    pub vocab: usize,
    pub temperature: Temperature<'a>,
    pub labels: Option<Labels<'a>>,
    pub ignore_index: Option<i64>,
    pub collision: bool,
    pub lse: bool,
    pub propagate_nan: bool,
}

/// Per-row results, float32; `logprob` is `(N, K)` row-major.
#[derive(Debug, Default)]
pub struct TokenOutputs {
    pub logprob: Option<Vec<f32>>,
    pub entropy: Vec<f32>,
    pub collision: Option<Vec<f32>>,
    pub lse: Option<Vec<f32>>,
}

/// Why a row could not be reduced.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RowStatus {
    Ok,
    Nan,
    PosInf,
    /// A finite logit divided by the temperature overflowed to +inf.
    Overflow,
    AllMasked,
}

/// Classify a row whose fast pass saw something that is not a finite or `−∞` logit.
pub fn classify_bad_row<E: Element>(row: &[E], t: f64) -> RowStatus {
    let mut nan = false;
    for &z in row {
        let x = z.scaled(t);
        if x == f64::INFINITY {
            return if z.widen() == f64::INFINITY {
                RowStatus::PosInf
            } else {
                RowStatus::Overflow
            };
        }
        nan |= x.is_nan();
    }
    if nan {
        RowStatus::Nan
    } else {
        RowStatus::Ok
    }
}

/// A row without a finite scaled entry: masked (every logit `−∞`), or finite logits divided by
/// a tiny temperature that overflowed to `−∞`.
pub fn masked_or_overflow<E: Element>(row: &[E]) -> RowStatus {
    if row.iter().any(|z| z.widen().is_finite()) {
        RowStatus::Overflow
    } else {
        RowStatus::AllMasked
    }
}

/// The error for the first failing row, as `conventions.md` words it.
pub fn row_error(row: usize, status: RowStatus) -> Error {
    match status {
        RowStatus::Nan => Error::value(
            "logits",
            format!(
                "row {row} contains NaN (nan_policy=\"propagate\" gives NaN for such rows instead)"
            ),
        ),
        RowStatus::PosInf => Error::value(
            "logits",
            format!("row {row} contains +inf; only -inf may mask a vocabulary entry"),
        ),
        RowStatus::Overflow => Error::value(
            "temperature",
            format!(
                "logits / temperature overflows to +inf in row {row}; the temperature is too small"
            ),
        ),
        RowStatus::AllMasked => Error::value(
            "logits",
            format!("row {row} has no finite entry (every logit is -inf)"),
        ),
        RowStatus::Ok => unreachable!("row_error is only called for failing rows"),
    }
}

/// Rows per parallel task: about 64 Ki elements, whole rows (results do not depend on it).
pub fn rows_per_task(vocab: usize) -> usize {
    (65_536 / vocab.max(1)).max(1)
}

struct RowSummary {
    state: State,
    status: RowStatus,
}

fn check_labels(labels: &Labels<'_>, rows: usize, vocab: usize, ignore: Option<i64>) -> Result<()> {
    if labels.per_row == 0 && !labels.values.is_empty()
        || labels.values.len() != rows * labels.per_row
    {
        return Err(Error::value(
            "labels",
            format!(
                "expected {rows} rows of {} labels, got {} values",
                labels.per_row,
                labels.values.len()
            ),
        ));
    }
    match labels
        .values
        .iter()
        .position(|&y| Some(y) != ignore && !(0..vocab as i64).contains(&y))
    {
        Some(i) => Err(Error::value(
            "labels",
            format!(
                "value {} at flat index {i} is outside [0, {vocab}){}",
                labels.values[i],
                if ignore.is_some() {
                    " and is not ignore_index"
                } else {
                    ""
                }
            ),
        )),
        None => Ok(()),
    }
}

/// The fused single pass of `token.md` §2 over `logits (N, V)` row-major.
pub fn token_stats<E: Element>(logits: &[E], args: &TokenArgs<'_>) -> Result<TokenOutputs> {
    let vocab = args.vocab;
    if vocab == 0 {
        return Err(Error::value(
            "logits",
            "the vocabulary (last) dimension is empty",
        ));
    }
    if !logits.len().is_multiple_of(vocab) {
        return Err(Error::value(
            "logits",
            format!("{} values do not form rows of {vocab}", logits.len()),
        ));
    }
    let rows = logits.len() / vocab;
    args.temperature.validate(rows, E::SCALES_IN_F32)?;
    if let Some(labels) = &args.labels {
        check_labels(labels, rows, vocab, args.ignore_index)?;
    }
    let level = simd::level();
    let summaries = pool::map_indexed(
        rows,
        rows_per_task(vocab),
        logits.len(),
        || Box::new([0f32; TILE]),
        |buf, r| {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let t = args.temperature.of_row(r);
            let res = E::reduce(row, t, args.collision, level, buf);
            let status = if res.bad {
                classify_bad_row(row, t)
            } else if res.state.is_empty() {
                masked_or_overflow(row)
            } else {
                RowStatus::Ok
            };
            RowSummary {
                state: res.state,
                status,
            }
        },
    );
    for (r, summary) in summaries.iter().enumerate() {
        let fatal = match summary.status {
            RowStatus::Ok => false,
            RowStatus::Nan => !args.propagate_nan,
            RowStatus::PosInf | RowStatus::Overflow | RowStatus::AllMasked => true,
        };
        if fatal {
            return Err(row_error(r, summary.status));
        }
    }
    let per_row = |f: &dyn Fn(&State) -> f64| -> Vec<f32> {
        summaries
            .iter()
            .map(|x| {
                if x.status == RowStatus::Ok {
                    f(&x.state) as f32
                } else {
                    f32::NAN
                }
            })
            .collect()
    };
    let logprob = args.labels.map(|labels| {
        let k = labels.per_row;
        let mut out = vec![0f32; rows * k];
        for (r, row_out) in out.chunks_mut(k.max(1)).enumerate().take(rows) {
            let summary = &summaries[r];
            let t = args.temperature.of_row(r);
            for (j, slot) in row_out.iter_mut().enumerate() {
                let y = labels.values[r * k + j];
                *slot = if Some(y) == args.ignore_index {
                    0.0
                } else if summary.status != RowStatus::Ok {
                    f32::NAN
                } else {
                    summary
                        .state
                        .logprob(logits[r * vocab + y as usize].scaled(t))
                        as f32
                };
            }
        }
        out
    });
    Ok(TokenOutputs {
        logprob,
        entropy: per_row(&State::entropy),
        collision: args.collision.then(|| per_row(&State::collision)),
        lse: args.lse.then(|| per_row(&State::lse)),
    })
}
