//! Entropy from top-k log-probs (`token.md` §7): hand-computed values for every mode, the
//! ordering `truncated ≤ bucket ≤ lower ≤ H ≤ upper` on real distributions, and the errors.

use super::{assert_value_error, assert_within, bits, restore_threads, serial, Rng};
use crate::core::pool;
use crate::core::topk::{topk_entropy, TopkMode};

const MODES: [TopkMode; 6] = [
    TopkMode::Lower,
    TopkMode::Estimate,
    TopkMode::Upper,
    TopkMode::Truncated,
    TopkMode::Bucket,
    TopkMode::Renormalized,
];

fn h(x: f64) -> f64 {
    if x > 0.0 {
        -x * x.ln()
    } else {
        0.0
    }
}

fn one(row: &[f64], vocab: Option<usize>, mode: TopkMode) -> f32 {
    topk_entropy(row, row.len(), vocab, mode).unwrap()[0]
}

fn lp(ps: &[f64]) -> Vec<f64> {
    ps.iter().map(|p| p.ln()).collect()
}

#[test]
fn mode_names() {
    let names = [
        "lower",
        "estimate",
        "upper",
        "truncated",
        "bucket",
        "renormalized",
    ];
    for (name, mode) in names.iter().zip(MODES) {
        assert_eq!(TopkMode::from_name(name), Some(mode));
    }
    assert_eq!(TopkMode::from_name("Lower"), None);
    assert_eq!(TopkMode::from_name("mean"), None);
}

#[test]
fn hand_computed_half_quarter() {
    // p = (1/2, 1/4), V = 4: S = 3/4, τ = 1/4, c = 1/4, tail of m = 2 entries.
    // H_k = ln 2; upper = ln 2 + ¼ ln 8 = 1.75 ln 2; lower: n = 1, r = 0 → ln 2 + h(¼) = 1.5 ln 2.
    let row = lp(&[0.5, 0.25]);
    let ln2 = std::f64::consts::LN_2;
    let want = [
        (TopkMode::Truncated, ln2),
        (TopkMode::Bucket, 1.5 * ln2),
        (TopkMode::Lower, 1.5 * ln2),
        (TopkMode::Upper, 1.75 * ln2),
        (TopkMode::Estimate, 1.625 * ln2),
        // p / S = (2/3, 1/3).
        (TopkMode::Renormalized, 3f64.ln() - 2.0 / 3.0 * ln2),
    ];
    for (mode, value) in want {
        assert_within(one(&row, Some(4), mode), value, 1e-6, &format!("{mode:?}"));
    }
    // V = 3: one tail entry, n + 1 = 2 > m = 1, so lower = upper = ln 2 + ¼ ln 4 = 1.5 ln 2.
    for mode in [TopkMode::Lower, TopkMode::Estimate, TopkMode::Upper] {
        assert_within(
            one(&row, Some(3), mode),
            1.5 * ln2,
            1e-6,
            &format!("{mode:?}"),
        );
    }
}

#[test]
fn hand_computed_several_tail_entries() {
    // p = (0.4, 0.1), V = 10: τ = 0.5, c = 0.1, n = 5, r = 0, m = 8.
    let row = lp(&[0.4, 0.1]);
    let hk = h(0.4) + h(0.1);
    let lower = hk + 5.0 * h(0.1);
    let upper = hk + 0.5 * (8.0f64 / 0.5).ln();
    let want = [
        (TopkMode::Truncated, hk),
        (TopkMode::Bucket, hk + h(0.5)),
        (TopkMode::Lower, lower),
        (TopkMode::Upper, upper),
        (TopkMode::Estimate, 0.5 * (lower + upper)),
        (TopkMode::Renormalized, h(0.8) + h(0.2)),
    ];
    for (mode, value) in want {
        assert_within(one(&row, Some(10), mode), value, 1e-6, &format!("{mode:?}"));
    }
    // p = (0.5, 0.2), V = 100: τ = 0.3, c = 0.2, n = 1, r = 0.1.
    let row = lp(&[0.5, 0.2]);
    let hk = h(0.5) + h(0.2);
    let lower = hk + h(0.2) + h(0.1);
    assert_within(one(&row, Some(100), TopkMode::Lower), lower, 1e-6, "lower");
    let upper = hk + 0.3 * (98.0f64 / 0.3).ln();
    assert_within(one(&row, Some(100), TopkMode::Upper), upper, 1e-6, "upper");
}

#[test]
fn full_support_gives_the_exact_entropy() {
    let ps = [0.5, 0.3, 0.2];
    let exact: f64 = ps.iter().map(|&p| h(p)).sum();
    let row = lp(&ps);
    for mode in MODES {
        let vocab = Some(3);
        assert_within(one(&row, vocab, mode), exact, 1e-6, &format!("{mode:?}"));
    }
    // S slightly above 1 (rounding): τ = 0, every bound is H_k.
    let row = lp(&[0.5005, 0.3, 0.2]);
    let hk: f64 = [0.5005, 0.3, 0.2].iter().map(|&p| h(p)).sum();
    for mode in [
        TopkMode::Lower,
        TopkMode::Estimate,
        TopkMode::Upper,
        TopkMode::Bucket,
    ] {
        assert_within(one(&row, Some(50), mode), hk, 1e-6, &format!("{mode:?}"));
    }
}

#[test]
fn absent_entries_are_skipped() {
    let ninf = f64::NEG_INFINITY;
    let dense = lp(&[0.5, 0.25]);
    let sparse = [0.5f64.ln(), ninf, 0.25f64.ln(), ninf];
    for mode in MODES {
        let a = one(&dense, Some(6), mode);
        let b = one(&sparse, Some(6), mode);
        assert_eq!(a.to_bits(), b.to_bits(), "{mode:?}");
    }
    // Rows of different fill in one batch.
    let batch = [0.0, ninf, 0.7f64.ln(), 0.2f64.ln()];
    let got = topk_entropy(&batch, 2, Some(5), TopkMode::Upper).unwrap();
    assert_eq!(got[0], 0.0);
    let hk = h(0.7) + h(0.2);
    assert_within(got[1], hk + 0.1 * (3.0f64 / 0.1).ln(), 1e-6, "row 1");
}

#[test]
fn bounds_bracket_the_true_entropy() {
    let mut rng = Rng::new(51);
    for v in [2usize, 50, 1000, 5000] {
        for trial in 0..20 {
            let scale = [0.5, 2.0, 5.0][trial % 3];
            let z: Vec<f64> = (0..v).map(|_| scale * rng.normal()).collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let mut lps: Vec<f64> = z.iter().map(|x| x - lse).collect();
            let exact: f64 = lps.iter().map(|&l| h(l.exp())).sum();
            lps.sort_by(|a, b| b.partial_cmp(a).unwrap());
            for k in [1, 2, 5, 20, v] {
                let k = k.min(v);
                let row = &lps[..k];
                let at = |mode| one(row, Some(v), mode) as f64;
                let (tr, bu, lo, es, up) = (
                    at(TopkMode::Truncated),
                    at(TopkMode::Bucket),
                    at(TopkMode::Lower),
                    at(TopkMode::Estimate),
                    at(TopkMode::Upper),
                );
                let tol = 1e-6 * exact.max(1.0);
                let what = format!("V={v} k={k} trial {trial}: {tr} {bu} {lo} {exact} {up}");
                assert!(tr <= bu + tol && bu <= lo + tol, "{what}");
                assert!(lo <= exact + tol && exact <= up + tol, "{what}");
                assert!((es - 0.5 * (lo + up)).abs() <= tol, "{what}");
                if k == v {
                    for x in [lo, es, up] {
                        assert!((x - exact).abs() <= 1e-5 * exact.max(1.0), "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn errors() {
    let ninf = f64::NEG_INFINITY;
    let ok = lp(&[0.5, 0.25]);
    // Probabilities summing above 1 + 1e-3.
    let batch = [ok.clone(), lp(&[0.6, 0.6])].concat();
    for mode in MODES {
        assert_value_error(
            topk_entropy(&batch, 2, Some(10), mode),
            "topk_logprobs",
            &["row 1", "> 1 + 1e-3"],
        );
    }
    // Just within the rounding allowance is accepted.
    assert!(topk_entropy(&lp(&[0.6, 0.4009]), 2, Some(10), TopkMode::Lower).is_ok());
    // Every entry absent.
    let batch = [ok.clone(), vec![ninf, ninf]].concat();
    assert_value_error(
        topk_entropy(&batch, 2, Some(10), TopkMode::Truncated),
        "topk_logprobs",
        &["row 1", "no finite entry"],
    );
    // NaN and +inf entries.
    for bad in [f64::NAN, f64::INFINITY] {
        let batch = [vec![bad, -1.0], ok.clone()].concat();
        assert_value_error(
            topk_entropy(&batch, 2, Some(10), TopkMode::Bucket),
            "topk_logprobs",
            &["row 0"],
        );
    }
    // The vocabulary is required for the bounds, and must hold k entries.
    for mode in [TopkMode::Lower, TopkMode::Estimate, TopkMode::Upper] {
        assert_value_error(
            topk_entropy(&ok, 2, None, mode),
            "vocab_size",
            &["required"],
        );
    }
    for mode in [
        TopkMode::Truncated,
        TopkMode::Bucket,
        TopkMode::Renormalized,
    ] {
        assert!(topk_entropy(&ok, 2, None, mode).is_ok(), "{mode:?}");
    }
    for mode in MODES {
        assert_value_error(
            topk_entropy(&ok, 2, Some(1), mode),
            "vocab_size",
            &[">= k = 2"],
        );
        assert_value_error(
            topk_entropy(&ok, 0, Some(4), mode),
            "topk_logprobs",
            &["k >= 1"],
        );
    }
}

#[test]
fn empty_batch() {
    for mode in MODES {
        assert!(topk_entropy(&[], 5, Some(10), mode).unwrap().is_empty());
    }
}

#[test]
fn thread_count_invariance() {
    let _guard = serial();
    let mut rng = Rng::new(52);
    let (rows, k, v) = (60_000, 5, 1000);
    assert!(rows * k >= pool::PARALLEL_MIN_WORK);
    let mut values = Vec::with_capacity(rows * k);
    for _ in 0..rows {
        let ps: Vec<f64> = (0..k).map(|_| rng.uniform(0.0, 0.19)).collect();
        values.extend(ps.iter().map(|p| p.ln()));
    }
    for mode in MODES {
        let mut reference = None;
        for threads in [1, 2, 8] {
            pool::set_num_threads(threads);
            let b = bits(&topk_entropy(&values, k, Some(v), mode).unwrap());
            match &reference {
                None => reference = Some(b),
                Some(r) => assert_eq!(&b, r, "{mode:?} {threads} threads"),
            }
        }
        let whole = reference.unwrap();
        for r in [0, 777, rows - 1] {
            let got = topk_entropy(&values[r * k..(r + 1) * k], k, Some(v), mode).unwrap();
            assert_eq!(got[0].to_bits(), whole[r], "{mode:?} row {r}");
        }
    }
    restore_threads();
}
