//! The lanes of `simd/`: level selection, `exp_nonpositive` accuracy, exact bf16/f16 widening and
//! the primitive operations, at every level this CPU supports.

use half::{bf16, f16};

use super::{assert_levels, each_level, on_level, serial, LaneTest};
use crate::core::dtype::{as_bf16, as_f16, Bf16Bits, F16Bits, Source};
use crate::core::simd::{self, Lanes, Level, EXP_FLOOR};

/// Every supported level, tested without forcing (the lanes are called directly).
fn levels() -> Vec<Level> {
    simd::supported()
}

// ---------------------------------------------------------------------------------------------
// Levels
// ---------------------------------------------------------------------------------------------

#[test]
fn level_names_round_trip() {
    for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
        assert_eq!(Level::from_name(level.name()), Some(level));
    }
    assert_eq!(Level::from_name("sse2"), None);
    assert_eq!(Level::from_name(""), None);
    assert_eq!(Level::from_name("AVX2"), None);
}

#[test]
fn supported_is_best_first_and_ends_with_scalar() {
    let levels = simd::supported();
    assert_eq!(levels.last(), Some(&Level::Scalar));
    let ranks: Vec<u8> = levels.iter().map(|&l| l as u8).collect();
    assert!(ranks.windows(2).all(|w| w[0] > w[1]), "{levels:?}");
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        assert_eq!(levels.contains(&Level::Avx2), avx2);
        assert_eq!(
            levels.contains(&Level::Avx512),
            std::arch::is_x86_feature_detected!("avx512f")
        );
    }
    eprintln!("simd levels supported here: {levels:?}");
}

#[test]
fn force_selects_supported_levels_only() {
    let guard = serial();
    let best = simd::supported()[0];
    assert!(simd::force(None));
    assert_eq!(simd::level(), best);
    let ran = each_level(&guard, |level| assert_eq!(simd::level(), level));
    assert_levels(&ran);
    for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
        if simd::supported().contains(&level) {
            continue;
        }
        // Refused, and the level in force is unchanged.
        assert!(simd::force(Some(Level::Scalar)));
        assert!(!simd::force(Some(level)), "{level:?} is not supported");
        assert_eq!(simd::level(), Level::Scalar);
    }
    assert!(simd::force(None));
    assert_eq!(simd::level(), best);
}

// ---------------------------------------------------------------------------------------------
// exp_nonpositive
// ---------------------------------------------------------------------------------------------

/// `exp_nonpositive` over `xs` (a multiple of 16 long), optionally clamped at `EXP_FLOOR` first
/// as the kernels do.
struct Exp<'a> {
    xs: &'a [f32],
    clamp: bool,
}

impl LaneTest for Exp<'_> {
    type Out = Vec<f32>;

    #[inline(always)]
    unsafe fn run<L: Lanes>(&self) -> Vec<f32> {
        assert_eq!(self.xs.len() % 16, 0);
        let mut out = vec![0f32; self.xs.len()];
        let floor = L::splat(EXP_FLOOR);
        for i in (0..self.xs.len()).step_by(L::WIDTH) {
            let mut x = L::load_f32(self.xs.as_ptr().add(i));
            if self.clamp {
                x = L::max(x, floor);
            }
            L::store(out.as_mut_ptr().add(i), L::exp_nonpositive(x));
        }
        out
    }
}

fn exp_at(level: Level, xs: &[f32], clamp: bool) -> Vec<f32> {
    let mut padded = xs.to_vec();
    padded.resize(xs.len().div_ceil(16) * 16, 0.0);
    let mut out = on_level(level, &Exp { xs: &padded, clamp });
    out.truncate(xs.len());
    out
}

/// `|got − exact|` in units of the float32 ulp at `exact` (a normal float32 value).
fn ulp_error(got: f32, exact: f64) -> f64 {
    let exponent = ((exact.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let ulp = 2f64.powi(exponent.max(-126) - 23);
    (got as f64 - exact).abs() / ulp
}

/// Sample points of `[lo, 0]`: a stride through the float32 bit patterns (every binade) and a
/// uniform grid (every magnitude).
fn exp_samples(lo: f32) -> Vec<f32> {
    let mut xs = Vec::new();
    let last = lo.to_bits();
    let mut b = 0x8000_0000u32;
    while b <= last {
        xs.push(f32::from_bits(b));
        b += 997;
    }
    let n = 500_000;
    for i in 0..=n {
        xs.push(lo * (i as f32 / n as f32));
    }
    xs.push(lo);
    xs
}

fn max_ulp_error(level: Level, xs: &[f32]) -> (f64, f32) {
    let ys = exp_at(level, xs, false);
    let mut worst = (0.0, 0.0);
    for (&x, &y) in xs.iter().zip(&ys) {
        let e = ulp_error(y, (x as f64).exp());
        if e > worst.0 {
            worst = (e, x);
        }
    }
    worst
}

/// The documented accuracy (`simd/mod.rs`: "relative error about 2 ulp") over the whole range
/// the kernels use.
#[test]
fn exp_nonpositive_is_within_4_ulp_down_to_minus_87() {
    let xs = exp_samples(-87.0);
    for level in levels() {
        let (err, at) = max_ulp_error(level, &xs);
        eprintln!("exp_nonpositive {level:?}: max {err:.3} ulp on [-87, 0] (at x = {at})");
        assert!(err <= 4.0, "{level:?}: {err} ulp at x = {at}");
    }
}

#[test]
fn exp_nonpositive_is_within_2_ulp_where_terms_matter() {
    // Softmax terms within e^−5 of the maximum carry most of every sum.
    let xs = exp_samples(-5.0);
    for level in levels() {
        let (err, at) = max_ulp_error(level, &xs);
        assert!(err <= 2.0, "{level:?}: {err} ulp at x = {at}");
    }
}

#[test]
fn exp_nonpositive_relative_error_is_bounded_everywhere() {
    // A coarse bound on the whole range (the 4-ulp target is the ignored test above): a
    // regression to a wrong polynomial or reduction would break it by orders of magnitude.
    let xs = exp_samples(-87.0);
    for level in levels() {
        let ys = exp_at(level, &xs, false);
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = (x as f64).exp();
            let rel = (y as f64 - exact).abs() / exact;
            assert!(
                rel <= 1e-5,
                "{level:?}: exp({x}) = {y}, relative error {rel:e}"
            );
        }
    }
}

#[test]
fn exp_nonpositive_exact_points() {
    for level in levels() {
        let xs = [0.0, -0.0, EXP_FLOOR, -88.0, f32::NEG_INFINITY];
        let clamped = exp_at(level, &xs, true);
        assert_eq!(clamped[0].to_bits(), 1f32.to_bits(), "{level:?}: exp(0)");
        assert_eq!(clamped[1].to_bits(), 1f32.to_bits(), "{level:?}: exp(-0)");
        for (i, y) in clamped[2..].iter().enumerate() {
            assert_eq!(y.to_bits(), 0f32.to_bits(), "{level:?}: entry {i}: {y}");
        }
        // Unclamped −88 is also exactly 0, and every value just above the floor is tiny,
        // finite and non-negative.
        let unclamped = exp_at(level, &[-88.0, 0.0], false);
        assert_eq!(unclamped, [0.0, 1.0], "{level:?}");
        let near: Vec<f32> = (0..=1000).map(|i| -88.0 + i as f32 * 1e-3).collect();
        for (x, y) in near.iter().zip(exp_at(level, &near, false)) {
            assert!((0.0..=2e-38).contains(&y), "{level:?}: exp({x}) = {y}");
        }
        // Never above 1 on [−1, 0].
        let small: Vec<f32> = (0..=10_000).map(|i| -(i as f32) * 1e-4).collect();
        assert!(exp_at(level, &small, false).iter().all(|&y| y <= 1.0));
    }
}

// ---------------------------------------------------------------------------------------------
// Widening
// ---------------------------------------------------------------------------------------------

/// Widen `bits` (a multiple of 16 long) with the lanes' bf16 or f16 loads.
struct Widen<'a> {
    bits: &'a [u16],
    bf16: bool,
}

impl LaneTest for Widen<'_> {
    type Out = Vec<f32>;

    #[inline(always)]
    unsafe fn run<L: Lanes>(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.bits.len()];
        for i in (0..self.bits.len()).step_by(L::WIDTH) {
            let p = self.bits.as_ptr().add(i);
            let v = if self.bf16 {
                L::load_bf16(p)
            } else {
                L::load_f16(p)
            };
            L::store(out.as_mut_ptr().add(i), v);
        }
        out
    }
}

fn same_value(got: f32, want: f32) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else {
        got.to_bits() == want.to_bits()
    }
}

#[test]
fn bf16_widening_is_exact_for_all_bit_patterns() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<f32> = all.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
    for level in levels() {
        let got = on_level(
            level,
            &Widen {
                bits: &all,
                bf16: true,
            },
        );
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(same_value(g, w), "{level:?}: bf16 {i:#06x}: {g} vs {w}");
            // bf16 is the upper half of an f32: the bits themselves, NaN payloads included.
            assert_eq!(g.to_bits(), (i as u32) << 16, "{level:?}: bf16 {i:#06x}");
        }
    }
    for (i, &w) in want.iter().enumerate() {
        assert!(same_value(Bf16Bits(i as u16).to_f32(), w), "bf16 {i:#06x}");
    }
}

#[test]
fn f16_widening_is_exact_for_all_bit_patterns() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<f32> = all.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    for level in levels() {
        let got = on_level(
            level,
            &Widen {
                bits: &all,
                bf16: false,
            },
        );
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(same_value(g, w), "{level:?}: f16 {i:#06x}: {g} vs {w}");
            // Independently of `half`: the value of the pattern, subnormals and signed zeros
            // included.
            let sign = if i & 0x8000 != 0 { -1.0 } else { 1.0 };
            let (e, m) = ((i >> 10) & 0x1f, (i & 0x3ff) as f64);
            let exact = match e {
                0 => sign * m * 2f64.powi(-24),
                31 if m == 0.0 => sign * f64::INFINITY,
                31 => f64::NAN,
                _ => sign * (1.0 + m / 1024.0) * 2f64.powi(e as i32 - 15),
            };
            assert!(
                same_value(g, exact as f32) && (exact != 0.0 || g.to_bits() == w.to_bits()),
                "{level:?}: f16 {i:#06x}: {g} vs {exact}"
            );
        }
    }
    for (i, &w) in want.iter().enumerate() {
        assert!(same_value(F16Bits(i as u16).to_f32(), w), "f16 {i:#06x}");
    }
}

#[test]
fn raw_bit_slices_reinterpret_in_place() {
    let raw = [0x3f80u16, 0xc000, 0xff80, 0x3c00];
    let b = as_bf16(&raw);
    assert_eq!(b.len(), 4);
    assert_eq!(b.as_ptr() as usize, raw.as_ptr() as usize);
    assert_eq!(
        b.iter().map(|x| x.to_f32()).collect::<Vec<_>>()[..3],
        [1.0, -2.0, f32::NEG_INFINITY]
    );
    let h = as_f16(&raw);
    assert_eq!(h.as_ptr() as usize, raw.as_ptr() as usize);
    assert_eq!(h[3].to_f32(), 1.0);
    assert_eq!(Bf16Bits::NEG_INFINITY.to_f32(), f32::NEG_INFINITY);
    assert_eq!(F16Bits::NEG_INFINITY.to_f32(), f32::NEG_INFINITY);
    assert_eq!(<f32 as Source>::NEG_INFINITY, f32::NEG_INFINITY);
    assert!(as_bf16(&[]).is_empty() && as_f16(&[]).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Primitive operations
// ---------------------------------------------------------------------------------------------

/// Every primitive of [`Lanes`] on hand-picked lanes; panics name the check that failed.
struct Primitives;

impl Primitives {
    #[inline(always)]
    unsafe fn lanes<L: Lanes>(v: L::V) -> Vec<f32> {
        let mut out = [0f32; 16];
        L::store(out.as_mut_ptr(), v);
        out[..L::WIDTH].to_vec()
    }

    #[inline(always)]
    unsafe fn from<L: Lanes>(values: &[f32]) -> L::V {
        assert!(values.len() >= L::WIDTH);
        L::load_f32(values.as_ptr())
    }
}

impl LaneTest for Primitives {
    type Out = ();

    #[inline(always)]
    unsafe fn run<L: Lanes>(&self) {
        let w = L::WIDTH;
        assert!(w.is_power_of_two() && w <= 16);
        assert!((1..=2).contains(&L::UNROLL) && w * L::UNROLL <= 32);

        // Unaligned loads and stores, splat.
        let seq: Vec<f32> = (0..33).map(|i| i as f32).collect();
        assert_eq!(Self::lanes::<L>(Self::from::<L>(&seq[1..])), seq[1..=w]);
        assert_eq!(Self::lanes::<L>(L::splat(-2.5)), vec![-2.5; w]);

        // Arithmetic.
        let a = Self::from::<L>(&seq[1..]);
        let b = L::splat(2.0);
        let expect = |f: &dyn Fn(f32) -> f32| (1..=w).map(|i| f(i as f32)).collect::<Vec<_>>();
        assert_eq!(Self::lanes::<L>(L::add(a, b)), expect(&|x| x + 2.0), "add");
        assert_eq!(Self::lanes::<L>(L::sub(a, b)), expect(&|x| x - 2.0), "sub");
        assert_eq!(Self::lanes::<L>(L::mul(a, b)), expect(&|x| x * 2.0), "mul");
        assert_eq!(Self::lanes::<L>(L::div(a, b)), expect(&|x| x / 2.0), "div");
        assert_eq!(
            Self::lanes::<L>(L::fmadd(a, b, L::splat(1.0))),
            expect(&|x| x * 2.0 + 1.0),
            "fmadd"
        );
        let m = L::max(a, L::splat(f32::NEG_INFINITY));
        assert_eq!(Self::lanes::<L>(m), seq[1..=w], "max with -inf");
        assert_eq!(
            Self::lanes::<L>(L::max(a, L::splat(4.5))),
            expect(&|x| x.max(4.5)),
            "max"
        );

        // Round to nearest, ties to even.
        for (x, r) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
            (-126.5, -126.0),
            (-127.49, -127.0),
            (0.49, 0.0),
        ] {
            let got = Self::lanes::<L>(L::round(L::splat(x)));
            assert!(got.iter().all(|g| *g == r), "round({x}) = {got:?}");
        }

        // 2^n exactly for n in [−126, 127]; n = −127 is exactly 0.
        for n in -126..=127 {
            let got = Self::lanes::<L>(L::pow2i(L::splat(n as f32)));
            let want = 2f64.powi(n) as f32;
            assert!(got.iter().all(|g| *g == want), "pow2i({n}) = {got:?}");
        }
        let zero = Self::lanes::<L>(L::pow2i(L::splat(-127.0)));
        assert!(
            zero.iter().all(|g| g.to_bits() == 0),
            "pow2i(-127) = {zero:?}"
        );

        // Horizontal max: the maximum in every lane position, among −∞ lanes.
        for p in 0..w {
            let mut v = vec![f32::NEG_INFINITY; 16];
            v[p] = -3.0;
            assert_eq!(L::hmax(Self::from::<L>(&v)), -3.0, "hmax lane {p}");
        }
        assert_eq!(
            L::hmax(L::splat(f32::NEG_INFINITY)),
            f32::NEG_INFINITY,
            "hmax of -inf"
        );

        // Widening accumulation and its sum in f64: 1 + (W−1)·2^−40 is not a float32 but is
        // exact in f64; twice the same vector doubles every lane.
        let mut v = vec![2f32.powi(-40); 16];
        v[0] = 1.0;
        let want = 1.0 + (w as f64 - 1.0) * 2f64.powi(-40);
        let acc = L::dadd(L::dzero(), Self::from::<L>(&v));
        assert_eq!(L::dsum(acc), want, "dsum in f64");
        let acc = L::dadd(
            L::dadd(L::dzero(), Self::from::<L>(&seq)),
            Self::from::<L>(&seq),
        );
        assert_eq!(L::dsum(acc), (w * (w - 1)) as f64, "dadd lane by lane");

        // Bad-value flags: NaN and +∞ in any lane, never −∞ or finite values; sticky.
        let none = L::flag_none();
        assert!(!L::flag_any(none));
        for p in 0..w {
            for bad in [f32::NAN, -f32::NAN, f32::INFINITY] {
                let mut v = vec![1.0f32; 16];
                v[p] = bad;
                let flag = L::flag_bad(none, Self::from::<L>(&v));
                assert!(L::flag_any(flag), "flag {bad} in lane {p}");
                let flag = L::flag_bad(flag, L::splat(0.0));
                assert!(L::flag_any(flag), "flag stays set");
            }
        }
        for good in [
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            0.0,
            -0.0,
            f32::MIN_POSITIVE / 2.0,
        ] {
            let flag = L::flag_bad(none, L::splat(good));
            assert!(!L::flag_any(flag), "{good} is not bad");
        }

        // Prefetch never faults, whatever the address.
        L::prefetch(std::ptr::null());
        L::prefetch(usize::MAX as *const u8);
        L::prefetch(seq.as_ptr() as *const u8);
    }
}

#[test]
fn primitives_behave_at_every_level() {
    for level in levels() {
        on_level(level, &Primitives);
    }
}

#[test]
fn forced_levels_are_reported() {
    // The level-forcing helper runs every supported level, Scalar included.
    let guard = serial();
    let mut seen = Vec::new();
    let ran = each_level(&guard, |level| seen.push((level, simd::level())));
    assert_levels(&ran);
    assert!(seen.iter().all(|(a, b)| a == b));
    drop(guard);
    eprintln!("forced levels run: {ran:?}");
}
