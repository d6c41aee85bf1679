//! Rényi entropies (`token.md` §6): the oracle at every order, the ordering, continuity through
//! α = 1, errors and NaN policy, and thread-count invariance.

use super::{
    assert_close, assert_value_error, assert_within, bits, convert, random_row, restore_threads,
    serial, widen, Kind, Oracle, Rng, SHAPES,
};
use crate::core::pool;
use crate::core::renyi::{renyi_entropy, NEAR_ONE};
use crate::core::token::{token_stats, Temperature, TokenArgs};

const ALPHAS: [f64; 9] = [
    0.0,
    0.5,
    2.0,
    3.0,
    f64::INFINITY,
    1.0 - 5e-5,
    1.0 + 5e-5,
    0.999,
    10.0,
];

fn batch<E: Kind>(rng: &mut Rng, rows: usize, v: usize) -> Vec<E> {
    let mut values = Vec::new();
    for r in 0..rows {
        values.extend(random_row(rng, v, SHAPES[r % SHAPES.len()]));
    }
    convert(&values)
}

fn shannon<E: Kind>(logits: &[E], v: usize, t: f64) -> Vec<f32> {
    let a = TokenArgs {
        vocab: v,
        temperature: Temperature::Scalar(t),
        labels: None,
        ignore_index: None,
        collision: true,
        lse: false,
        propagate_nan: false,
    };
    token_stats(logits, &a).unwrap().entropy
}

#[test]
fn matches_oracle_at_every_order() {
    let mut rng = Rng::new(41);
    for_each_kind!(E => {
        for v in [1usize, 2, 7, 33, 2047, 2049, 32000] {
            let rows = 5;
            let logits: Vec<E> = batch(&mut rng, rows, v);
            let wide = widen(&logits);
            let ts = [0.6, 1.0, 1.5, 0.7, 2.0];
            for temperature in [
                Temperature::Scalar(1.0),
                Temperature::Scalar(0.7),
                Temperature::PerRow(&ts),
            ] {
                for alpha in ALPHAS {
                    let got = renyi_entropy(&logits, v, alpha, temperature, false).unwrap();
                    assert_eq!(got.len(), rows);
                    for r in 0..rows {
                        let t = match temperature {
                            Temperature::Scalar(t) => t,
                            Temperature::PerRow(ts) => ts[r],
                        };
                        let want = Oracle::renyi(&wide[r * v..(r + 1) * v], t, alpha);
                        let what = format!("{} V={v} t={t} alpha={alpha} row {r}", E::NAME);
                        assert_close(got[r], want, &what);
                        assert!(got[r] >= 0.0, "{what}");
                    }
                }
            }
        }
    });
}

#[test]
fn orders_are_ordered_and_h2_is_minus_log_collision() {
    let mut rng = Rng::new(42);
    for_each_kind!(E => {
        for v in [2usize, 9, 2049, 5000] {
            let rows = 8;
            let logits: Vec<E> = batch(&mut rng, rows, v);
            for t in [0.6, 1.0, 1.5] {
                let at = |alpha: f64| {
                    renyi_entropy(&logits, v, alpha, Temperature::Scalar(t), false).unwrap()
                };
                let (h0, h_half, h2, h3, hinf) =
                    (at(0.0), at(0.5), at(2.0), at(3.0), at(f64::INFINITY));
                let h1 = shannon(&logits, v, t);
                let a = TokenArgs {
                    vocab: v,
                    temperature: Temperature::Scalar(t),
                    labels: None,
                    ignore_index: None,
                    collision: true,
                    lse: false,
                    propagate_nan: false,
                };
                let coll = token_stats(&logits, &a).unwrap().collision.unwrap();
                for r in 0..rows {
                    let what = format!("{} V={v} t={t} row {r}", E::NAME);
                    let chain = [hinf[r], h3[r], h2[r], h1[r], h_half[r], h0[r]];
                    for w in chain.windows(2) {
                        let slack = 1e-5 * (w[1].abs() as f64).max(1.0);
                        assert!(w[0] as f64 <= w[1] as f64 + slack, "{what}: {chain:?}");
                    }
                    assert_close(h2[r], -(coll[r] as f64).ln(), &what);
                }
            }
        }
    });
}

#[test]
fn continuous_through_one() {
    let mut rng = Rng::new(43);
    for_each_kind!(E => {
        for v in [3usize, 100, 3000] {
            let logits: Vec<E> = batch(&mut rng, 4, v);
            for t in [0.7, 1.0] {
                let h1 = shannon(&logits, v, t);
                let near = |alpha: f64| {
                    renyi_entropy(&logits, v, alpha, Temperature::Scalar(t), false).unwrap()
                };
                // Expansion on both sides of 1, closed form just outside the band.
                let (lo, hi) = (near(1.0 - 5e-5), near(1.0 + 5e-5));
                let (lo_out, hi_out) = (near(1.0 - 1.01 * NEAR_ONE), near(1.0 + 1.01 * NEAR_ONE));
                for r in 0..4 {
                    let what = format!("{} V={v} t={t} row {r}", E::NAME);
                    // |dH_α/dα| = Var/2 at 1: a step of 1e-4 moves H by at most ~1e-4 · Var.
                    let var_bound = 50.0;
                    for (x, d) in [(lo[r], 5e-5), (hi[r], 5e-5), (lo_out[r], 1e-4), (hi_out[r], 1e-4)]
                    {
                        assert_within(x, h1[r] as f64, d * var_bound, &what);
                    }
                    assert!(lo[r] >= hi[r] - 1e-6, "{what}: decreasing in alpha");
                }
            }
        }
    });
}

#[test]
fn special_rows() {
    for_each_kind!(E => {
        // Uniform: ln V for every order. With masked entries: ln V_fin.
        for v in [1usize, 5, 2049] {
            let logits = vec![E::from_f64(0.25); v];
            let mut masked = vec![E::from_f64(0.25); 2 * v];
            for j in (1..2 * v).step_by(2) {
                masked[j] = E::from_f64(f64::NEG_INFINITY);
            }
            for alpha in ALPHAS {
                for t in [1.0, 0.7] {
                    let what = format!("{} V={v} alpha={alpha} t={t}", E::NAME);
                    let got = renyi_entropy(&logits, v, alpha, Temperature::Scalar(t), false);
                    assert_within(got.unwrap()[0], (v as f64).ln(), 1e-6, &what);
                    let got =
                        renyi_entropy(&masked, 2 * v, alpha, Temperature::Scalar(t), false);
                    assert_within(got.unwrap()[0], (v as f64).ln(), 1e-6, &what);
                }
            }
        }
        // One-hot: 0 for every order (α = 0 counts one finite entry).
        let mut one = vec![E::from_f64(f64::NEG_INFINITY); 40];
        one[17] = E::from_f64(3.0);
        for alpha in ALPHAS {
            let got = renyi_entropy(&one, 40, alpha, Temperature::Scalar(0.9), false).unwrap();
            assert_eq!(got, [0.0], "{} alpha={alpha}", E::NAME);
        }
        // Huge and tiny orders stay finite and near H_∞ and H_0.
        let logits: Vec<E> = convert(&[0.0, -1.0, -2.0, -3.0]);
        let wide = widen(&logits);
        let hinf = Oracle::renyi(&wide, 1.0, f64::INFINITY);
        let h0 = Oracle::renyi(&wide, 1.0, 0.0);
        let big = renyi_entropy(&logits, 4, 1e12, Temperature::Scalar(1.0), false).unwrap();
        assert_close(big[0], hinf, "alpha = 1e12");
        let tiny = renyi_entropy(&logits, 4, 1e-12, Temperature::Scalar(1.0), false).unwrap();
        assert_close(tiny[0], h0, "alpha = 1e-12");
    });
}

#[test]
fn errors_and_nan_policy() {
    let logits = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    for alpha in [1.0, -0.5, f64::NAN, f64::NEG_INFINITY] {
        assert_value_error(
            renyi_entropy(&logits, 3, alpha, Temperature::Scalar(1.0), false),
            "alpha",
            &["other than 1"],
        );
    }
    assert_value_error(
        renyi_entropy(&logits, 0, 2.0, Temperature::Scalar(1.0), false),
        "logits",
        &["empty"],
    );
    assert_value_error(
        renyi_entropy(&logits, 3, 2.0, Temperature::Scalar(0.0), false),
        "temperature",
        &[],
    );
    assert_value_error(
        renyi_entropy(&logits, 3, 2.0, Temperature::PerRow(&[1.0]), false),
        "temperature",
        &["expected 2"],
    );
    for_each_kind!(E => {
        let rows = |values: &[f64]| -> Vec<E> { convert(values) };
        let ok = [1.0, 2.0, 3.0];
        let cases = [
            ([f64::NAN, 1.0, 2.0], "NaN"),
            ([1.0, f64::INFINITY, 2.0], "+inf"),
            ([f64::NEG_INFINITY; 3], "-inf"),
        ];
        for (bad, needle) in cases {
            let logits = rows(&[ok, bad, ok].concat());
            for alpha in [0.0, 0.5, 2.0, f64::INFINITY, 1.0 + 5e-5] {
                let run = |p| renyi_entropy(&logits, 3, alpha, Temperature::Scalar(1.0), p);
                assert_value_error(run(false), "logits", &["row 1", needle]);
                if needle == "NaN" {
                    let got = run(true).unwrap();
                    assert!(got[1].is_nan(), "{} alpha={alpha}", E::NAME);
                    let clean = rows(&[ok, ok, ok].concat());
                    let want =
                        renyi_entropy(&clean, 3, alpha, Temperature::Scalar(1.0), false).unwrap();
                    assert_eq!(bits(&[got[0], got[2]]), bits(&[want[0], want[2]]));
                } else {
                    assert_value_error(run(true), "logits", &["row 1", needle]);
                }
            }
        }
    });
    // A finite logit overflowing under the temperature names the temperature.
    assert_value_error(
        renyi_entropy(&[1.0f32, 3e38], 2, 2.0, Temperature::Scalar(0.01), false),
        "temperature",
        &["row 0"],
    );
    assert_value_error(
        renyi_entropy(&[1.0f64, 1e308], 2, 0.5, Temperature::Scalar(0.01), true),
        "temperature",
        &[],
    );
}

#[test]
fn empty_batch() {
    for_each_kind!(E => {
        let logits: Vec<E> = Vec::new();
        let got = renyi_entropy(&logits, 9, 2.0, Temperature::PerRow(&[]), false).unwrap();
        assert!(got.is_empty());
    });
}

#[test]
fn thread_count_invariance() {
    let _guard = serial();
    let mut rng = Rng::new(44);
    for_each_kind!(E => {
        let (rows, v) = (70, 4100);
        assert!(rows * v >= pool::PARALLEL_MIN_WORK);
        let logits: Vec<E> = batch(&mut rng, rows, v);
        for alpha in [0.5, 2.0, 1.0 + 5e-5] {
            let mut reference = None;
            for threads in [1, 2, 8] {
                pool::set_num_threads(threads);
                let got = renyi_entropy(&logits, v, alpha, Temperature::Scalar(0.8), false);
                let b = bits(&got.unwrap());
                match &reference {
                    None => reference = Some(b),
                    Some(r) => assert_eq!(&b, r, "{} alpha={alpha} {threads} threads", E::NAME),
                }
            }
            // And row by row, alone.
            let whole = reference.unwrap();
            for r in [0, 33, rows - 1] {
                let one = &logits[r * v..(r + 1) * v];
                let got = renyi_entropy(one, v, alpha, Temperature::Scalar(0.8), false).unwrap();
                assert_eq!(got[0].to_bits(), whole[r]);
            }
        }
    });
    restore_threads();
}
