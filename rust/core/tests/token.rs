//! `token_stats` (`token.md` §2–4, §10): accuracy against the float64 oracle at every level and
//! input kind, masked entries, errors and NaN policy, labels, and the invariances.

use super::{
    assert_close, assert_levels, assert_rel, assert_value_error, assert_within, bits, convert,
    each_level, random_row, restore_threads, serial, widen, Kind, Oracle, Rng, SHAPES,
};
use crate::core::dtype::F16Bits;
use crate::core::error::Result;
use crate::core::pool;
use crate::core::token::{
    classify_bad_row, row_error, rows_per_task, token_stats, Labels, RowStatus, Temperature,
    TokenArgs, TokenOutputs,
};

const VOCABS: [usize; 15] = [
    1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 2047, 2048, 2049, 4097, 32000,
];

fn args(vocab: usize, temperature: Temperature<'_>) -> TokenArgs<'_> {
    TokenArgs {
        vocab,
        temperature,
        labels: None,
        ignore_index: None,
        collision: true,
        lse: true,
        propagate_nan: false,
    }
}

fn with_labels<'a>(mut a: TokenArgs<'a>, values: &'a [i64], per_row: usize) -> TokenArgs<'a> {
    a.labels = Some(Labels { values, per_row });
    a
}

fn t_of(temperature: &Temperature<'_>, r: usize) -> f64 {
    match temperature {
        Temperature::Scalar(t) => *t,
        Temperature::PerRow(ts) => ts[r],
    }
}

/// Every output of `out` against the oracle on the widened logits.
fn check_against_oracle<E: Kind>(logits: &[E], a: &TokenArgs<'_>, out: &TokenOutputs, what: &str) {
    let v = a.vocab;
    let rows = logits.len() / v;
    let wide = widen(logits);
    assert_eq!(out.entropy.len(), rows);
    for r in 0..rows {
        let t = t_of(&a.temperature, r);
        let row = &wide[r * v..(r + 1) * v];
        let o = Oracle::new(row, t).expect("a finite entry");
        let what = format!("{what} row {r} t={t}");
        assert_close(out.entropy[r], o.entropy(), &format!("{what}: entropy"));
        if let Some(c) = &out.collision {
            assert_rel(c[r], o.collision(), 1e-5, &format!("{what}: collision"));
        }
        if let Some(l) = &out.lse {
            assert_close(l[r], o.lse(), &format!("{what}: lse"));
        }
        if let (Some(lp), Some(labels)) = (&out.logprob, &a.labels) {
            let k = labels.per_row;
            for j in 0..k {
                let y = labels.values[r * k + j];
                let got = lp[r * k + j];
                if Some(y) == a.ignore_index {
                    assert_eq!(got.to_bits(), 0f32.to_bits(), "{what}: ignored label");
                    continue;
                }
                let want = o.logprob(row[y as usize], t);
                assert_close(got, want, &format!("{what}: logprob[{j}] (y={y})"));
                assert!(got <= 0.0, "{what}: logprob {got} > 0");
            }
        }
    }
}

fn random_batch<E: Kind>(rng: &mut Rng, rows: usize, v: usize) -> Vec<E> {
    let mut values = Vec::with_capacity(rows * v);
    for r in 0..rows {
        values.extend(random_row(rng, v, SHAPES[r % SHAPES.len()]));
    }
    convert(&values)
}

fn random_labels(rng: &mut Rng, rows: usize, k: usize, v: usize) -> Vec<i64> {
    (0..rows * k).map(|_| rng.below(v) as i64).collect()
}

fn per_row_temperatures(rows: usize) -> Vec<f64> {
    [0.6, 1.0, 1.5, 0.7, 2.0]
        .into_iter()
        .cycle()
        .take(rows)
        .collect()
}

#[test]
fn matches_oracle_at_every_level_kind_and_vocab() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        let mut rng = Rng::new(21);
        for_each_kind!(E => {
            for &v in &VOCABS {
                let rows = (4096 / v).clamp(4, 12);
                let logits: Vec<E> = random_batch(&mut rng, rows, v);
                let labels = random_labels(&mut rng, rows, 2, v);
                let ts = per_row_temperatures(rows);
                for temperature in [
                    Temperature::Scalar(1.0),
                    Temperature::Scalar(0.7),
                    Temperature::PerRow(&ts),
                ] {
                    let a = with_labels(args(v, temperature), &labels, 2);
                    let out = token_stats(&logits, &a).unwrap();
                    let what = format!("{level:?} {} V={v} {temperature:?}", E::NAME);
                    check_against_oracle(&logits, &a, &out, &what);
                }
            }
        });
    });
    assert_levels(&ran);
}

#[test]
fn large_offsets_lose_no_accuracy() {
    // H = log s − w/s never subtracts two numbers of size |m|.
    let guard = serial();
    let ran = each_level(&guard, |level| {
        let mut rng = Rng::new(22);
        for offset in [-3e4, 1e4, 5e4, -1500.0, 1000.0] {
            let v = 3000;
            let row: Vec<f64> = (0..v).map(|_| offset + 3.0 * rng.normal()).collect();
            for_each_kind!(E => {
                let logits: Vec<E> = convert(&row);
                let labels = [0i64, 17, 2999];
                let a = with_labels(args(v, Temperature::Scalar(1.0)), &labels, 3);
                let out = token_stats(&logits, &a).unwrap();
                let what = format!("{level:?} {} offset {offset}", E::NAME);
                check_against_oracle(&logits, &a, &out, &what);
            });
        }
    });
    assert_levels(&ran);
}

#[test]
fn one_hot_rows_are_exactly_zero() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        for_each_kind!(E => {
            for &v in &VOCABS {
                for pos in [0, v / 2, v - 1] {
                    let mut logits = vec![E::from_f64(f64::NEG_INFINITY); v];
                    logits[pos] = E::from_f64(-2.5);
                    let labels = [pos as i64, ((pos + 1) % v) as i64];
                    let k = if v == 1 { 1 } else { 2 };
                    for t in [1.0, 0.7] {
                        let a = with_labels(args(v, Temperature::Scalar(t)), &labels[..k], k);
                        let out = token_stats(&logits, &a).unwrap();
                        let what = format!("{level:?} {} V={v} pos={pos} t={t}", E::NAME);
                        assert_eq!(out.entropy[0].to_bits(), 0f32.to_bits(), "{what}: H");
                        let lp = out.logprob.unwrap();
                        assert_eq!(lp[0].to_bits(), 0f32.to_bits(), "{what}: logprob");
                        if k == 2 {
                            assert_eq!(lp[1], f32::NEG_INFINITY, "{what}: masked label");
                        }
                        assert_eq!(out.collision.unwrap()[0], 1.0, "{what}");
                        let z = if E::NAME == "f64" { -2.5 / t } else { (-2.5f32 / t as f32) as f64 };
                        assert_eq!(out.lse.unwrap()[0], z as f32, "{what}: lse");
                    }
                }
            }
        });
    });
    assert_levels(&ran);
}

#[test]
fn uniform_rows_are_exact() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        for_each_kind!(E => {
            for &v in &VOCABS {
                let logits = vec![E::from_f64(0.75); 2 * v];
                for t in [1.0, 0.7] {
                    let out = token_stats(&logits, &args(v, Temperature::Scalar(t))).unwrap();
                    let what = format!("{level:?} {} V={v} t={t}", E::NAME);
                    let h = (v as f64).ln() as f32;
                    assert_eq!(out.entropy, [h, h], "{what}");
                    let c = (1.0 / v as f64) as f32;
                    assert_eq!(out.collision.unwrap(), [c, c], "{what}");
                }
            }
        });
    });
    assert_levels(&ran);
}

#[test]
fn near_one_hot_rows_are_tiny_and_non_negative() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        for_each_kind!(E => {
            for gap in [80.0, 100.0, 1000.0] {
                for &v in &[2usize, 33, 4097] {
                    let mut row = vec![-gap; v];
                    row[v / 3] = 0.0;
                    let logits: Vec<E> = convert(&row);
                    let out = token_stats(&logits, &args(v, Temperature::Scalar(1.0))).unwrap();
                    let h = out.entropy[0];
                    let what = format!("{level:?} {} gap={gap} V={v}", E::NAME);
                    // Gap 80: (V−1)·80·e^−80 ≈ 1.5e-33 per entry; beyond the exp floor exactly 0.
                    assert!((0.0..1e-25).contains(&h), "{what}: H = {h}");
                    assert!(out.collision.unwrap()[0] <= 1.0, "{what}");
                }
            }
        });
    });
    assert_levels(&ran);
}

#[test]
fn bounds_hold() {
    let mut rng = Rng::new(23);
    for_each_kind!(E => {
        for &v in &VOCABS {
            let rows = 6;
            let logits: Vec<E> = random_batch(&mut rng, rows, v);
            let all: Vec<i64> = (0..rows).flat_map(|_| 0..v as i64).collect();
            for t in [0.6, 1.0, 1.5] {
                let a = with_labels(args(v, Temperature::Scalar(t)), &all, v);
                let out = token_stats(&logits, &a).unwrap();
                let lp = out.logprob.as_ref().unwrap();
                let coll = out.collision.as_ref().unwrap();
                for r in 0..rows {
                    let row = &logits[r * v..(r + 1) * v];
                    let fin = row.iter().filter(|z| z.exact() > f64::NEG_INFINITY).count() as f64;
                    let h = out.entropy[r] as f64;
                    let what = format!("{} V={v} t={t} row {r}", E::NAME);
                    assert!(h >= 0.0 && h <= fin.ln() * (1.0 + 1e-6) + 1e-6, "{what}: H={h}");
                    let c = coll[r] as f64;
                    assert!(c <= 1.0 && c >= (1.0 - 1e-5) / fin, "{what}: Σp²={c}");
                    let lps = &lp[r * v..(r + 1) * v];
                    assert!(lps.iter().all(|&l| l <= 0.0), "{what}: a logprob > 0");
                    // Σ_y exp(ℓ_y) = 1 over all labels of a row.
                    let total: f64 = lps.iter().map(|&l| (l as f64).exp()).sum();
                    assert!((total - 1.0).abs() <= 1e-5, "{what}: Σ exp ℓ = {total}");
                }
            }
        }
    });
}

#[test]
fn labels_k_per_row_and_ignore_index() {
    let mut rng = Rng::new(24);
    for_each_kind!(E => {
        for (v, k) in [(1usize, 1usize), (7, 5), (2049, 3), (33, 1)] {
            let rows = 5;
            let logits: Vec<E> = random_batch(&mut rng, rows, v);
            let mut labels = random_labels(&mut rng, rows, k, v);
            labels[0] = -100;
            labels[rows * k - 1] = -100;
            let mut a = with_labels(args(v, Temperature::Scalar(0.8)), &labels, k);
            a.ignore_index = Some(-100);
            let out = token_stats(&logits, &a).unwrap();
            let lp = out.logprob.as_ref().unwrap();
            assert_eq!(lp.len(), rows * k);
            assert_eq!(lp[0].to_bits(), 0f32.to_bits());
            check_against_oracle(&logits, &a, &out, &format!("{} V={v} K={k}", E::NAME));
            // ignore_index inside [0, V): that label reads as ignored.
            a.ignore_index = Some(0);
            let zeros: Vec<i64> = vec![0; rows * k];
            a.labels = Some(Labels { values: &zeros, per_row: k });
            let out = token_stats(&logits, &a).unwrap();
            assert!(out.logprob.unwrap().iter().all(|x| x.to_bits() == 0));
        }
        // K = 0 labels per row.
        let logits: Vec<E> = convert(&[1.0, 2.0, 3.0, 4.0]);
        let a = with_labels(args(2, Temperature::Scalar(1.0)), &[], 0);
        let out = token_stats(&logits, &a).unwrap();
        assert_eq!(out.logprob.unwrap().len(), 0);
        assert_eq!(out.entropy.len(), 2);
    });
}

#[test]
fn label_errors() {
    let logits = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let base = args(3, Temperature::Scalar(1.0));
    let err = |values: &[i64], per_row: usize, ignore: Option<i64>| {
        let mut a = with_labels(base, values, per_row);
        a.ignore_index = ignore;
        token_stats(&logits, &a)
    };
    assert_value_error(err(&[0, 3], 1, None), "labels", &["3", "outside [0, 3)"]);
    assert_value_error(err(&[-1, 0], 1, None), "labels", &["-1", "flat index 0"]);
    assert_value_error(
        err(&[0, -1], 1, Some(-100)),
        "labels",
        &["not ignore_index"],
    );
    assert_value_error(err(&[0, 1, 2], 1, None), "labels", &["expected 2 rows"]);
    assert_value_error(err(&[0], 1, None), "labels", &[]);
    assert_value_error(err(&[0, 1], 0, None), "labels", &[]);
    assert_value_error(err(&[i64::MAX, 0], 1, None), "labels", &[]);
    assert!(err(&[-100, 2], 1, Some(-100)).is_ok());
    assert!(err(&[0, 1, 2, 2], 2, None).is_ok());
}

#[test]
fn masked_label_gives_neg_inf() {
    for_each_kind!(E => {
        let logits: Vec<E> = convert(&[1.0, f64::NEG_INFINITY, 0.5, -2.0]);
        let a = with_labels(args(4, Temperature::Scalar(0.9)), &[1, 0, 3, 2], 4);
        let out = token_stats(&logits, &a).unwrap();
        let lp = out.logprob.as_ref().unwrap();
        assert_eq!(lp[0], f32::NEG_INFINITY);
        assert!(lp[1..].iter().all(|x| x.is_finite()));
        assert!(out.entropy[0].is_finite());
        check_against_oracle(&logits, &a, &out, E::NAME);
    });
}

#[test]
fn empty_batch() {
    for_each_kind!(E => {
        let logits: Vec<E> = Vec::new();
        let ts: [f64; 0] = [];
        for temperature in [Temperature::Scalar(1.0), Temperature::PerRow(&ts)] {
            let a = with_labels(args(7, temperature), &[], 3);
            let out = token_stats(&logits, &a).unwrap();
            assert!(out.entropy.is_empty());
            assert!(out.logprob.unwrap().is_empty());
            assert!(out.collision.unwrap().is_empty());
            assert!(out.lse.unwrap().is_empty());
        }
    });
}

#[test]
fn shape_and_temperature_errors() {
    let logits = [0.0f32; 6];
    assert_value_error(
        token_stats(&logits, &args(0, Temperature::Scalar(1.0))),
        "logits",
        &["empty"],
    );
    assert_value_error(
        token_stats(&logits, &args(4, Temperature::Scalar(1.0))),
        "logits",
        &["6 values", "rows of 4"],
    );
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY, -0.0] {
        assert_value_error(
            token_stats(&logits, &args(3, Temperature::Scalar(t))),
            "temperature",
            &["finite value > 0"],
        );
    }
    assert_value_error(
        token_stats(&logits, &args(3, Temperature::PerRow(&[1.0]))),
        "temperature",
        &["expected 2 per-row values, got 1"],
    );
    assert_value_error(
        token_stats(&logits, &args(3, Temperature::PerRow(&[1.0, 0.0]))),
        "temperature",
        &["row 1"],
    );
    assert_value_error(
        token_stats(&logits, &args(3, Temperature::PerRow(&[f64::NAN, 1.0]))),
        "temperature",
        &["row 0"],
    );
    assert!(Temperature::Scalar(1e-30).validate(3, false).is_ok());
    assert!(Temperature::PerRow(&[]).validate(0, false).is_ok());
}

/// A `(3, V)` batch whose row `bad_row` holds `value` at `pos`.
fn batch_with<E: Kind>(v: usize, bad_row: usize, pos: usize, value: f64) -> Vec<E> {
    let mut rng = Rng::new(25);
    let mut values: Vec<f64> = (0..3 * v).map(|_| rng.normal()).collect();
    values[bad_row * v + pos] = value;
    convert(&values)
}

#[test]
fn bad_rows_are_errors_naming_the_row() {
    for_each_kind!(E => {
        for v in [1usize, 9, 2049] {
            for pos in [0, v - 1] {
                let run = |logits: &[E], propagate: bool| {
                    let mut a = args(v, Temperature::Scalar(1.0));
                    a.propagate_nan = propagate;
                    token_stats(logits, &a)
                };
                let nan: Vec<E> = batch_with(v, 1, pos, f64::NAN);
                assert_value_error(run(&nan, false), "logits", &["row 1", "NaN"]);
                let inf: Vec<E> = batch_with(v, 2, pos, f64::INFINITY);
                assert_value_error(run(&inf, false), "logits", &["row 2", "+inf"]);
                assert_value_error(run(&inf, true), "logits", &["row 2", "+inf"]);
                let mut masked: Vec<E> = batch_with(v, 0, pos, 0.0);
                masked[v..2 * v].fill(E::from_f64(f64::NEG_INFINITY));
                assert_value_error(run(&masked, false), "logits", &["row 1", "-inf"]);
                assert_value_error(run(&masked, true), "logits", &["row 1", "-inf"]);
            }
        }
        // The first failing row is reported.
        let mut two: Vec<E> = batch_with(5, 2, 1, f64::INFINITY);
        two[6] = E::from_f64(f64::NAN);
        assert_value_error(
            token_stats(&two, &args(5, Temperature::Scalar(1.0))),
            "logits",
            &["row 1"],
        );
    });
}

#[test]
fn overflowing_temperature_is_an_error_naming_temperature() {
    fn check<E: Kind>(big: f64, t: f64) {
        for v in [1usize, 20, 2050] {
            let logits: Vec<E> = batch_with(v, 1, v - 1, big);
            let a = args(v, Temperature::Scalar(t));
            assert_value_error(
                token_stats(&logits, &a),
                "temperature",
                &["row 1", "overflows"],
            );
            let ts = [1.0, t, 1.0];
            let a = args(v, Temperature::PerRow(&ts));
            assert_value_error(token_stats(&logits, &a), "temperature", &["row 1"]);
            // Without the tiny temperature the same row is fine.
            assert!(token_stats(&logits, &args(v, Temperature::Scalar(1.0))).is_ok());
        }
    }
    check::<f32>(3e38, 0.01);
    check::<crate::core::dtype::Bf16Bits>(3e38, 0.1);
    check::<F16Bits>(60000.0, 1e-36);
    check::<f64>(1e300, 1e-10);
}

#[test]
fn propagate_nan_only_touches_that_row() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        for_each_kind!(E => {
            for v in [1usize, 17, 2049] {
                let rows = 4;
                let mut rng = Rng::new(26);
                let clean: Vec<E> = random_batch(&mut rng, rows, v);
                let mut dirty = clean.clone();
                dirty[2 * v + v / 2] = E::from_f64(f64::NAN);
                let labels: Vec<i64> = vec![0, 0, 0, 0, 0, -100, 0, 0];
                let mut a = with_labels(args(v, Temperature::Scalar(0.9)), &labels, 2);
                a.ignore_index = Some(-100);
                a.propagate_nan = true;
                let want = token_stats(&clean, &a).unwrap();
                let got = token_stats(&dirty, &a).unwrap();
                let what = format!("{level:?} {} V={v}", E::NAME);
                let outputs = [
                    (&got.entropy, &want.entropy),
                    (got.collision.as_ref().unwrap(), want.collision.as_ref().unwrap()),
                    (got.lse.as_ref().unwrap(), want.lse.as_ref().unwrap()),
                ];
                for (g, w) in outputs {
                    for r in 0..rows {
                        if r == 2 {
                            assert!(g[r].is_nan(), "{what}");
                        } else {
                            assert_eq!(g[r].to_bits(), w[r].to_bits(), "{what} row {r}");
                        }
                    }
                }
                let (g, w) = (got.logprob.unwrap(), want.logprob.unwrap());
                for (i, (x, y)) in g.iter().zip(&w).enumerate() {
                    match i {
                        4 => assert!(x.is_nan(), "{what}"),
                        // ignore_index wins over NaN.
                        5 => assert!(x.to_bits() == 0 && y.to_bits() == 0, "{what}"),
                        _ => assert_eq!(x.to_bits(), y.to_bits(), "{what} label {i}"),
                    }
                }
                // Without propagate_nan the same batch is an error.
                a.propagate_nan = false;
                assert_value_error(token_stats(&dirty, &a), "logits", &["row 2", "NaN"]);
            }
        });
    });
    assert_levels(&ran);
}

/// All outputs as bit patterns, for bitwise comparisons.
fn all_bits(out: &TokenOutputs) -> Vec<Vec<u32>> {
    vec![
        bits(&out.entropy),
        bits(out.logprob.as_deref().unwrap_or(&[])),
        bits(out.collision.as_deref().unwrap_or(&[])),
        bits(out.lse.as_deref().unwrap_or(&[])),
    ]
}

fn run_all<E: Kind>(logits: &[E], v: usize, labels: &[i64], t: Temperature<'_>) -> TokenOutputs {
    token_stats(logits, &with_labels(args(v, t), labels, 1)).unwrap()
}

#[test]
fn thread_count_invariance() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        let mut rng = Rng::new(27);
        for_each_kind!(E => {
            // 48 × 8193 entries: above the parallel threshold, several tasks.
            let (rows, v) = (48, 8193);
            assert!(rows * v >= pool::PARALLEL_MIN_WORK);
            let logits: Vec<E> = random_batch(&mut rng, rows, v);
            let labels = random_labels(&mut rng, rows, 1, v);
            let ts = per_row_temperatures(rows);
            let mut reference = None;
            for threads in [1, 2, 8] {
                pool::set_num_threads(threads);
                assert_eq!(pool::num_threads(), threads);
                let out = run_all(&logits, v, &labels, Temperature::PerRow(&ts));
                let b = all_bits(&out);
                match &reference {
                    None => reference = Some(b),
                    Some(r) => assert_eq!(&b, r, "{level:?} {} {threads} threads", E::NAME),
                }
            }
        });
    });
    restore_threads();
    assert_levels(&ran);
}

#[test]
fn row_alone_equals_row_in_batch() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        let mut rng = Rng::new(28);
        for_each_kind!(E => {
            for (rows, v) in [(40usize, 9000usize), (300, 2049), (7, 17)] {
                let logits: Vec<E> = random_batch(&mut rng, rows, v);
                let labels = random_labels(&mut rng, rows, 1, v);
                let ts = per_row_temperatures(rows);
                let batch = all_bits(&run_all(&logits, v, &labels, Temperature::PerRow(&ts)));
                for r in 0..rows {
                    let alone = run_all(
                        &logits[r * v..(r + 1) * v],
                        v,
                        &labels[r..=r],
                        Temperature::Scalar(ts[r]),
                    );
                    let alone = all_bits(&alone);
                    for (k, out) in alone.iter().enumerate() {
                        assert_eq!(
                            out[0], batch[k][r],
                            "{level:?} {} V={v} row {r} output {k}",
                            E::NAME
                        );
                    }
                }
            }
        });
    });
    assert_levels(&ran);
}

#[test]
fn per_row_temperature_equal_to_scalar_is_identical() {
    let guard = serial();
    let ran = each_level(&guard, |_| {
        let mut rng = Rng::new(29);
        for_each_kind!(E => {
            let (rows, v) = (9, 2100);
            let logits: Vec<E> = random_batch(&mut rng, rows, v);
            let labels = random_labels(&mut rng, rows, 1, v);
            for t in [0.6, 1.0, 1.5] {
                let ts = vec![t; rows];
                let a = all_bits(&run_all(&logits, v, &labels, Temperature::Scalar(t)));
                let b = all_bits(&run_all(&logits, v, &labels, Temperature::PerRow(&ts)));
                assert_eq!(a, b, "{} t={t}", E::NAME);
            }
        });
    });
    assert_levels(&ran);
}

#[test]
fn shift_invariance_is_bitwise_on_exact_shifts() {
    // Logits are multiples of 2^−10 in [−64, 64]; shifts keep every value exact in float32, so
    // z' − m, and hence H and ℓ, are bit-for-bit unchanged.
    let guard = serial();
    let ran = each_level(&guard, |level| {
        let mut rng = Rng::new(30);
        for v in [7usize, 2049, 5000] {
            let rows = 3;
            let base: Vec<f64> = (0..rows * v)
                .map(|_| (rng.uniform(-64.0, 64.0) * 1024.0).round() / 1024.0)
                .collect();
            let labels = random_labels(&mut rng, rows, 1, v);
            for c in [-1e4, -30.0, 30.0] {
                let shifted: Vec<f64> = base.iter().map(|z| z + c).collect();
                for t in [1.0, 0.5] {
                    let what = format!("{level:?} V={v} c={c} t={t}");
                    let check = |a: &TokenOutputs, b: &TokenOutputs| {
                        assert_eq!(bits(&a.entropy), bits(&b.entropy), "{what}: H");
                        assert_eq!(
                            bits(a.logprob.as_ref().unwrap()),
                            bits(b.logprob.as_ref().unwrap()),
                            "{what}: logprob"
                        );
                        for r in 0..rows {
                            let want = a.lse.as_ref().unwrap()[r] as f64 + c / t;
                            assert_close(b.lse.as_ref().unwrap()[r], want, &what);
                        }
                    };
                    let (a32, b32): (Vec<f32>, Vec<f32>) = (convert(&base), convert(&shifted));
                    check(
                        &run_all(&a32, v, &labels, Temperature::Scalar(t)),
                        &run_all(&b32, v, &labels, Temperature::Scalar(t)),
                    );
                    check(
                        &run_all(&base, v, &labels, Temperature::Scalar(t)),
                        &run_all(&shifted, v, &labels, Temperature::Scalar(t)),
                    );
                }
            }
        }
    });
    assert_levels(&ran);
}

#[test]
fn permutation_invariance() {
    let mut rng = Rng::new(31);
    for_each_kind!(E => {
        for v in [9usize, 2049, 4097] {
            let logits: Vec<E> = random_batch(&mut rng, 1, v);
            let y = rng.below(v);
            // A random permutation (Fisher–Yates) carrying the label with it.
            let mut perm: Vec<usize> = (0..v).collect();
            for i in (1..v).rev() {
                perm.swap(i, rng.below(i + 1));
            }
            let permuted: Vec<E> = perm.iter().map(|&j| logits[j]).collect();
            let y2 = perm.iter().position(|&j| j == y).unwrap();
            let a = run_all(&logits, v, &[y as i64], Temperature::Scalar(0.8));
            let b = run_all(&permuted, v, &[y2 as i64], Temperature::Scalar(0.8));
            let what = format!("{} V={v}", E::NAME);
            assert_close(b.entropy[0], a.entropy[0] as f64, &what);
            assert_close(b.logprob.unwrap()[0], a.logprob.unwrap()[0] as f64, &what);
            assert_rel(b.collision.unwrap()[0], a.collision.unwrap()[0] as f64, 1e-5, &what);
        }
    });
}

#[test]
fn entropy_is_non_decreasing_in_temperature() {
    let mut rng = Rng::new(32);
    for_each_kind!(E => {
        for v in [2usize, 31, 2049] {
            let logits: Vec<E> = random_batch(&mut rng, 4, v);
            let mut last = [0f32; 4];
            for i in 0..30 {
                let t = 0.3 + 0.1 * i as f64;
                let out = token_stats(&logits, &args(v, Temperature::Scalar(t))).unwrap();
                for r in 0..4 {
                    let h = out.entropy[r];
                    let slack = 2e-6 * (h.abs() as f64).max(1.0);
                    assert!(
                        h as f64 >= last[r] as f64 - slack,
                        "{} V={v} row {r}: H({t}) = {h} < {}",
                        E::NAME,
                        last[r]
                    );
                    last[r] = h;
                }
            }
        }
    });
}

#[test]
fn optional_outputs_are_omitted() {
    let logits = [1.0f32, 2.0, 3.0];
    let mut a = args(3, Temperature::Scalar(1.0));
    a.collision = false;
    a.lse = false;
    let out = token_stats(&logits, &a).unwrap();
    assert!(out.collision.is_none() && out.lse.is_none() && out.logprob.is_none());
    assert_within(
        out.entropy[0],
        Oracle::new(&[1.0, 2.0, 3.0], 1.0).unwrap().entropy(),
        1e-6,
        "H",
    );
}

#[test]
fn classify_and_error_helpers() {
    assert_eq!(classify_bad_row(&[1.0f32, f32::NAN], 1.0), RowStatus::Nan);
    assert_eq!(
        classify_bad_row(&[f32::NAN, f32::INFINITY], 1.0),
        RowStatus::PosInf
    );
    assert_eq!(classify_bad_row(&[1.0f32, 3e38], 0.5), RowStatus::Overflow);
    assert_eq!(classify_bad_row(&[1.0f64, 1e308], 0.5), RowStatus::Overflow);
    assert_eq!(
        classify_bad_row(&[1.0f32, f32::NEG_INFINITY], 0.5),
        RowStatus::Ok
    );
    assert_eq!(classify_bad_row(&[F16Bits(0x7c00)], 1.0), RowStatus::PosInf);
    assert_eq!(classify_bad_row(&[F16Bits(0x7e00)], 1.0), RowStatus::Nan);
    let msg = |s| row_error(4, s).to_string();
    assert!(msg(RowStatus::Nan).starts_with("logits: row 4 contains NaN"));
    assert!(msg(RowStatus::PosInf).contains("+inf"));
    assert!(msg(RowStatus::Overflow).starts_with("temperature: "));
    assert!(msg(RowStatus::AllMasked).contains("no finite entry"));
    assert_eq!(rows_per_task(0), 65_536);
    assert_eq!(rows_per_task(1), 65_536);
    assert_eq!(rows_per_task(32_000), 2);
    assert_eq!(rows_per_task(100_000), 1);
}

/// One dominant logit over a flat tail `g` below: every tail term `e^−g` is just under half an
/// ulp of 1, and the accumulator lane holding the maximum's `exp(0) = 1` rounds each one away.
#[test]
fn dominant_entry_over_flat_tail_meets_accuracy_target() {
    let guard = serial();
    let ran = each_level(&guard, |level| {
        for gap in [16.3, 16.64, 17.0] {
            for v in [2048usize, 4097, 32000] {
                let mut row = vec![-gap; v];
                row[0] = 0.0;
                for_each_kind!(E => {
                    let logits: Vec<E> = convert(&row);
                    let a = with_labels(args(v, Temperature::Scalar(1.0)), &[0, 1], 2);
                    let out = token_stats(&logits, &a).unwrap();
                    let what = format!("{level:?} {} gap={gap} V={v}", E::NAME);
                    check_against_oracle(&logits, &a, &out, &what);
                });
            }
        }
    });
    assert_levels(&ran);
}

/// `t` passes validation (finite, > 0) but is below the float32 range, so `t as f32 == 0`.
#[test]
fn temperature_below_f32_range_is_not_reported_as_nan() {
    let t = 1e-50;
    // In float64 the answer is well defined (z' = [0, −1e50]: one-hot, H = 0).
    let want = token_stats(&[0.0f64, -1.0], &args(2, Temperature::Scalar(t))).unwrap();
    assert_eq!(want.entropy, [0.0]);
    for propagate in [false, true] {
        let mut a = args(2, Temperature::Scalar(t));
        a.propagate_nan = propagate;
        match token_stats(&[0.0f32, -1.0], &a) {
            Ok(out) => assert_eq!(out.entropy, [0.0], "propagate={propagate}"),
            Err(e) => assert_value_error::<()>(Err(e), "temperature", &[]),
        }
    }
}

/// All finite logits of a row overflow to −∞ when divided by the temperature.
#[test]
fn negative_overflow_is_not_reported_as_masked() {
    let check = |r: Result<TokenOutputs>| match r {
        // z' = [−6e38, −6e38]: uniform, H = ln 2.
        Ok(out) => assert_close(out.entropy[0], std::f64::consts::LN_2, "H"),
        Err(e) => assert_value_error::<()>(Err(e), "temperature", &[]),
    };
    check(token_stats(
        &[-3e38f32, -3e38],
        &args(2, Temperature::Scalar(0.5)),
    ));
    check(token_stats(
        &[-1e308f64, -1e308],
        &args(2, Temperature::Scalar(0.1)),
    ));
}

#[test]
fn token_stats_dispatches_to_the_forced_level() {
    // Under a forced level, `token_stats` gives bit for bit the per-level row reduction.
    use crate::core::tile::TILE;
    use crate::core::token::Element;
    let guard = serial();
    let ran = each_level(&guard, |level| {
        let mut rng = Rng::new(33);
        for_each_kind!(E => {
            for v in [5usize, 2049, 4100] {
                let logits: Vec<E> = random_batch(&mut rng, 3, v);
                for t in [1.0, 0.7] {
                    let out = token_stats(&logits, &args(v, Temperature::Scalar(t))).unwrap();
                    let mut buf = Box::new([0f32; TILE]);
                    for r in 0..3 {
                        let row = &logits[r * v..(r + 1) * v];
                        let st = E::reduce(row, t, true, level, &mut buf).state;
                        let what = format!("{level:?} {} V={v} t={t} row {r}", E::NAME);
                        assert_eq!(out.entropy[r].to_bits(), (st.entropy() as f32).to_bits(), "{what}");
                        let c = out.collision.as_ref().unwrap()[r];
                        assert_eq!(c.to_bits(), (st.collision() as f32).to_bits(), "{what}");
                    }
                }
            }
        });
    });
    assert_levels(&ran);
}
