//! Entropy of probability rows (`more.md` §1): the float64 oracle for every kind, zeros, `eps`,
//! NaN policy, invalid entries and thread-count invariance.

use super::{assert_value_error, bits, convert, restore_threads, serial, widen, Kind, Rng};
use crate::core::plogp::prob_entropy;
use crate::core::pool;

fn probability_rows(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let mut row: Vec<f64> = (0..cols)
            .map(|j| {
                // Every third row has zeros (a causal or masked attention row).
                if r % 3 == 0 && j % 4 == 1 {
                    0.0
                } else {
                    (3.0 * rng.normal()).exp()
                }
            })
            .collect();
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|p| *p /= s);
        out.extend(row);
    }
    out
}

fn oracle(p: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    p.chunks(cols)
        .map(|row| {
            -row.iter()
                .filter(|&&x| x > 0.0)
                .map(|&x| x * (x + eps).ln())
                .sum::<f64>()
        })
        .collect()
}

fn check_kind<E: Kind>() {
    let mut rng = Rng::new(7);
    for &(rows, cols) in &[(1usize, 1usize), (5, 3), (37, 64), (9, 1000)] {
        let values: Vec<E> = convert(&probability_rows(&mut rng, rows, cols));
        let exact = widen(&values);
        for eps in [0.0, 1e-9] {
            let got = prob_entropy(&values, cols, eps, false).unwrap();
            for (g, w) in got.iter().zip(oracle(&exact, cols, eps)) {
                assert!(
                    ((*g as f64) - w).abs() <= 2e-6 * w.abs().max(1.0),
                    "{} rows {rows} cols {cols} eps {eps}: {g} vs {w}",
                    E::NAME
                );
            }
        }
    }
}

#[test]
fn matches_the_float64_oracle_for_every_kind() {
    for_each_kind!(T => { check_kind::<T>(); });
}

#[test]
fn uniform_rows_give_log_k_and_one_hot_rows_zero() {
    let k = 8;
    let uniform = vec![1.0f32 / k as f32; 2 * k];
    for h in prob_entropy(&uniform, k, 0.0, false).unwrap() {
        assert!((h as f64 - (k as f64).ln()).abs() < 1e-6);
    }
    let mut one_hot = vec![0.0f64; k];
    one_hot[3] = 1.0;
    assert_eq!(prob_entropy(&one_hot, k, 0.0, false).unwrap(), vec![0.0]);
}

#[test]
fn tiny_and_subnormal_probabilities_are_exact_terms() {
    // f32 subnormals, the smallest normal, and values around every power of two below 1.
    let mut row: Vec<f32> = vec![1e-44, 1e-40, 1.1754944e-38, 3e-30];
    row.extend((1..40).map(|k| 0.7f32.powi(k)));
    let exact: Vec<f64> = row.iter().map(|&p| p as f64).collect();
    let want = oracle(&exact, row.len(), 0.0)[0];
    let got = prob_entropy(&row, row.len(), 0.0, false).unwrap()[0] as f64;
    assert!((got - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
}

#[test]
fn nan_policy_and_invalid_entries() {
    let p = [0.5f32, 0.5, f32::NAN, 1.0, 0.25, 0.75];
    let got = prob_entropy(&p, 2, 0.0, true).unwrap();
    assert!((got[0] as f64 - 2f64.ln()).abs() < 1e-6 && got[1].is_nan() && got[2] > 0.0);
    assert_value_error(prob_entropy(&p, 2, 0.0, false), "attn", &["row 1", "NaN"]);
    assert_value_error(
        prob_entropy(&[0.5f64, -0.5], 2, 0.0, true),
        "attn",
        &["row 0", ">= 0"],
    );
    assert_value_error(
        prob_entropy(&[f64::INFINITY, 0.0], 2, 0.0, true),
        "attn",
        &[">= 0"],
    );
    assert_value_error(
        prob_entropy(&[0.5f32; 3], 2, 0.0, false),
        "attn",
        &["rows of 2"],
    );
    assert_value_error(
        prob_entropy(&[0.5f32; 2], 0, 0.0, false),
        "attn",
        &["empty"],
    );
    assert_value_error(prob_entropy(&[0.5f32; 2], 2, -1.0, false), "eps", &[">= 0"]);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let _guard = serial();
    let mut rng = Rng::new(11);
    let values: Vec<f32> = convert(&probability_rows(&mut rng, 300, 512));
    pool::set_num_threads(1);
    let one = prob_entropy(&values, 512, 0.0, false).unwrap();
    pool::set_num_threads(3);
    let three = prob_entropy(&values, 512, 0.0, false).unwrap();
    restore_threads();
    assert_eq!(bits(&one), bits(&three));
}
