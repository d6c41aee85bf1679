//! Covariance terms and the KL-Cov top-k (`rollout.md` §5) on hand-made units.

use crate::core::cov::{centered_cov, top_k};

#[test]
fn constant_advantages_give_exact_zeros_and_ties_go_to_lower_indices() {
    let a = [0.3; 5];
    let l = [-1.0, -2.5, -0.1, -3.0, -0.7];
    let c = centered_cov(&a, &l, None).unwrap();
    assert!(c.iter().all(|&x| x == 0.0), "{c:?}");
    assert_eq!(top_k(&c, None, 2), vec![0, 1]);
}

#[test]
fn covariance_matches_the_formula_and_skips_invalid_tokens() {
    let a = [1.0, 2.0, 3.0, 100.0];
    let l = [0.5, -0.5, 1.5, f64::NAN];
    let valid = [1u8, 1, 1, 0];
    let c = centered_cov(&a, &l, Some(&valid)).unwrap();
    let (ab, lb) = (2.0, 0.5);
    for i in 0..3 {
        assert!((c[i] - (a[i] - ab) * (l[i] - lb)).abs() < 1e-15);
    }
    assert_eq!(c[3], 0.0);
    assert_eq!(top_k(&c, Some(&valid), 1), vec![2]);
    assert_eq!(top_k(&c, Some(&valid), 10), vec![0, 1, 2]);
    assert!(top_k(&c, Some(&[0, 0, 0, 0]), 1).is_empty());
}

#[test]
fn negative_zero_ties_with_zero() {
    assert_eq!(top_k(&[0.0, -0.0, 0.0], None, 1), vec![0]);
    assert_eq!(top_k(&[-0.0, 0.0], None, 1), vec![0]);
}

#[test]
fn nan_at_a_valid_token_is_an_error_naming_the_argument() {
    let err = centered_cov(&[1.0, f64::NAN], &[0.0, 0.0], None).unwrap_err();
    assert!(err.to_string().starts_with("advantages: valid token 1"));
    let err = centered_cov(&[1.0], &[0.0, 0.0], None).unwrap_err();
    assert!(err.to_string().starts_with("logprob:"));
}
