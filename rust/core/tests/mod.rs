//! Unit tests of the core kernels (`cargo test --release --no-default-features`, no Python).
//!
//! Shared here: a deterministic PRNG, a float64 direct oracle of `token.md` §2, the element kinds
//! under test, tolerance checks, per-level dispatch of lane-generic test bodies, and the lock that
//! serialises every test touching process-global state (`simd::force`, `pool::set_num_threads`)
//! or comparing two kernel runs bitwise.

/// Call `$body` with the type alias `$t` bound to each of the four input kinds.
macro_rules! for_each_kind {
    ($t:ident => $body:block) => {{
        {
            type $t = f32;
            $body
        }
        {
            type $t = f64;
            $body
        }
        {
            type $t = $crate::core::dtype::Bf16Bits;
            $body
        }
        {
            type $t = $crate::core::dtype::F16Bits;
            $body
        }
    }};
}

/// The same over the three kinds the SIMD lanes read (`dtype::Source`): f32, bf16, f16.
macro_rules! for_each_simd_kind {
    ($t:ident => $body:block) => {{
        {
            type $t = f32;
            $body
        }
        {
            type $t = $crate::core::dtype::Bf16Bits;
            $body
        }
        {
            type $t = $crate::core::dtype::F16Bits;
            $body
        }
    }};
}

mod cov;
mod distance;
mod linear;
mod matrix;
mod plogp;
mod pool;
mod renyi;
mod segment;
mod select;
mod simd;
mod tile;
mod token;
mod topk;

use std::sync::{Mutex, MutexGuard};

use half::{bf16, f16};

use crate::core::dtype::{Bf16Bits, F16Bits};
use crate::core::error::Error;
#[cfg(target_arch = "x86_64")]
use crate::core::simd::{Avx2, Avx512};
use crate::core::simd::{Lanes, Level, Scalar};
use crate::core::token::Element;

// ---------------------------------------------------------------------------------------------
// Serialisation of process-global state
// ---------------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Held by a test that forces a SIMD level, changes the thread count, or compares two kernel runs
/// bitwise (another test forcing a level in between would change the bits). Dropping it restores
/// automatic dispatch, also when the test panics.
pub struct Serial {
    _guard: MutexGuard<'static, ()>,
}

impl Drop for Serial {
    fn drop(&mut self) {
        crate::core::simd::force(None);
    }
}

/// Take the global test lock (a panicking holder does not poison the others).
pub fn serial() -> Serial {
    Serial {
        _guard: SERIAL.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// Run `f` once per level this CPU supports, with that level forced; returns the levels run.
/// Every caller asserts that at least `Scalar` ran (see [`assert_levels`]).
pub fn each_level(_serial: &Serial, mut f: impl FnMut(Level)) -> Vec<Level> {
    let mut ran = Vec::new();
    for level in crate::core::simd::supported() {
        assert!(crate::core::simd::force(Some(level)), "forcing {level:?}");
        assert_eq!(crate::core::simd::level(), level);
        f(level);
        ran.push(level);
    }
    crate::core::simd::force(None);
    ran
}

/// The report of [`each_level`]: every supported level ran, Scalar among them.
pub fn assert_levels(ran: &[Level]) {
    assert!(ran.contains(&Level::Scalar), "levels run: {ran:?}");
    assert_eq!(ran, crate::core::simd::supported().as_slice());
}

/// Put the pool back to one worker per CPU after a test that changed it (under [`serial`]).
pub fn restore_threads() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::core::pool::set_num_threads(n);
}

// ---------------------------------------------------------------------------------------------
// Lane-generic test bodies run at one level
// ---------------------------------------------------------------------------------------------

/// A test body generic over the lanes, run by [`on_level`] inside a `#[target_feature]` frame.
pub trait LaneTest {
    type Out;
    /// # Safety
    /// The CPU must support `L`.
    unsafe fn run<L: Lanes>(&self) -> Self::Out;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn on_avx2<T: LaneTest>(t: &T) -> T::Out {
    t.run::<Avx2>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn on_avx512<T: LaneTest>(t: &T) -> T::Out {
    t.run::<Avx512>()
}

/// Run `t` with the lanes of `level` (which must be supported; checked).
pub fn on_level<T: LaneTest>(level: Level, t: &T) -> T::Out {
    assert!(
        crate::core::simd::supported().contains(&level),
        "{level:?} is not supported here"
    );
    // SAFETY: the CPU supports `level` (checked above).
    unsafe {
        match level {
            Level::Scalar => t.run::<Scalar>(),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => on_avx2(t),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => on_avx512(t),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("only Scalar exists off x86_64"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic PRNG (splitmix64)
// ---------------------------------------------------------------------------------------------

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Shapes of random rows (values before conversion to the element kind).
#[derive(Copy, Clone, Debug)]
pub enum Shape {
    /// N(0, 3²): a typical spread of LM logits.
    Normal,
    /// Uniform in `[−40, 40]`: many entries below the exp floor relative to the maximum.
    Wide,
    /// N(0, 1) with one entry 25 above: nearly one-hot, entropy near 0, the tail near `2^−24`
    /// of the maximum at some temperatures (see also
    /// `token::dominant_entry_over_flat_tail_meets_accuracy_target`).
    Peaked,
    /// N(0, 2²) with about 20 % of the entries masked by `−∞` (at least one finite entry).
    Masked,
}

pub const SHAPES: [Shape; 4] = [Shape::Normal, Shape::Wide, Shape::Peaked, Shape::Masked];

pub fn random_row(rng: &mut Rng, v: usize, shape: Shape) -> Vec<f64> {
    let mut row: Vec<f64> = match shape {
        Shape::Normal => (0..v).map(|_| 3.0 * rng.normal()).collect(),
        Shape::Wide => (0..v).map(|_| rng.uniform(-40.0, 40.0)).collect(),
        Shape::Peaked => {
            let mut r: Vec<f64> = (0..v).map(|_| rng.normal()).collect();
            let i = rng.below(v);
            r[i] += 25.0;
            r
        }
        Shape::Masked => (0..v)
            .map(|_| {
                if rng.chance(0.2) {
                    f64::NEG_INFINITY
                } else {
                    2.0 * rng.normal()
                }
            })
            .collect(),
    };
    if row.iter().all(|x| *x == f64::NEG_INFINITY) {
        let i = rng.below(v);
        row[i] = rng.normal();
    }
    row
}

// ---------------------------------------------------------------------------------------------
// Element kinds under test
// ---------------------------------------------------------------------------------------------

/// An input kind: conversion from f64 (rounding to nearest, via `half` for the 16-bit kinds) and
/// an exact widening written independently of the crate (via `half`).
pub trait Kind: Element + std::fmt::Debug + PartialEq {
    const NAME: &'static str;
    fn from_f64(x: f64) -> Self;
    fn exact(self) -> f64;
}

impl Kind for f32 {
    const NAME: &'static str = "f32";
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn exact(self) -> f64 {
        self as f64
    }
}

impl Kind for f64 {
    const NAME: &'static str = "f64";
    fn from_f64(x: f64) -> Self {
        x
    }
    fn exact(self) -> f64 {
        self
    }
}

impl Kind for Bf16Bits {
    const NAME: &'static str = "bf16";
    fn from_f64(x: f64) -> Self {
        Bf16Bits(bf16::from_f64(x).to_bits())
    }
    fn exact(self) -> f64 {
        bf16::from_bits(self.0).to_f64()
    }
}

impl Kind for F16Bits {
    const NAME: &'static str = "f16";
    fn from_f64(x: f64) -> Self {
        F16Bits(f16::from_f64(x).to_bits())
    }
    fn exact(self) -> f64 {
        f16::from_bits(self.0).to_f64()
    }
}

pub fn convert<E: Kind>(values: &[f64]) -> Vec<E> {
    values.iter().map(|&x| E::from_f64(x)).collect()
}

pub fn widen<E: Kind>(values: &[E]) -> Vec<f64> {
    values.iter().map(|&x| x.exact()).collect()
}

// ---------------------------------------------------------------------------------------------
// The float64 direct oracle
// ---------------------------------------------------------------------------------------------

/// `token.md` §2 evaluated directly in float64 on `z' = z / t` (two passes: max, then sums).
#[derive(Copy, Clone, Debug)]
pub struct Oracle {
    pub m: f64,
    pub s: f64,
    pub w: f64,
    pub q: f64,
    /// Number of finite entries.
    pub finite: usize,
}

impl Oracle {
    /// `None` for a row without a finite entry. Entries must not be NaN or `+∞`.
    pub fn new(row: &[f64], t: f64) -> Option<Oracle> {
        let m = row.iter().map(|&z| z / t).fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            return None;
        }
        let mut o = Oracle {
            m,
            s: 0.0,
            w: 0.0,
            q: 0.0,
            finite: 0,
        };
        for &z in row {
            if z == f64::NEG_INFINITY {
                continue;
            }
            let x = z / t - m;
            let e = x.exp();
            o.s += e;
            o.w += x * e;
            o.q += e * e;
            o.finite += 1;
        }
        Some(o)
    }

    pub fn lse(&self) -> f64 {
        self.m + self.s.ln()
    }

    pub fn entropy(&self) -> f64 {
        self.s.ln() - self.w / self.s
    }

    pub fn collision(&self) -> f64 {
        self.q / (self.s * self.s)
    }

    pub fn logprob(&self, z_y: f64, t: f64) -> f64 {
        if z_y == f64::NEG_INFINITY {
            return f64::NEG_INFINITY;
        }
        (z_y / t - self.m) - self.s.ln()
    }

    /// `H_α` from the definition (`token.md` §6), summed directly in float64.
    pub fn renyi(row: &[f64], t: f64, alpha: f64) -> f64 {
        let o = Oracle::new(row, t).expect("a finite entry");
        if alpha == 0.0 {
            return (o.finite as f64).ln();
        }
        if alpha == f64::INFINITY {
            return o.s.ln();
        }
        if alpha == 1.0 {
            return o.entropy();
        }
        let s_alpha: f64 = row
            .iter()
            .filter(|z| **z != f64::NEG_INFINITY)
            .map(|&z| (alpha * (z / t - o.m)).exp())
            .sum();
        (s_alpha.ln() - alpha * o.s.ln()) / (1.0 - alpha)
    }
}

// ---------------------------------------------------------------------------------------------
// Tolerances and error checks
// ---------------------------------------------------------------------------------------------

/// The `conventions.md` bound: relative 1e-5, absolute 1e-5 where `|want| < 1`. Infinite values
/// must match exactly.
pub fn assert_close(got: f32, want: f64, what: &str) {
    assert_within(got, want, 1e-5, what);
}

pub fn assert_within(got: f32, want: f64, tol: f64, what: &str) {
    if want.is_infinite() || got.is_infinite() {
        assert_eq!(got as f64, want, "{what}");
        return;
    }
    let err = (got as f64 - want).abs();
    assert!(
        err <= tol * want.abs().max(1.0),
        "{what}: got {got:e}, want {want:e}, error {err:e}"
    );
}

/// Purely relative: for values that are never near 0 (collision `≥ 1/V_fin`).
pub fn assert_rel(got: f32, want: f64, tol: f64, what: &str) {
    let err = (got as f64 - want).abs();
    assert!(
        err <= tol * want.abs(),
        "{what}: got {got:e}, want {want:e}, relative error {:e}",
        err / want.abs()
    );
}

/// A `ValueError` naming `arg` whose message contains every one of `needles`.
pub fn assert_value_error<T: std::fmt::Debug>(
    result: crate::core::error::Result<T>,
    arg: &str,
    needles: &[&str],
) {
    match result {
        Err(Error::Value {
            arg: got,
            ref message,
        }) => {
            assert_eq!(got, arg, "error names the argument (message: {message})");
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "message {message:?} lacks {needle:?}"
                );
            }
        }
        other => panic!("expected a ValueError on {arg}, got {other:?}"),
    }
}

/// Bit patterns of a float32 vector (NaN payloads included), for bitwise comparisons.
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn oracle_matches_hand_values() {
    // Two equal logits: H = ln 2, Σp² = 1/2, ℓ = −ln 2, LSE = z + ln 2.
    let o = Oracle::new(&[3.0, 3.0], 1.0).unwrap();
    assert!((o.entropy() - std::f64::consts::LN_2).abs() < 1e-15);
    assert!((o.collision() - 0.5).abs() < 1e-15);
    assert!((o.logprob(3.0, 1.0) + std::f64::consts::LN_2).abs() < 1e-15);
    assert!((o.lse() - 3.0 - std::f64::consts::LN_2).abs() < 1e-15);
    // Masked entries are skipped; an all-masked row has no state.
    let o = Oracle::new(&[f64::NEG_INFINITY, 1.0], 0.5).unwrap();
    assert_eq!((o.finite, o.s, o.w, o.entropy()), (1, 1.0, 0.0, 0.0));
    assert!(Oracle::new(&[f64::NEG_INFINITY; 3], 1.0).is_none());
    // Rényi of a uniform row is ln V for every order.
    for alpha in [0.0, 0.5, 2.0, f64::INFINITY] {
        assert!((Oracle::renyi(&[1.0; 5], 1.0, alpha) - 5f64.ln()).abs() < 1e-14);
    }
}

#[test]
fn rng_is_deterministic_and_spread() {
    let (mut a, mut b) = (Rng::new(7), Rng::new(7));
    for _ in 0..100 {
        assert_eq!(a.next_u64(), b.next_u64());
    }
    let mean = (0..10_000).map(|_| a.unit()).sum::<f64>() / 10_000.0;
    assert!((mean - 0.5).abs() < 0.02, "{mean}");
    let var = (0..10_000).map(|_| a.normal().powi(2)).sum::<f64>() / 10_000.0;
    assert!((var - 1.0).abs() < 0.1, "{var}");
}
