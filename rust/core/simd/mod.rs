//! Vector lanes for the kernels, with runtime CPU dispatch: AVX-512F, AVX2+FMA+F16C, or a
//! portable scalar fallback. Kernels are written once, generic over [`Lanes`], and instantiated
//! inside `#[target_feature]` functions so every lane operation inlines as the right instruction.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
pub use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub use avx512::Avx512;
pub use scalar::Scalar;

/// Lower clamp of `exp` arguments. `exp_nonpositive(EXP_FLOOR)` is exactly 0 (its `2^n` factor
/// underflows to 0 at `n = −127`), so clamped `−∞` entries add nothing; the true values flushed
/// this way are below `e^−87.68 < 1e-38`.
pub const EXP_FLOOR: f32 = -88.0;

/// The operations a kernel needs on a vector of `WIDTH` f32 lanes.
///
/// # Safety
/// (for every method)
/// Every method may only run on a CPU that supports the implementation's instruction set;
/// pointer arguments must be valid for `WIDTH` elements.
#[allow(clippy::missing_safety_doc)] // one Safety section above covers every method
pub trait Lanes: Copy {
    const WIDTH: usize;
    /// Independent accumulators per lane (more only where registers allow).
    const UNROLL: usize;
    type V: Copy;
    /// f64 lanes that accumulate flushed f32 lane sums.
    type D: Copy;
    /// Accumulated "some lane was NaN or +inf".
    type Flag: Copy;

    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load_f32(p: *const f32) -> Self::V;
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    unsafe fn load_f16(p: *const u16) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (fused where the CPU has FMA).
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum; inputs here are never NaN.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Round to nearest, ties to even.
    unsafe fn round(a: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `[-127, 127]`; `n = −127` gives exactly 0.
    unsafe fn pow2i(n: Self::V) -> Self::V;
    unsafe fn hmax(a: Self::V) -> f32;
    unsafe fn dzero() -> Self::D;
    /// `acc + widen(v)`, lane by lane in f64.
    unsafe fn dadd(acc: Self::D, v: Self::V) -> Self::D;
    /// Sum of the f64 lanes in lane order.
    unsafe fn dsum(acc: Self::D) -> f64;
    /// `p[i] += widen(v[i])` for the `WIDTH` f64 at `p` (valid for `WIDTH` reads and writes).
    unsafe fn add_to_f64(p: *mut f64, v: Self::V);
    unsafe fn flag_none() -> Self::Flag;
    /// Record lanes that are NaN or +inf.
    unsafe fn flag_bad(flag: Self::Flag, x: Self::V) -> Self::Flag;
    unsafe fn flag_any(flag: Self::Flag) -> bool;
    /// Hint that the cache line at `p` will be read soon (never faults).
    unsafe fn prefetch(p: *const u8);

    /// `exp(x)` for `x` in `[EXP_FLOOR, 0]` (relative error about 2 ulp, exactly 0 for
    /// `x < −87.68`, exactly 1 at 0): Cody-Waite reduction `x = n ln2 + r` with `ln2` split in
    /// two constants, the Cephes `expf` polynomial on `|r| ≤ ln2/2`, times `2^n`.
    #[inline(always)]
    unsafe fn exp_nonpositive(x: Self::V) -> Self::V {
        let n = Self::round(Self::mul(x, Self::splat(std::f32::consts::LOG2_E)));
        let r = Self::fmadd(n, Self::splat(-0.693_359_4), x);
        let r = Self::fmadd(n, Self::splat(2.121_944_4e-4), r);
        let mut p = Self::splat(1.987_569_1e-4);
        p = Self::fmadd(p, r, Self::splat(1.398_199_9e-3));
        p = Self::fmadd(p, r, Self::splat(8.333_452e-3));
        p = Self::fmadd(p, r, Self::splat(4.166_579_6e-2));
        p = Self::fmadd(p, r, Self::splat(1.666_666_5e-1));
        p = Self::fmadd(p, r, Self::splat(0.5));
        let r2 = Self::mul(r, r);
        let e = Self::fmadd(p, r2, Self::add(r, Self::splat(1.0)));
        Self::mul(e, Self::pow2i(n))
    }
}

/// The kernel family in use.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Level {
    Scalar = 1,
    Avx2 = 2,
    Avx512 = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Level> {
        match name {
            "scalar" => Some(Level::Scalar),
            "avx2" => Some(Level::Avx2),
            "avx512" => Some(Level::Avx512),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Option<Level> {
        match v {
            1 => Some(Level::Scalar),
            2 => Some(Level::Avx2),
            3 => Some(Level::Avx512),
            _ => None,
        }
    }
}

/// The levels this CPU can run, best first.
pub fn supported() -> Vec<Level> {
    let mut levels = Vec::with_capacity(3);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            levels.push(Level::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            levels.push(Level::Avx2);
        }
    }
    levels.push(Level::Scalar);
    levels
}

static FORCED: AtomicU8 = AtomicU8::new(0);

/// The level kernels dispatch to: the forced one, else the best supported.
pub fn level() -> Level {
    Level::from_u8(FORCED.load(Ordering::Relaxed)).unwrap_or_else(|| supported()[0])
}

/// Force a level (`None`: automatic). Returns false, changing nothing, if the CPU lacks it.
pub fn force(level: Option<Level>) -> bool {
    match level {
        None => {
            FORCED.store(0, Ordering::Relaxed);
            true
        }
        Some(l) if supported().contains(&l) => {
            FORCED.store(l as u8, Ordering::Relaxed);
            true
        }
        Some(_) => false,
    }
}
