//! The exact top-ρ selection (`rollout.md` §3) against a sort, on both of its paths: the sampled
//! bracket (units of 2^21 values and more) and the exact-histogram path (smaller units, and the
//! fallback when a sample misleads).

use super::Rng;
use crate::core::select::{high_entropy_select, Method, NanPolicy};

/// The spec's rule by sorting: `(mask, threshold)`.
fn oracle(values: &[f32], valid: Option<&[u8]>, rho: f64, method: Method) -> (Vec<u8>, f64) {
    let taken: Vec<usize> = (0..values.len())
        .filter(|&i| valid.is_none_or(|v| v[i] != 0) && !values[i].is_nan())
        .collect();
    let mut x: Vec<f32> = taken.iter().map(|&i| values[i]).collect();
    x.sort_by(f32::total_cmp);
    let n = x.len();
    let mut mask = vec![0u8; values.len()];
    if n == 0 {
        return (mask, f64::NAN);
    }
    let h = crate::core::select::snapped((n - 1) as f64 * (1.0 - rho));
    let (cut, tau) = match method {
        Method::Linear => {
            let (a, b) = (x[h.floor() as usize], x[h.ceil() as usize]);
            (b, a as f64 + (h - h.floor()) * (b as f64 - a as f64))
        }
        Method::TopK => {
            let k = crate::core::select::snapped(rho * n as f64).ceil() as usize;
            if k == 0 {
                return (mask, f64::NAN);
            }
            let v = x[n - k];
            let mut ties = k - x.iter().filter(|&&y| y > v).count();
            for &i in &taken {
                if values[i] > v || (values[i] == v && ties > 0) {
                    if values[i] == v {
                        ties -= 1;
                    }
                    mask[i] = 1;
                }
            }
            return (mask, v as f64);
        }
        _ => unreachable!("the oracle covers linear and topk"),
    };
    for &i in &taken {
        mask[i] = (values[i] >= cut) as u8;
    }
    (mask, tau)
}

fn check(values: &[f32], valid: Option<&[u8]>, rho: f64, method: Method, policy: NanPolicy) {
    let mut out = vec![7u8; values.len()];
    let got = high_entropy_select(values, valid, rho, method, policy, &mut out).unwrap();
    let (want, tau) = oracle(values, valid, rho, method);
    assert!(
        out == want,
        "mask differs: n = {}, rho = {rho}, {method:?}",
        values.len()
    );
    assert_eq!(got.kept, want.iter().filter(|&&m| m == 1).count());
    assert!(got.threshold == tau || (got.threshold.is_nan() && tau.is_nan()));
}

fn gamma_like(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (-(rng.unit().max(1e-12)).ln() * 0.3).powi(2) as f32)
        .collect()
}

#[test]
fn sampled_path_is_exact_for_both_methods_and_masks() {
    let mut rng = Rng::new(5);
    let n = (1 << 21) + 12_345;
    let values = gamma_like(&mut rng, n);
    let mask: Vec<u8> = (0..n).map(|_| rng.chance(0.9) as u8).collect();
    for rho in [0.2, 0.0, 1.0, 0.37] {
        check(&values, None, rho, Method::Linear, NanPolicy::Raise);
        check(&values, Some(&mask), rho, Method::Linear, NanPolicy::Raise);
        check(&values, Some(&mask), rho, Method::TopK, NanPolicy::Raise);
    }
}

#[test]
fn sampled_path_with_heavy_ties_and_omitted_nans() {
    let mut rng = Rng::new(6);
    let n = 1 << 21;
    let mut values: Vec<f32> = (0..n).map(|_| (rng.below(7) as f32) * 0.5).collect();
    for i in (0..n).step_by(997) {
        values[i] = f32::NAN;
    }
    check(&values, None, 0.2, Method::Linear, NanPolicy::Omit);
    check(&values, None, 0.2, Method::TopK, NanPolicy::Omit);
    let mut out = vec![0u8; n];
    let raised = high_entropy_select(
        &values,
        None,
        0.2,
        Method::Linear,
        NanPolicy::Raise,
        &mut out,
    );
    assert!(raised
        .unwrap_err()
        .to_string()
        .starts_with("entropy: valid token 0 is NaN"));
    let emptied = high_entropy_select(
        &values,
        None,
        0.2,
        Method::Linear,
        NanPolicy::Propagate,
        &mut out,
    )
    .unwrap();
    assert!(emptied.threshold.is_nan() && out.iter().all(|&m| m == 0));
}

#[test]
fn a_misleading_sample_falls_back_to_the_exact_path() {
    // Every value the strided sample reads is huge; all the others are small, so the sampled
    // bracket misses the wanted ranks and the exact histogram path must take over.
    let mut rng = Rng::new(7);
    let n = 1 << 22;
    let stride = n / (1 << 18);
    let values: Vec<f32> = (0..n)
        .map(|i| {
            if i % stride == 0 {
                1e6 + rng.unit() as f32
            } else {
                rng.unit() as f32
            }
        })
        .collect();
    check(&values, None, 0.2, Method::Linear, NanPolicy::Raise);
    check(&values, None, 0.5, Method::TopK, NanPolicy::Raise);
}

#[test]
fn signed_zeros_tie_at_a_cut_at_zero() {
    // −0 == +0: a cut at zero keeps both, on the histogram path and the sampled one.
    let small = [-0.0f32, 0.0, -1.5, 1.5, 0.0, 2.25];
    check(&small, None, 0.5, Method::Linear, NanPolicy::Raise);
    let mut out = [0u8; 6];
    high_entropy_select(
        &small,
        None,
        0.5,
        Method::Linear,
        NanPolicy::Raise,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [1, 1, 0, 1, 1, 1]);
    let n = 1 << 21;
    let mut rng = Rng::new(10);
    let large: Vec<f32> = (0..n)
        .map(|i| match i % 4 {
            0 => -0.0,
            1 => 0.0,
            _ => rng.unit() as f32 - 2.0,
        })
        .collect();
    for rho in [0.5, 0.3] {
        check(&large, None, rho, Method::Linear, NanPolicy::Raise);
        check(&large, None, rho, Method::TopK, NanPolicy::Raise);
    }
}

#[test]
fn small_units_use_the_histogram_path_exactly() {
    let mut rng = Rng::new(8);
    for n in [1usize, 2, 3, 17, 1000, 70_000] {
        let values = gamma_like(&mut rng, n);
        for rho in [0.0, 0.2, 0.5, 1.0] {
            check(&values, None, rho, Method::Linear, NanPolicy::Raise);
            check(&values, None, rho, Method::TopK, NanPolicy::Raise);
        }
    }
}

#[test]
fn every_simd_level_marks_the_same_values() {
    // The marking pass has a scalar and an AVX2 form; both must give the sorted oracle's mask,
    // with masks, omitted NaN (both signs, whose keys sort outside every bracket), ties and
    // lengths that end inside a block and inside a task chunk.
    let serial = super::serial();
    let mut rng = Rng::new(9);
    let n = (1 << 21) + 77;
    let mut values = gamma_like(&mut rng, n);
    for i in (0..n).step_by(4099) {
        values[i] = if i % 2 == 0 { f32::NAN } else { -f32::NAN };
    }
    for i in (3..n).step_by(5) {
        values[i] = 0.25;
    }
    for i in (1..n).step_by(7) {
        values[i] = if i % 2 == 0 { -0.0 } else { 0.0 };
    }
    let mask: Vec<u8> = (0..n).map(|_| rng.chance(0.8) as u8 * 3).collect();
    let ran = super::each_level(&serial, |_| {
        for len in [n, 1000, 33] {
            let (v, m) = (&values[..len], &mask[..len]);
            check(v, None, 0.2, Method::Linear, NanPolicy::Omit);
            check(v, Some(m), 0.2, Method::Linear, NanPolicy::Omit);
            check(v, Some(m), 0.1, Method::TopK, NanPolicy::Omit);
        }
    });
    super::assert_levels(&ran);
}
