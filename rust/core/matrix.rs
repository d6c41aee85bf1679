//! Matrix entropy of token sets (`matrix.md` §0–§1): per head, centre over the valid tokens, drop
//! zero-norm rows, L2-normalise rows, accumulate the lower triangle of `A = (1/n) Σ z zᵀ`
//! ([`crate::core::gram`]), normalise by the trace and take the eigenvalues with a symmetric
//! eigensolver in f64 ([`crate::core::eigen`], never an SVD). Heads (or pooled head groups) run
//! in parallel on entcore's pool, one head per task, so results do not depend on the thread count.

use std::cell::RefCell;

use crate::core::dtype::{Bf16Bits, F16Bits, Source};
use crate::core::eigen::eigenvalues_desc;
use crate::core::error::{Error, Result};
use crate::core::gram::{accumulate_lower, gram_lower, padded, CHUNK_ROWS};
use crate::core::pool;
use crate::core::simd::{self, Lanes, Level, Scalar};
#[cfg(target_arch = "x86_64")]
use crate::core::simd::{Avx2, Avx512};

/// An input element type, widened exactly to f64 (one element at a time, in loops the compiler
/// vectorises inside the kernels' `#[target_feature]` frames).
pub trait Element: Copy + Send + Sync + 'static {
    fn value(self) -> f64;
}

impl Element for f32 {
    #[inline(always)]
    fn value(self) -> f64 {
        self as f64
    }
}

impl Element for Bf16Bits {
    #[inline(always)]
    fn value(self) -> f64 {
        f32::from_bits((self.0 as u32) << 16) as f64
    }
}

impl Element for F16Bits {
    #[inline(always)]
    fn value(self) -> f64 {
        self.to_f32() as f64
    }
}

impl Element for f64 {
    #[inline(always)]
    fn value(self) -> f64 {
        self
    }
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
    let units = run_units(x, mask, shape, prep, false, |unit| match &unit.matrix {
        UnitMatrix::Matrix { a, dim } => eigenvalues_desc(a, *dim, d),
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
        Ok(match &unit.matrix {
            UnitMatrix::Nan => f64::NAN,
            UnitMatrix::Empty => 0.0,
            UnitMatrix::Matrix { a, dim } => {
                let spectrum = eigenvalues_desc(a, *dim, d)?;
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
    finish: impl Fn(&Unit) -> Result<T> + Sync + Send,
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
                let unit = unit_matrix(x, mask, group, rows, d, prep, propagate, level, scratch)?;
                finish(&unit)
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
    c: Vec<f64>,
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
            c: vec![0.0; s * s],
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
    mean: Vec<f64>,
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

/// Pass 1 over one head's valid rows: their count, mean (zeros without centring), largest raw
/// row norm, and whether one holds NaN; `±inf` is an error.
#[inline(always)]
fn scan_head<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    rows: usize,
    d: usize,
    center: bool,
) -> Result<HeadScan> {
    let zeros = vec![0f64; d];
    let mut sum = vec![0f64; d];
    let (mut valid, mut max_norm, mut nan) = (0usize, 0f64, false);
    for i in (0..rows).filter(|&i| mask.is_none_or(|m| m[i] != 0)) {
        let row = &x[i * d..(i + 1) * d];
        let mut norm2 = centred_squares(row, &zeros);
        if !norm2.is_finite() {
            if row.iter().any(|v| v.value().is_nan()) {
                nan = true;
                continue;
            }
            if row.iter().any(|v| v.value().is_infinite()) {
                return Err(Error::value("x", format!("row {i} holds ±inf")));
            }
            norm2 = scaled_norm(row, &zeros).powi(2);
        }
        valid += 1;
        max_norm = max_norm.max(norm2.sqrt());
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v.value();
        }
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
        mean,
        max_norm,
        nan,
    })
}

/// Pass 2: `emit(dst, row, factor)` for each kept row: the caller writes
/// `z_j = (x_j − μ_j) · factor` as f32, `factor` being `1/‖x − μ‖` (row normalisation) or
/// `1/max_j ‖x_j‖` (a common factor that cancels in `Â` and keeps f32 products in range).
/// Returns the number of kept rows.
#[inline(always)]
fn emit_rows<E: Element>(
    x: &[E],
    mask: Option<&[u8]>,
    rows: usize,
    d: usize,
    scan: &HeadScan,
    prep: &Prep,
    mut emit: impl FnMut(&[E], f64),
) -> usize {
    let tol = prep.zero_tol * scan.max_norm;
    let mut kept = 0;
    for i in (0..rows).filter(|&i| mask.is_none_or(|m| m[i] != 0)) {
        let row = &x[i * d..(i + 1) * d];
        let norm = centred_norm(row, &scan.mean);
        if norm > tol && norm > 0.0 {
            kept += 1;
            let factor = if prep.row_normalize {
                1.0 / norm
            } else {
                1.0 / scan.max_norm
            };
            emit(row, factor);
        }
    }
    kept
}

/// `dst_j = ((x_j − μ_j) · factor)` as f32.
#[inline(always)]
fn write_row<E: Element>(dst: &mut [f32], row: &[E], mean: &[f64], factor: f64) {
    for ((o, &r), &m) in dst.iter_mut().zip(row).zip(mean) {
        *o = ((r.value() - m) * factor) as f32;
    }
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
        scans.push(scan_head(xh, mh, rows, d, prep.center)?);
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
            let n = emit_rows(xh, mh, rows, d, scan, prep, |row, f| {
                let base = z.len();
                z.resize(base + s, 0.0);
                write_row(&mut z[base..base + d], row, &scan.mean, f);
                frob2 += z[base..base + d]
                    .iter()
                    .map(|&v| v as f64 * v as f64)
                    .sum::<f64>();
                scale.push(1.0);
            });
            for f in &mut scale[start..] {
                *f = 1.0 / frob2.sqrt();
            }
            rank += rank_of(n);
        }
        let m = scale.len();
        (m > 0).then(|| (gram_lower(&z, &scale, s, d), m))
    } else {
        let mut sum = vec![0f64; d * d];
        let mut heads_left = 0usize;
        for (h, scan) in scans.iter().enumerate() {
            let (xh, mh) = head(h);
            scratch.c.fill(0.0);
            let mut fill = 0usize;
            let n = emit_rows(xh, mh, rows, d, scan, prep, |row, f| {
                write_row(
                    &mut scratch.chunk()[fill * s..fill * s + d],
                    row,
                    &scan.mean,
                    f,
                );
                fill += 1;
                if fill == CHUNK_ROWS {
                    flush::<L>(scratch, fill, d);
                    fill = 0;
                }
            });
            if fill > 0 {
                flush::<L>(scratch, fill, d);
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

/// Add the second moments of the `rows` packed rows of the chunk to `scratch.c`.
#[inline(always)]
unsafe fn flush<L: Lanes>(scratch: &mut Scratch, rows: usize, d: usize) {
    let len = scratch.lines.len() * 16;
    // SAFETY: as in `Scratch::chunk`; `c` is a different buffer.
    let chunk = std::slice::from_raw_parts(scratch.lines.as_ptr() as *const f32, len);
    accumulate_lower::<L>(chunk, rows, d, &mut scratch.c);
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
