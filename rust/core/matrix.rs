//! Matrix entropy of token sets (`matrix.md` §0–§1): per head, centre over the valid tokens, drop
//! zero-norm rows, L2-normalise rows, accumulate the lower triangle of `A = (1/n) Σ z zᵀ`
//! ([`crate::core::gram`]), normalise by the trace and take the eigenvalues with a symmetric
//! eigensolver in f64 ([`crate::core::eigen`], never an SVD). Heads (or pooled head groups) run
//! in parallel on entcore's pool, one head per task, so results do not depend on the thread count.

use std::cell::RefCell;

use crate::core::dtype::{Bf16Bits, F16Bits, Source};
use crate::core::eigen::eigenvalues_in_place;
use crate::core::error::{Error, Result};
use crate::core::gram::{accumulate_lower, gram_lower, padded, CHUNK_ROWS, WIDEN_EVERY};
use crate::core::pool;
use crate::core::simd::{self, Lanes, Level, Scalar};
#[cfg(target_arch = "x86_64")]
use crate::core::simd::{Avx2, Avx512};

/// An input element type: its two passes over a row (`matrix.md` §1.2 steps 1–3). The f32-exact
/// kinds (f32, bfloat16, float16) work in f32 lanes; float64 inputs work in f64.
pub trait Element: Copy + Send + Sync + 'static {
    /// Exact widening to f64.
    fn value(self) -> f64;

    /// Add the row to `sum` (f64) and return its squared norm, which is not finite when the row
    /// holds NaN or ±inf and may be inexact outside [`SAFE_NORM2`] (the caller recomputes it).
    ///
    /// # Safety
    /// The CPU must support `L`; `sum.len() == row.len()`.
    unsafe fn scan_row<L: Lanes>(row: &[Self], sum: &mut [f64]) -> f64;

    /// Write `z = (row − μ) · factor` to `dst` as f32 and return true, where
    /// `factor = keep(‖row − μ‖)`; return false (leaving `dst` undefined) when `keep` gives None.
    ///
    /// # Safety
    /// The CPU must support `L`; `dst.len()`, `mean`'s vectors and `row.len()` are equal.
    unsafe fn emit_row<L: Lanes>(
        row: &[Self],
        mean: &Mean,
        dst: &mut [f32],
        keep: impl Fn(f64) -> Option<f64>,
    ) -> bool;
}

macro_rules! f32_exact_element {
    ($ty:ty) => {
        impl Element for $ty {
            #[inline(always)]
            fn value(self) -> f64 {
                self.to_f32() as f64
            }

            #[inline(always)]
            unsafe fn scan_row<L: Lanes>(row: &[Self], sum: &mut [f64]) -> f64 {
                scan_f32_lanes::<L, Self>(row, sum)
            }

            #[inline(always)]
            unsafe fn emit_row<L: Lanes>(
                row: &[Self],
                mean: &Mean,
                dst: &mut [f32],
                keep: impl Fn(f64) -> Option<f64>,
            ) -> bool {
                emit_f32_lanes::<L, Self>(row, mean, dst, keep)
            }
        }
    };
}

f32_exact_element!(f32);
f32_exact_element!(Bf16Bits);
f32_exact_element!(F16Bits);

impl Element for f64 {
    #[inline(always)]
    fn value(self) -> f64 {
        self
    }

    #[inline(always)]
    unsafe fn scan_row<L: Lanes>(row: &[f64], sum: &mut [f64]) -> f64 {
        let mut lanes = [0f64; 8];
        for (j, (s, &v)) in sum.iter_mut().zip(row).enumerate() {
            *s += v;
            lanes[j % 8] += v * v;
        }
        lanes.iter().sum()
    }

    #[inline(always)]
    unsafe fn emit_row<L: Lanes>(
        row: &[f64],
        mean: &Mean,
        dst: &mut [f32],
        keep: impl Fn(f64) -> Option<f64>,
    ) -> bool {
        emit_f64(row, mean, dst, keep)
    }
}

/// Squared norms in this range are computed accurately in f32 lanes (every square that matters
/// is a normal f32 and no partial sum overflows); outside it the row is redone in f64.
pub const SAFE_NORM2: std::ops::Range<f64> = 1.0 / (1u64 << 60) as f64..f32::MAX as f64;

/// A head's mean `μ` in f64, and split for the f32 centring: `hi = f32(μ)`, `lo = f32(μ − hi)`,
/// so `μ = hi + lo` to about 2⁻⁴⁸ relative.
pub struct Mean {
    wide: Vec<f64>,
    hi: Vec<f32>,
    lo: Vec<f32>,
}

impl Mean {
    fn new(wide: Vec<f64>) -> Self {
        let hi: Vec<f32> = wide.iter().map(|&m| m as f32).collect();
        let lo = wide
            .iter()
            .zip(&hi)
            .map(|(&m, &h)| (m - h as f64) as f32)
            .collect();
        Mean { wide, hi, lo }
    }
}

/// [`Element::scan_row`] for f32-exact kinds: the squares in f32 lanes, the sum in f64.
#[inline(always)]
unsafe fn scan_f32_lanes<L: Lanes, E: Source>(row: &[E], sum: &mut [f64]) -> f64 {
    let (w, d) = (L::WIDTH, row.len());
    let full = d - d % w;
    let mut squares = L::splat(0.0);
    for j in (0..full).step_by(w) {
        let v = E::load::<L>(row.as_ptr().add(j));
        squares = L::fmadd(v, v, squares);
        L::add_to_f64(sum.as_mut_ptr().add(j), v);
    }
    let mut norm2 = L::dsum(L::dadd(L::dzero(), squares));
    for j in full..d {
        let v = row[j].to_f32() as f64;
        sum[j] += v;
        norm2 += v * v;
    }
    norm2
}

/// [`Element::emit_row`] for f32-exact kinds: `(x − hi) − lo` in f32 lanes (each step rounds
/// relative to its result, so `z` carries a few f32 roundings of itself, never of `μ`), the
/// squared norm from those, then one f32 multiply by the factor. Rows whose squared norm falls
/// outside [`SAFE_NORM2`] are redone in f64.
#[inline(always)]
unsafe fn emit_f32_lanes<L: Lanes, E: Source + Element>(
    row: &[E],
    mean: &Mean,
    dst: &mut [f32],
    keep: impl Fn(f64) -> Option<f64>,
) -> bool {
    let (w, d) = (L::WIDTH, row.len());
    let full = d - d % w;
    let (hi, lo, out) = (mean.hi.as_ptr(), mean.lo.as_ptr(), dst.as_mut_ptr());
    let mut squares = L::splat(0.0);
    for j in (0..full).step_by(w) {
        let v = E::load::<L>(row.as_ptr().add(j));
        let c = L::sub(L::sub(v, L::load_f32(hi.add(j))), L::load_f32(lo.add(j)));
        L::store(out.add(j), c);
        squares = L::fmadd(c, c, squares);
    }
    let mut norm2 = L::dsum(L::dadd(L::dzero(), squares));
    for j in full..d {
        let c = (row[j].to_f32() - mean.hi[j]) - mean.lo[j];
        dst[j] = c;
        norm2 += c as f64 * c as f64;
    }
    if !SAFE_NORM2.contains(&norm2) {
        return emit_f64(row, mean, dst, keep);
    }
    let Some(factor) = keep(norm2.sqrt()) else {
        return false;
    };
    let f = L::splat(factor as f32);
    for j in (0..full).step_by(w) {
        L::store(out.add(j), L::mul(L::load_f32(out.add(j)), f));
    }
    for v in &mut dst[full..] {
        *v *= factor as f32;
    }
    true
}

/// [`Element::emit_row`] in f64: centred values and their norm in f64, `z` rounded once.
#[inline(always)]
fn emit_f64<E: Element>(
    row: &[E],
    mean: &Mean,
    dst: &mut [f32],
    keep: impl Fn(f64) -> Option<f64>,
) -> bool {
    let Some(factor) = keep(centred_norm(row, &mean.wide)) else {
        return false;
    };
    for ((o, &r), &m) in dst.iter_mut().zip(row).zip(&mean.wide) {
        *o = ((r.value() - m) * factor) as f32;
    }
    true
}

/// Which matrix gives the eigenvalues (`matrix.md` §0).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// The `n × n` Gram matrix when a unit has fewer valid rows than `d`, else the covariance.
    Auto,
    Covariance,
    Gram,
}

/// Steps 1–4 of `matrix.md` §1.2.
#[derive(Copy, Clone, Debug)]
pub struct Prep {
    pub center: bool,
    pub row_normalize: bool,
    pub zero_tol: f64,
    pub method: Method,
}

/// `x` is `(problems, rows, d)` row-major; `pool` consecutive problems form one unit whose
/// matrices `Â` are averaged (`group_reduce="pooled"`; `pool = 1`: every problem alone).
#[derive(Copy, Clone, Debug)]
pub struct Shape {
    pub problems: usize,
    pub rows: usize,
    pub d: usize,
    pub pool: usize,
}

/// The step-7 divisor of `matrix.md` §1.2.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Normalize {
    LogD,
    LogK,
    LogRank,
    /// `ln base` (`normalize=None`).
    Base(f64),
}

/// Steps 5–7 of `matrix.md` §1.2.
#[derive(Copy, Clone, Debug)]
pub struct EntropyArgs {
    /// `None`: the full spectrum.
    pub k: Option<usize>,
    pub renormalized: bool,
    pub normalize: Normalize,
    pub eps: f64,
}

/// One unit's normalised matrix `Â` (lower triangle, row-major `dim × dim`), or why there is none.
enum UnitMatrix {
    /// A valid row holds NaN (`nan_policy="propagate"`).
    Nan,
    /// No row is left after dropping zero-norm rows.
    Empty,
    Matrix {
        a: Vec<f64>,
        dim: usize,
    },
}

/// What one unit yields: `Â` and the rank bound `r` of `"log_rank"` (`min(n − 1, d)` per head
/// when centred, `min(n, d)` otherwise, `n` the kept rows; summed over a pooled group, ≤ `d`).
struct Unit {
    matrix: UnitMatrix,
    rank: usize,
}

/// Spectra `(units, d)`: eigenvalues of `Â`, clamped at 0, descending, summing to 1; all zeros
/// for a unit with no row left (`matrix.md` §1.1). NaN at a valid row is an error.
pub fn matrix_spectrum<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    shape: Shape,
    prep: &Prep,
) -> Result<Vec<f64>> {
    let d = shape.d;
    let units = run_units(x, mask, shape, prep, false, |unit| match &mut unit.matrix {
        UnitMatrix::Matrix { a, dim } => eigenvalues_in_place(a, *dim, d),
        _ => Ok(vec![0.0; d]),
    })?;
    Ok(units.concat())
}

/// `matrix_entropy` (`matrix.md` §1.2) of every unit, in f64; NaN for units holding NaN when
/// `propagate`.
pub fn matrix_entropy<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    shape: Shape,
    prep: &Prep,
    args: &EntropyArgs,
    propagate: bool,
) -> Result<Vec<f64>> {
    check_entropy_args(args)?;
    let d = shape.d;
    run_units(x, mask, shape, prep, propagate, |unit| {
        Ok(match &mut unit.matrix {
            UnitMatrix::Nan => f64::NAN,
            UnitMatrix::Empty => 0.0,
            UnitMatrix::Matrix { a, dim } => {
                let spectrum = eigenvalues_in_place(a, *dim, d)?;
                spectrum_entropy(&spectrum, unit.rank, args)
            }
        })
    })
}

/// `matrix_renyi2` (`matrix.md` §1.3): `−ln ‖Â‖_F²` over the divisor, no eigendecomposition.
pub fn matrix_renyi2<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    shape: Shape,
    prep: &Prep,
    normalize: Normalize,
) -> Result<Vec<f64>> {
    check_normalize(normalize)?;
    let d = shape.d;
    run_units(x, mask, shape, prep, false, |unit| {
        Ok(match &unit.matrix {
            UnitMatrix::Nan => f64::NAN,
            UnitMatrix::Empty => 0.0,
            UnitMatrix::Matrix { a, dim } => {
                let frob2 = frobenius2_lower(a, *dim);
                let divisor = divisor(normalize, d, d, unit.rank);
                if divisor == 0.0 {
                    0.0
                } else {
                    -frob2.ln() / divisor
                }
            }
        })
    })
}

/// Steps 5–7 of `matrix.md` §1.2 on a descending spectrum of `Â` (`d` values): `λ + eps`, the
/// top-`k'` partial or renormalised entropy (`0 ln 0 = 0`), over the divisor (0 → 0.0).
pub fn spectrum_entropy(spectrum: &[f64], rank: usize, args: &EntropyArgs) -> f64 {
    let d = spectrum.len();
    let kk = args.k.map_or(d, |k| k.min(d));
    let top = spectrum[..kk].iter().map(|&l| l + args.eps);
    let total = if args.renormalized {
        top.clone().sum::<f64>()
    } else {
        1.0
    };
    let h: f64 = top
        .map(|l| {
            let p = l / total;
            if p > 0.0 {
                -p * p.ln()
            } else {
                0.0
            }
        })
        .sum();
    let divisor = divisor(args.normalize, d, kk, rank);
    if divisor == 0.0 {
        0.0
    } else {
        h / divisor
    }
}

fn divisor(normalize: Normalize, d: usize, k: usize, rank: usize) -> f64 {
    let ln = |m: usize| if m > 1 { (m as f64).ln() } else { 0.0 };
    match normalize {
        Normalize::LogD => ln(d),
        Normalize::LogK => ln(k),
        Normalize::LogRank => ln(rank),
        Normalize::Base(b) => b.ln(),
    }
}

fn check_normalize(normalize: Normalize) -> Result<()> {
    match normalize {
        Normalize::Base(b) if !(b.is_finite() && b > 0.0 && b != 1.0) => Err(Error::value(
            "base",
            format!("expected a finite value > 0 other than 1, got {b}"),
        )),
        _ => Ok(()),
    }
}

fn check_entropy_args(args: &EntropyArgs) -> Result<()> {
    if args.k == Some(0) {
        return Err(Error::value("k", "expected an int >= 1, got 0"));
    }
    if !(args.eps.is_finite() && args.eps >= 0.0) {
        return Err(Error::value(
            "eps",
            format!("expected a finite value >= 0, got {}", args.eps),
        ));
    }
    check_normalize(args.normalize)
}

fn check_shape<E>(x: &[E], mask: Option<&[u8]>, shape: Shape, prep: &Prep) -> Result<()> {
    let Shape {
        problems,
        rows,
        d,
        pool,
    } = shape;
    if d == 0 {
        return Err(Error::value("x", "expected d >= 1 features"));
    }
    if pool == 0 || problems % pool != 0 {
        return Err(Error::value(
            "group_size",
            format!("{problems} heads are not a multiple of {pool}"),
        ));
    }
    let len = problems
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(d))
        .filter(|&n| n == x.len());
    if len.is_none() {
        return Err(Error::value(
            "x",
            format!("expected {problems}·{rows}·{d} elements, got {}", x.len()),
        ));
    }
    if mask.is_some_and(|m| m.len() != problems * rows) {
        return Err(Error::value(
            "mask",
            format!("expected {problems}·{rows} entries"),
        ));
    }
    if problems > 0 && rows == 0 {
        return Err(Error::value("mask", "a token set has no valid row (n = 0)"));
    }
    if !(prep.zero_tol.is_finite() && prep.zero_tol >= 0.0) {
        return Err(Error::value(
            "zero_tol",
            format!("expected a finite value >= 0, got {}", prep.zero_tol),
        ));
    }
    Ok(())
}

/// `finish(unit)` for every unit, in parallel over units; the first error in unit order wins.
fn run_units<E: Element, T: Send>(
    x: &[E],
    mask: Option<&[u8]>,
    shape: Shape,
    prep: &Prep,
    propagate: bool,
    finish: impl Fn(&mut Unit) -> Result<T> + Sync + Send,
) -> Result<Vec<T>> {
    check_shape(x, mask, shape, prep)?;
    let Shape {
        problems,
        rows,
        d,
        pool: group,
    } = shape;
    let level = simd::level();
    let results = pool::map_indexed(
        problems / group,
        1,
        x.len(),
        || (),
        |_, u| {
            let heads = u * group..(u + 1) * group;
            let x = &x[heads.start * rows * d..heads.end * rows * d];
            let mask = mask.map(|m| &m[heads.start * rows..heads.end * rows]);
            SCRATCH.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_none_or(|s| s.d != d) {
                    *slot = Some(Scratch::new(d));
                }
                let scratch = slot.as_mut().expect("set just above");
                let mut unit =
                    unit_matrix(x, mask, group, rows, d, prep, propagate, level, scratch)?;
                let result = finish(&mut unit);
                if let UnitMatrix::Matrix { a, .. } = unit.matrix {
                    scratch.a = a;
                }
                result
            })
        },
    );
    results.into_iter().collect()
}

/// One cache line of f32: packed chunks start on a line, so the tile loads of
/// [`accumulate_lower`] (whole vectors at multiples of 16 floats) never straddle two lines.
#[derive(Copy, Clone)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// Work buffers of one worker thread, kept between units and calls (no fresh pages per head).
struct Scratch {
    d: usize,
    lines: Vec<Line>,
    /// f32 sums of up to `WIDEN_EVERY` chunks (all zeros between heads).
    mid: Vec<f32>,
    c: Vec<f64>,
    /// The unit's `Â`, handed back after each unit.
    a: Vec<f64>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

impl Scratch {
    fn new(d: usize) -> Self {
        let s = padded(d);
        Scratch {
            d,
            lines: vec![Line([0.0; 16]); CHUNK_ROWS * s / 16],
            mid: vec![0.0; s * s],
            c: vec![0.0; s * s],
            a: Vec::new(),
        }
    }

    /// The packed chunk: `CHUNK_ROWS` rows of stride `padded(d)`, zero past column `d`.
    fn chunk(&mut self) -> &mut [f32] {
        let len = self.lines.len() * 16;
        // SAFETY: `Line` is 16 contiguous f32 (repr(C), no padding: 64 bytes, align 64).
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, len) }
    }
}

fn unit_matrix<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    group: usize,
    rows: usize,
    d: usize,
    prep: &Prep,
    propagate: bool,
    level: Level,
    scratch: &mut Scratch,
) -> Result<Unit> {
    // SAFETY: `level` comes from `simd::level()`, which only returns levels the CPU supports.
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unit_avx512(x, mask, group, rows, d, prep, propagate, scratch),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unit_avx2(x, mask, group, rows, d, prep, propagate, scratch),
            _ => unit::<Scalar, E>(x, mask, group, rows, d, prep, propagate, scratch),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn unit_avx512<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    group: usize,
    rows: usize,
    d: usize,
    prep: &Prep,
    propagate: bool,
    scratch: &mut Scratch,
) -> Result<Unit> {
    unit::<Avx512, E>(x, mask, group, rows, d, prep, propagate, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unit_avx2<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    group: usize,
    rows: usize,
    d: usize,
    prep: &Prep,
    propagate: bool,
    scratch: &mut Scratch,
) -> Result<Unit> {
    unit::<Avx2, E>(x, mask, group, rows, d, prep, propagate, scratch)
}

/// Pass-1 facts about one head: valid rows, mean, largest raw row norm, NaN seen.
struct HeadScan {
    valid: usize,
    mean: Mean,
    max_norm: f64,
    nan: bool,
}

/// `Σ (x_j − m_j)²` in eight independent lanes (vectorisable; the order is fixed).
#[inline(always)]
fn centred_squares<E: Element>(row: &[E], mean: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let mut rows = row.chunks_exact(8);
    let mut means = mean.chunks_exact(8);
    for (r, m) in (&mut rows).zip(&mut means) {
        for l in 0..8 {
            let v = r[l].value() - m[l];
            acc[l] += v * v;
        }
    }
    let tail: f64 = rows
        .remainder()
        .iter()
        .zip(means.remainder())
        .map(|(&r, &m)| (r.value() - m) * (r.value() - m))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// `‖x − m‖` of a finite row whose squares overflow f64 (only float64 inputs above ~1e154).
fn scaled_norm<E: Element>(row: &[E], mean: &[f64]) -> f64 {
    let v: Vec<f64> = row.iter().zip(mean).map(|(&r, &m)| r.value() - m).collect();
    let top = v.iter().fold(0f64, |t, &a| t.max(a.abs()));
    top * v.iter().map(|&a| (a / top) * (a / top)).sum::<f64>().sqrt()
}

#[inline(always)]
fn centred_norm<E: Element>(row: &[E], mean: &[f64]) -> f64 {
    let norm2 = centred_squares(row, mean);
    if norm2.is_finite() {
        norm2.sqrt()
    } else {
        scaled_norm(row, mean)
    }
}

/// The indices of the valid rows of a head.
fn valid_rows(mask: Option<&[u8]>, rows: usize) -> impl Iterator<Item = usize> + '_ {
    (0..rows).filter(move |&i| mask.is_none_or(|m| m[i] != 0))
}

/// Pass 1 over one head's valid rows: their count, mean (zeros without centring), largest raw
/// row norm, and whether one holds NaN; `±inf` is an error.
#[inline(always)]
unsafe fn scan_head<L: Lanes, E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    rows: usize,
    d: usize,
    center: bool,
) -> Result<HeadScan> {
    let zeros = vec![0f64; d];
    let mut sum = vec![0f64; d];
    let (mut valid, mut max_norm, mut nan) = (0usize, 0f64, false);
    for i in valid_rows(mask, rows) {
        let row = &x[i * d..(i + 1) * d];
        let norm2 = E::scan_row::<L>(row, &mut sum);
        let norm = if SAFE_NORM2.contains(&norm2) {
            norm2.sqrt()
        } else {
            if row.iter().any(|v| v.value().is_nan()) {
                // `sum` now holds NaN, but a head with NaN yields no matrix.
                nan = true;
                continue;
            }
            if row.iter().any(|v| v.value().is_infinite()) {
                return Err(Error::value("x", format!("row {i} holds ±inf")));
            }
            centred_norm(row, &zeros)
        };
        valid += 1;
        max_norm = max_norm.max(norm);
    }
    if valid == 0 && !nan {
        return Err(Error::value("mask", "a token set has no valid row (n = 0)"));
    }
    let inv = 1.0 / valid.max(1) as f64;
    let mean = if center {
        sum.iter().map(|&s| s * inv).collect()
    } else {
        zeros
    };
    Ok(HeadScan {
        valid,
        mean: Mean::new(mean),
        max_norm,
        nan,
    })
}

/// Pass 2, one valid row: write `z = (x − μ) · factor` to `dst` unless the row is dropped
/// (`‖x − μ‖ ≤ zero_tol · max_j ‖x_j‖`); `factor` is `1/‖x − μ‖` (row normalisation) or
/// `1/max_j ‖x_j‖` (a common factor that cancels in `Â` and keeps f32 products in range).
#[inline(always)]
unsafe fn emit<L: Lanes, E: Element>(
    row: &[E],
    scan: &HeadScan,
    prep: &Prep,
    dst: &mut [f32],
) -> bool {
    let tol = prep.zero_tol * scan.max_norm;
    E::emit_row::<L>(row, &scan.mean, dst, |norm| {
        (norm > tol && norm > 0.0).then(|| {
            if prep.row_normalize {
                1.0 / norm
            } else {
                1.0 / scan.max_norm
            }
        })
    })
}

#[inline(always)]
unsafe fn unit<L: Lanes, E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    group: usize,
    rows: usize,
    d: usize,
    prep: &Prep,
    propagate: bool,
    scratch: &mut Scratch,
) -> Result<Unit> {
    let head = |h: usize| {
        (
            &x[h * rows * d..(h + 1) * rows * d],
            mask.map(|m| &m[h * rows..(h + 1) * rows]),
        )
    };
    let mut scans = Vec::with_capacity(group);
    for h in 0..group {
        let (xh, mh) = head(h);
        scans.push(scan_head::<L, E>(xh, mh, rows, d, prep.center)?);
    }
    if scans.iter().any(|s| s.nan) {
        if !propagate {
            return Err(Error::value(
                "x",
                "contains NaN at a valid row (nan_policy='raise')",
            ));
        }
        return Ok(Unit {
            matrix: UnitMatrix::Nan,
            rank: 0,
        });
    }
    let valid: usize = scans.iter().map(|s| s.valid).sum();
    let gram = prep.method == Method::Gram || (prep.method == Method::Auto && valid < d);
    let s = padded(d);
    let mut rank = 0usize;
    let rank_of = |n: usize| {
        if n == 0 {
            0
        } else if prep.center {
            (n - 1).min(d)
        } else {
            n.min(d)
        }
    };
    let matrix = if gram {
        // Rows of every head stacked (f32, stride s), each head weighed by 1/‖Z_h‖_F.
        let mut z: Vec<f32> = Vec::new();
        let mut scale: Vec<f64> = Vec::new();
        for (h, scan) in scans.iter().enumerate() {
            let (xh, mh) = head(h);
            let start = scale.len();
            let mut frob2 = 0f64;
            let mut n = 0;
            for i in valid_rows(mh, rows) {
                let base = z.len();
                z.resize(base + s, 0.0);
                if emit::<L, E>(&xh[i * d..(i + 1) * d], scan, prep, &mut z[base..base + d]) {
                    n += 1;
                    frob2 += z[base..base + d]
                        .iter()
                        .map(|&v| v as f64 * v as f64)
                        .sum::<f64>();
                    scale.push(1.0);
                } else {
                    z.truncate(base);
                }
            }
            for f in &mut scale[start..] {
                *f = 1.0 / frob2.sqrt();
            }
            rank += rank_of(n);
        }
        let m = scale.len();
        (m > 0).then(|| (gram_lower(&z, &scale, s, d), m))
    } else {
        let mut sum = std::mem::take(&mut scratch.a);
        sum.clear();
        sum.resize(d * d, 0.0);
        let mut heads_left = 0usize;
        for (h, scan) in scans.iter().enumerate() {
            let (xh, mh) = head(h);
            scratch.c.fill(0.0);
            let (mut fill, mut n, mut chunks) = (0usize, 0usize, 0usize);
            for i in valid_rows(mh, rows) {
                let dst = &mut scratch.chunk()[fill * s..fill * s + d];
                if emit::<L, E>(&xh[i * d..(i + 1) * d], scan, prep, dst) {
                    n += 1;
                    fill += 1;
                    if fill == CHUNK_ROWS {
                        chunks += 1;
                        flush::<L>(scratch, fill, d, chunks % WIDEN_EVERY == 0);
                        fill = 0;
                    }
                }
            }
            if fill > 0 || chunks % WIDEN_EVERY != 0 {
                flush::<L>(scratch, fill, d, true);
            }
            rank += rank_of(n);
            if n == 0 {
                continue;
            }
            heads_left += 1;
            let c = &scratch.c;
            let trace: f64 = (0..d).map(|a| c[a * s + a]).sum();
            for a in 0..d {
                for b in 0..=a {
                    sum[a * d + b] += c[a * s + b] / trace;
                }
            }
        }
        (heads_left > 0).then_some((sum, d))
    };
    let matrix = match matrix {
        None => UnitMatrix::Empty,
        Some((mut a, dim)) => {
            let trace: f64 = (0..dim).map(|i| a[i * dim + i]).sum();
            for v in &mut a {
                *v /= trace;
            }
            UnitMatrix::Matrix { a, dim }
        }
    };
    Ok(Unit {
        matrix,
        rank: rank.min(d),
    })
}

/// Add the second moments of the `rows` packed rows of the chunk to `scratch.mid`, and with
/// `widen` move `scratch.mid` into `scratch.c` ([`accumulate_lower`]).
#[inline(always)]
unsafe fn flush<L: Lanes>(scratch: &mut Scratch, rows: usize, d: usize, widen: bool) {
    let len = scratch.lines.len() * 16;
    // SAFETY: as in `Scratch::chunk`; `mid` and `c` are different buffers.
    let chunk = std::slice::from_raw_parts(scratch.lines.as_ptr() as *const f32, len);
    accumulate_lower::<L>(chunk, rows, d, &mut scratch.mid, &mut scratch.c, widen);
}

/// `‖Â‖_F²` from the lower triangle.
fn frobenius2_lower(a: &[f64], dim: usize) -> f64 {
    let mut sum = 0f64;
    for i in 0..dim {
        for j in 0..i {
            sum += 2.0 * a[i * dim + j] * a[i * dim + j];
        }
        sum += a[i * dim + i] * a[i * dim + i];
    }
    sum
}
