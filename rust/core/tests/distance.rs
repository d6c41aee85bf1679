//! Nearest-neighbour distances (`matrix.md` §3.8) against a full sort of every distance, on every
//! SIMD level, across query blocks; minimum spanning trees against Kruskal; and the batched
//! symmetric eigensolver on matrices with known eigenvalues.

use super::{assert_levels, each_level, restore_threads, serial, Rng};
use crate::core::distance::{knn_distances, mst_weights, sq_distances, BLOCK_ROWS};
use crate::core::eigen::symmetric_eigenvalues;

fn points(rng: &mut Rng, n: usize, dim: usize) -> Vec<f64> {
    (0..n * dim).map(|_| rng.uniform(-2.0, 2.0)).collect()
}

/// Every distance from row `i`, exact differences, sorted ascending.
fn oracle(x: &[f64], n: usize, dim: usize, k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n * k);
    for i in 0..n {
        let mut all: Vec<f64> = (0..n)
            .filter(|&j| j != i)
            .map(|j| {
                (0..dim)
                    .map(|a| (x[i * dim + a] - x[j * dim + a]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        all.sort_by(f64::total_cmp);
        out.extend_from_slice(&all[..k]);
    }
    out
}

#[test]
fn knn_matches_a_full_sort_on_every_level() {
    let s = serial();
    let mut rng = Rng::new(21);
    // 150 rows: two full query blocks and a partial one; dim 13 is not a lane multiple.
    let (n, dim) = (2 * BLOCK_ROWS + 22, 13);
    let x = points(&mut rng, n, dim);
    let ran = each_level(&s, |level| {
        for k in [1, 2, 5, n - 1] {
            let got = knn_distances(&x, n, dim, k).unwrap();
            let want = oracle(&x, n, dim, k);
            assert_eq!(got.len(), n * k);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-13 * w, "{level:?} k={k}: {g} vs {w}");
            }
        }
    });
    assert_levels(&ran);
}

#[test]
fn ties_and_duplicates() {
    // Points 0, 1, 2, 3, 4 on a line: inner points have two neighbours at distance 1.
    let line: Vec<f64> = (0..5).map(|i| i as f64).collect();
    let got = knn_distances(&line, 5, 1, 2).unwrap();
    assert_eq!(got, vec![1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]);
    // A duplicated row is at distance 0 from its copy (removing duplicates is the caller's job).
    let dup = [0.0, 0.0, 3.0, 4.0, 0.0, 0.0];
    assert_eq!(knn_distances(&dup, 3, 2, 1).unwrap(), vec![0.0, 5.0, 0.0]);
}

#[test]
fn knn_rejects_bad_arguments() {
    let x = [0.0, 1.0, 2.0];
    for k in [0, 3] {
        let err = knn_distances(&x, 3, 1, k).unwrap_err().to_string();
        assert!(err.starts_with("k:"), "{err}");
    }
    assert!(knn_distances(&x, 2, 1, 1).is_err());
    assert!(knn_distances(&x, 3, 0, 1).is_err());
}

#[test]
fn knn_and_eigenvalues_do_not_depend_on_the_thread_count() {
    let _s = serial();
    let mut rng = Rng::new(5);
    let (n, dim) = (300, 40);
    let x = points(&mut rng, n, dim);
    let (batch, size) = (6, 40);
    let a = symmetric_batch(&mut rng, batch, size).0;
    let run = || {
        let mut v = knn_distances(&x, n, dim, 4).unwrap();
        v.extend(symmetric_eigenvalues(&a, batch, size).unwrap());
        v.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    crate::core::pool::set_num_threads(1);
    let one = run();
    crate::core::pool::set_num_threads(3);
    let three = run();
    restore_threads();
    assert_eq!(one, three);
}

/// `batch` matrices `H diag(λ) H` (`H` a Householder reflection) with λ in `[−1, 3]`, and their
/// expected eigenvalues clamped at 0, descending.
fn symmetric_batch(rng: &mut Rng, batch: usize, dim: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = Vec::with_capacity(batch * dim * dim);
    let mut want = Vec::with_capacity(batch * dim);
    for _ in 0..batch {
        let lam: Vec<f64> = (0..dim).map(|_| rng.uniform(-1.0, 3.0)).collect();
        let v: Vec<f64> = (0..dim).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let vv: f64 = v.iter().map(|t| t * t).sum();
        let h = |i: usize, j: usize| (i == j) as u8 as f64 - 2.0 * v[i] * v[j] / vv;
        for i in 0..dim {
            for j in 0..dim {
                a.push((0..dim).map(|m| h(i, m) * lam[m] * h(m, j)).sum());
            }
        }
        let mut sorted: Vec<f64> = lam.iter().map(|&l| l.max(0.0)).collect();
        sorted.sort_by(|p, q| q.total_cmp(p));
        want.extend(sorted);
    }
    (a, want)
}

#[test]
fn batched_eigenvalues_of_known_matrices() {
    let mut rng = Rng::new(8);
    // 800 is past `FUSED_MAX_DIM`: faer's reduction.
    for (batch, dim) in [(1, 1), (3, 2), (4, 17), (2, 70), (1, 800)] {
        let (a, want) = symmetric_batch(&mut rng, batch, dim);
        let got = symmetric_eigenvalues(&a, batch, dim).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-12 * 3.0 * dim as f64,
                "{dim}: {g} vs {w}"
            );
        }
    }
    assert!(symmetric_eigenvalues(&[1.0, f64::NAN, f64::NAN, 1.0], 1, 2).is_err());
    assert!(symmetric_eigenvalues(&[1.0; 5], 1, 2).is_err());
    assert!(symmetric_eigenvalues(&[], 0, 0).is_err());
}

/// `Σ |e|^α` of the minimum spanning tree by Kruskal over every edge (an independent oracle).
fn kruskal(x: &[f64], n: usize, dim: usize, alpha: f64) -> f64 {
    let mut edges = Vec::new();
    for i in 0..n {
        for j in 0..i {
            let d2: f64 = (0..dim)
                .map(|a| (x[i * dim + a] - x[j * dim + a]).powi(2))
                .sum();
            edges.push((d2.sqrt(), i, j));
        }
    }
    edges.sort_by(|p, q| p.0.total_cmp(&q.0));
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut total = 0.0;
    for (d, i, j) in edges {
        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
        if a != b {
            parent[a] = b;
            total += d.powf(alpha);
        }
    }
    total
}

#[test]
fn mst_weights_match_kruskal_on_every_level() {
    let s = serial();
    let mut rng = Rng::new(31);
    let (batch, n, dim) = (3, 90, 7);
    let x = points(&mut rng, batch * n, dim);
    let ran = each_level(&s, |level| {
        for alpha in [1.0, 0.5, 2.0] {
            let got = mst_weights(&x, batch, n, dim, alpha).unwrap();
            for (b, g) in got.iter().enumerate() {
                let want = kruskal(&x[b * n * dim..(b + 1) * n * dim], n, dim, alpha);
                assert!(
                    (g - want).abs() <= 1e-12 * want,
                    "{level:?} α={alpha}: {g} vs {want}"
                );
            }
        }
    });
    assert_levels(&ran);
    // Points 0, 1, 3, 6 on a line: edges 1 + 2 + 3; one point: no edge.
    let line = [0.0, 1.0, 3.0, 6.0];
    assert_eq!(mst_weights(&line, 1, 4, 1, 1.0).unwrap(), vec![6.0]);
    assert_eq!(mst_weights(&line, 1, 4, 1, 2.0).unwrap(), vec![14.0]);
    assert_eq!(mst_weights(&line[..1], 1, 1, 1, 1.0).unwrap(), vec![0.0]);
    assert!(mst_weights(&line, 1, 3, 1, 1.0).is_err());
    assert!(mst_weights(&line, 1, 4, 1, 0.0).is_err());
}

#[test]
fn squared_distance_matrix_is_exact_and_symmetric() {
    let s = serial();
    let mut rng = Rng::new(41);
    let (n, dim) = (BLOCK_ROWS + 9, 11);
    let x = points(&mut rng, n, dim);
    let ran = each_level(&s, |level| {
        let d = sq_distances(&x, n, dim).unwrap();
        for i in 0..n {
            assert_eq!(d[i * n + i], 0.0);
            for j in 0..n {
                assert_eq!(d[i * n + j].to_bits(), d[j * n + i].to_bits());
                let want: f64 = (0..dim)
                    .map(|a| (x[i * dim + a] - x[j * dim + a]).powi(2))
                    .sum();
                assert!((d[i * n + j] - want).abs() <= 1e-13 * want, "{level:?}");
            }
        }
    });
    assert_levels(&ran);
    assert!(sq_distances(&x, n, 0).is_err());
    assert!(sq_distances(&x[..5], n, dim).is_err());
}
