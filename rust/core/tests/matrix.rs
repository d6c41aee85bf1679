//! Matrix entropy kernels (`matrix.md` §1): the tridiagonal QL solver on closed-form spectra, and
//! spectra/entropies of token sets against a float64 oracle written here (explicit `Â`, cyclic
//! Jacobi eigenvalues), on every input kind and SIMD level.

use super::{assert_levels, convert, each_level, restore_threads, serial, widen, Kind, Rng};
use crate::core::eigen::{eigenvalues_desc, tridiagonal_eigenvalues};
use crate::core::matrix::{
    matrix_entropy, matrix_renyi2, matrix_spectrum, spectrum_entropy, Element, EntropyArgs, Method,
    Normalize, Prep, Shape,
};

const PREP: Prep = Prep {
    center: true,
    row_normalize: true,
    zero_tol: 1e-10,
    method: Method::Auto,
};

const UNCOMP: EntropyArgs = EntropyArgs {
    k: Some(32),
    renormalized: false,
    normalize: Normalize::LogD,
    eps: 1e-10,
};

fn shape(problems: usize, rows: usize, d: usize) -> Shape {
    Shape {
        problems,
        rows,
        d,
        pool: 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Oracle
// ---------------------------------------------------------------------------------------------

/// Eigenvalues of a symmetric matrix (row-major, full) by cyclic Jacobi rotations, descending.
fn jacobi_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut v: Vec<f64> = (0..n).map(|i| a[i * n + i].max(0.0)).collect();
    v.sort_by(|p, q| q.total_cmp(p));
    v
}

/// `Â` of one `(rows, d)` token set (steps 1–4 of `matrix.md` §1.2), valid rows only.
fn oracle_a_hat(x: &[f64], valid: &[bool], d: usize, center: bool) -> Option<Vec<f64>> {
    let rows: Vec<&[f64]> = x
        .chunks(d)
        .zip(valid)
        .filter(|(_, &v)| v)
        .map(|(r, _)| r)
        .collect();
    let n = rows.len() as f64;
    let mut mean = vec![0.0; d];
    if center {
        for r in &rows {
            for j in 0..d {
                mean[j] += r[j] / n;
            }
        }
    }
    let mut a = vec![0.0; d * d];
    let mut kept = 0;
    for r in &rows {
        let c: Vec<f64> = (0..d).map(|j| r[j] - mean[j]).collect();
        let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm <= 1e-9 {
            continue;
        }
        kept += 1;
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] += c[i] * c[j] / (norm * norm);
            }
        }
    }
    if kept == 0 {
        return None;
    }
    let trace: f64 = (0..d).map(|i| a[i * d + i]).sum();
    Some(a.iter().map(|v| v / trace).collect())
}

fn oracle_spectrum(x: &[f64], valid: &[bool], d: usize) -> Vec<f64> {
    oracle_a_hat(x, valid, d, true).map_or(vec![0.0; d], |a| jacobi_eigenvalues(a, d))
}

fn gaussian_rows(rng: &mut Rng, rows: usize, d: usize, offset: f64) -> Vec<f64> {
    let scales: Vec<f64> = (0..d).map(|_| rng.uniform(0.2, 3.0)).collect();
    (0..rows * d)
        .map(|i| rng.normal() * scales[i % d] + offset)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Eigensolver
// ---------------------------------------------------------------------------------------------

#[test]
fn tridiagonal_ql_gives_the_closed_form_spectrum_of_the_second_difference_matrix() {
    let n = 64;
    let mut diag = vec![2.0; n];
    let mut off = vec![-1.0; n];
    tridiagonal_eigenvalues(&mut diag, &mut off).unwrap();
    diag.sort_by(f64::total_cmp);
    for (k, &v) in diag.iter().enumerate() {
        let exact = 2.0 - 2.0 * ((k + 1) as f64 * std::f64::consts::PI / (n + 1) as f64).cos();
        assert!((v - exact).abs() < 1e-13, "{k}: {v} vs {exact}");
    }
    let mut one = vec![0.25];
    tridiagonal_eigenvalues(&mut one, &mut [0.0]).unwrap();
    assert_eq!(one, [0.25]);
    // Already diagonal: returned unchanged.
    let mut diag = vec![0.5, 0.0, 0.25, 0.25];
    tridiagonal_eigenvalues(&mut diag, &mut [0.0; 4]).unwrap();
    assert_eq!(diag, [0.5, 0.0, 0.25, 0.25]);
}

#[test]
fn symmetric_eigenvalues_match_jacobi_on_random_matrices() {
    let mut rng = Rng::new(7);
    // Full rank, and rank r < n (a cluster of zero eigenvalues, as in a Gram matrix of few rows).
    for (n, r) in [
        (1usize, 1usize),
        (2, 2),
        (3, 3),
        (17, 17),
        (64, 64),
        (130, 130),
        (40, 7),
        (200, 24),
    ] {
        let b: Vec<f64> = (0..r * n).map(|_| rng.normal()).collect();
        // A = BᵀB / tr: symmetric positive semi-definite with trace 1.
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..r).map(|k| b[k * n + i] * b[k * n + j]).sum();
            }
        }
        let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
        a.iter_mut().for_each(|v| *v /= trace);
        let mut lower = a.clone();
        for i in 0..n {
            for j in i + 1..n {
                lower[i * n + j] = f64::NAN; // the upper triangle is never read
            }
        }
        let got = eigenvalues_desc(&lower, n, n).unwrap();
        let want = jacobi_eigenvalues(a, n);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-13, "n = {n}: {g} vs {w}");
        }
        assert!((got.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(got.windows(2).all(|p| p[0] >= p[1]));
        // Padding and cutting to d.
        assert_eq!(eigenvalues_desc(&lower, n, n + 3).unwrap()[n..], [0.0; 3]);
    }
}

#[test]
fn eigenvalues_scale_exactly_with_tiny_and_huge_matrices() {
    // The reduction rescales by a power of two: entries near the ends of the f64 range give the
    // same relative spectrum (squares of 1e-200 would underflow, of 1e200 overflow, unscaled).
    let mut rng = Rng::new(11);
    let n = 24;
    let b: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            a[i * n + j] = (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum();
        }
    }
    let base = eigenvalues_desc(&a, n, n).unwrap();
    for scale in [1e-200, 2f64.powi(-1000), 1e200, 3.0e-310] {
        let scaled: Vec<f64> = a.iter().map(|v| v * scale).collect();
        let got = eigenvalues_desc(&scaled, n, n).unwrap();
        for (g, w) in got.iter().zip(&base) {
            let want = w * scale;
            assert!(
                (g - want).abs() <= 1e-12 * base[0] * scale,
                "{scale}: {g} vs {want}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Known spectra on every kind and level
// ---------------------------------------------------------------------------------------------

fn known_spectra<E: Kind + Element>() {
    let d = 12;
    // Rows ±e_1 … ±e_4, three times, plus an offset of 3: Â = I_4 / 4 after centring.
    let mut x = Vec::new();
    for _ in 0..3 {
        for r in 0..4 {
            for sign in [1.0, -1.0] {
                x.extend((0..d).map(|j| 3.0 + if j == r { sign } else { 0.0 }));
            }
        }
    }
    let rows = x.len() / d;
    let xe = convert::<E>(&x);
    let spectrum = matrix_spectrum(&xe, None, shape(1, rows, d), &PREP).unwrap();
    for (i, &v) in spectrum.iter().enumerate() {
        let want = if i < 4 { 0.25 } else { 0.0 };
        assert!((v - want).abs() < 1e-7, "{}: λ{i} = {v}", E::NAME);
    }
    let full = EntropyArgs { k: None, ..UNCOMP };
    let h = matrix_entropy(&xe, None, shape(1, rows, d), &PREP, &full, false).unwrap()[0];
    assert!(
        (h - 4f64.ln() / 12f64.ln()).abs() < 1e-6,
        "{}: {h}",
        E::NAME
    );
    let h2 = matrix_renyi2(&xe, None, shape(1, rows, d), &PREP, Normalize::LogD).unwrap()[0];
    assert!(
        (h2 - 4f64.ln() / 12f64.ln()).abs() < 1e-6,
        "{}: {h2}",
        E::NAME
    );

    // Rank one after centring: x_i = a_i v + b.
    let v: Vec<f64> = (0..d).map(|j| (j as f64 - 5.0) / 4.0).collect();
    let a = [1.0, -2.0, 0.5, 3.0, -1.5, 2.5, -0.25, 1.25];
    let x: Vec<f64> = a
        .iter()
        .flat_map(|&ai| v.iter().map(move |&vj| ai * vj + 2.0))
        .collect();
    let xe = convert::<E>(&x);
    let h = matrix_entropy(&xe, None, shape(1, a.len(), d), &PREP, &UNCOMP, false).unwrap()[0];
    // bf16/f16 rounding of x_i leaves a rank-one matrix only up to their precision.
    let tol = if E::NAME.ends_with("16") { 2e-2 } else { 1e-6 };
    assert!(h.abs() < tol, "{}: rank one gave {h}", E::NAME);
}

#[test]
fn known_spectra_on_every_kind_and_level() {
    let s = serial();
    let ran = each_level(&s, |_| {
        for_each_kind!(E => { known_spectra::<E>(); });
    });
    assert_levels(&ran);
}

// ---------------------------------------------------------------------------------------------
// Random token sets against the oracle
// ---------------------------------------------------------------------------------------------

fn against_oracle<E: Kind + Element>(rng: &mut Rng) {
    // 600 rows: several 256-row f32 chunks and a partial one; d = 20 is not a lane multiple.
    for (rows, d, offset) in [(600usize, 20usize, 0.0), (300, 33, 50.0), (7, 16, 1.0)] {
        let problems = 3;
        let x = gaussian_rows(rng, problems * rows, d, offset);
        let xe = convert::<E>(&x);
        let xw = widen(&xe);
        let valid: Vec<bool> = (0..problems * rows).map(|_| rng.chance(0.8)).collect();
        let mask: Vec<u8> = valid.iter().map(|&v| v as u8).collect();
        let sh = shape(problems, rows, d);
        let got = matrix_spectrum(&xe, Some(&mask), sh, &PREP).unwrap();
        let entropies = matrix_entropy(&xe, Some(&mask), sh, &PREP, &UNCOMP, false).unwrap();
        for p in 0..problems {
            let want = oracle_spectrum(
                &xw[p * rows * d..(p + 1) * rows * d],
                &valid[p * rows..(p + 1) * rows],
                d,
            );
            for (g, w) in got[p * d..(p + 1) * d].iter().zip(&want) {
                assert!((g - w).abs() < 2e-7, "{} {rows}×{d}: {g} vs {w}", E::NAME);
            }
            let rank = valid[p * rows..(p + 1) * rows]
                .iter()
                .filter(|&&v| v)
                .count()
                .saturating_sub(1)
                .min(d);
            let h = spectrum_entropy(&want, rank, &UNCOMP);
            assert!(
                (entropies[p] - h).abs() < 1e-6,
                "{}: {}",
                E::NAME,
                entropies[p]
            );
        }
        // The Gram route gives the same spectrum.
        let gram = Prep {
            method: Method::Gram,
            ..PREP
        };
        let cov = Prep {
            method: Method::Covariance,
            ..PREP
        };
        if rows < 100 {
            let g = matrix_spectrum(&xe, Some(&mask), sh, &gram).unwrap();
            let c = matrix_spectrum(&xe, Some(&mask), sh, &cov).unwrap();
            for (a, b) in g.iter().zip(&c) {
                assert!(
                    (a - b).abs() < 2e-7,
                    "{}: gram {a} vs covariance {b}",
                    E::NAME
                );
            }
        }
    }
}

#[test]
fn random_token_sets_match_the_oracle_on_every_kind_and_level() {
    let s = serial();
    let mut rng = Rng::new(11);
    let ran = each_level(&s, |_| {
        for_each_kind!(E => { against_oracle::<E>(&mut rng); });
    });
    assert_levels(&ran);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let _s = serial();
    let mut rng = Rng::new(3);
    let (problems, rows, d) = (6, 700, 24);
    let x = convert::<f32>(&gaussian_rows(&mut rng, problems * rows, d, 0.5));
    let run = || matrix_entropy(&x, None, shape(problems, rows, d), &PREP, &UNCOMP, false).unwrap();
    crate::core::pool::set_num_threads(1);
    let one = run();
    crate::core::pool::set_num_threads(3);
    let three = run();
    restore_threads();
    assert_eq!(
        one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        three.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Entropy forms, pooling, edge cases, errors
// ---------------------------------------------------------------------------------------------

#[test]
fn spectrum_entropy_truncations_and_divisors() {
    let d = 8;
    let r = 4;
    let spectrum: Vec<f64> = (0..d).map(|i| if i < r { 0.25 } else { 0.0 }).collect();
    let exact = |k, renormalized, normalize| {
        spectrum_entropy(
            &spectrum,
            5,
            &EntropyArgs {
                k,
                renormalized,
                normalize,
                eps: 0.0,
            },
        )
    };
    let ln = |v: f64| v.ln();
    assert!((exact(None, false, Normalize::LogD) - ln(4.0) / ln(8.0)).abs() < 1e-15);
    assert!(
        (exact(Some(2), false, Normalize::LogD) - 2.0 * ln(4.0) / (4.0 * ln(8.0))).abs() < 1e-15
    );
    assert!((exact(Some(3), true, Normalize::LogK) - 1.0).abs() < 1e-15);
    assert!((exact(None, false, Normalize::LogRank) - ln(4.0) / ln(5.0)).abs() < 1e-15);
    assert!((exact(None, false, Normalize::Base(2.0)) - 2.0).abs() < 1e-15);
    assert_eq!(exact(Some(1), true, Normalize::LogK), 0.0);
    assert_eq!(
        spectrum_entropy(
            &spectrum,
            1,
            &EntropyArgs {
                normalize: Normalize::LogRank,
                ..UNCOMP
            }
        ),
        0.0
    );
}

#[test]
fn pooled_identical_heads_equal_one_head_and_empty_sets_give_zero() {
    let mut rng = Rng::new(5);
    let (rows, d) = (90, 10);
    let head = gaussian_rows(&mut rng, rows, d, 0.0);
    let x = convert::<f32>(&[head.clone(), head.clone()].concat());
    let pooled = Shape {
        problems: 2,
        rows,
        d,
        pool: 2,
    };
    for method in [Method::Covariance, Method::Gram] {
        let prep = Prep { method, ..PREP };
        let p = matrix_entropy(&x, None, pooled, &prep, &UNCOMP, false).unwrap();
        let one = matrix_entropy(
            &x[..rows * d],
            None,
            shape(1, rows, d),
            &prep,
            &UNCOMP,
            false,
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        assert!(
            (p[0] - one[0]).abs() < 1e-9,
            "{method:?}: {} vs {}",
            p[0],
            one[0]
        );
    }
    // Every row equal: nothing left after centring.
    let same = convert::<f32>(&vec![1.5; 4 * d]);
    let h = matrix_entropy(&same, None, shape(1, 4, d), &PREP, &UNCOMP, false).unwrap();
    assert_eq!(h, [0.0]);
    let s = matrix_spectrum(&same, None, shape(1, 4, d), &PREP).unwrap();
    assert_eq!(s, vec![0.0; d]);
}

#[test]
fn nan_infinity_and_bad_arguments_are_errors_naming_the_argument() {
    let d = 4;
    let mut x = vec![0.5f32; 2 * 5 * d];
    for (i, v) in x.iter_mut().enumerate() {
        *v = (i as f32 * 0.37).sin();
    }
    x[5 * d + 2] = f32::NAN;
    let sh = shape(2, 5, d);
    let err = matrix_entropy(&x, None, sh, &PREP, &UNCOMP, false).unwrap_err();
    assert!(err.to_string().starts_with("x: contains NaN"), "{err}");
    let out = matrix_entropy(&x, None, sh, &PREP, &UNCOMP, true).unwrap();
    assert!(out[0].is_finite() && out[1].is_nan());
    // The NaN row masked out is never read.
    let mask: Vec<u8> = (0..10).map(|i| (i != 5) as u8).collect();
    assert!(matrix_entropy(&x, Some(&mask), sh, &PREP, &UNCOMP, false).is_ok());
    x[5 * d + 2] = f32::INFINITY;
    let err = matrix_entropy(&x, None, sh, &PREP, &UNCOMP, true).unwrap_err();
    assert!(err.to_string().contains("inf"), "{err}");
    x[5 * d + 2] = 0.0;
    let none = vec![0u8; 10];
    let err = matrix_spectrum(&x, Some(&none), sh, &PREP).unwrap_err();
    assert!(err.to_string().starts_with("mask:"), "{err}");
    assert!(matrix_spectrum(&x, Some(&[1u8; 3]), sh, &PREP).is_err());
    assert!(matrix_spectrum(&x[1..], None, sh, &PREP).is_err());
    let bad_pool = Shape { pool: 3, ..sh };
    let err = matrix_renyi2(&x, None, bad_pool, &PREP, Normalize::LogD).unwrap_err();
    assert!(err.to_string().starts_with("group_size:"), "{err}");
    let bad = |args: EntropyArgs| matrix_entropy(&x, None, sh, &PREP, &args, false).unwrap_err();
    assert!(bad(EntropyArgs {
        k: Some(0),
        ..UNCOMP
    })
    .to_string()
    .starts_with("k:"));
    assert!(bad(EntropyArgs {
        eps: -1.0,
        ..UNCOMP
    })
    .to_string()
    .starts_with("eps:"));
    let base_one = EntropyArgs {
        normalize: Normalize::Base(1.0),
        ..UNCOMP
    };
    assert!(bad(base_one).to_string().starts_with("base:"));
    let tol = Prep {
        zero_tol: f64::NAN,
        ..PREP
    };
    assert!(matrix_spectrum(&x, None, sh, &tol).is_err());
}
