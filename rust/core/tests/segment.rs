//! Segmented row sums and ARES windows (`rollout.md` §4, §8) on hand-made ragged rows.

use crate::core::segment::{row_stats, window_means};

#[test]
fn row_stats_skip_masked_tokens_and_honour_nan_policy() {
    let values = [1.0f32, 2.0, f32::NAN, 4.0, 5.0];
    let valid = [1u8, 1, 1, 0, 1];
    let cu = [0i64, 3, 3, 5];
    let err = row_stats(&values, Some(&valid), &cu, false).unwrap_err();
    assert!(err.to_string().starts_with("entropy: valid token 2 is NaN"));
    let rows = row_stats(&values, Some(&valid), &cu, true).unwrap();
    assert_eq!(rows.iter().map(|r| r.count).collect::<Vec<_>>(), [2, 0, 1]);
    assert_eq!(rows[0].sum, 3.0);
    assert_eq!(rows[0].sum_sq, 5.0);
    assert_eq!(rows[2].sum, 5.0);
}

#[test]
fn windows_need_t_and_every_window_position_valid_in_the_same_row() {
    let values = [1.0f32, 2.0, 3.0, 4.0, 10.0, 20.0];
    let valid = [1u8, 1, 1, 1, 1, 1];
    let cu = [0i64, 4, 6];
    let (w, defined) = window_means(&values, Some(&valid), &cu, 2, 0).unwrap();
    assert_eq!(defined, [1, 1, 1, 0, 1, 0]);
    assert_eq!(&w[..3], &[1.5, 2.5, 3.5]);
    assert_eq!(w[4], 15.0);
    let (shifted, d1) = window_means(&values, Some(&valid), &cu, 2, 1).unwrap();
    assert_eq!(d1, [1, 1, 0, 0, 0, 0]);
    assert_eq!(&shifted[..2], &w[1..3]);
    let holes = [1u8, 0, 1, 1, 1, 1];
    let (_, d2) = window_means(&values, Some(&holes), &cu, 2, 0).unwrap();
    assert_eq!(d2, [0, 0, 1, 0, 1, 0]);
}

#[test]
fn bad_offsets_masks_and_windows_are_errors() {
    let values = [1.0f32; 4];
    for cu in [&[0i64, 5][..], &[1, 4], &[0, 3, 2, 4], &[]] {
        assert!(row_stats(&values, None, cu, false)
            .unwrap_err()
            .to_string()
            .starts_with("cu_seqlens"));
    }
    let short = [1u8; 3];
    assert!(row_stats(&values, Some(&short), &[0, 4], false)
        .unwrap_err()
        .to_string()
        .starts_with("mask"));
    assert!(window_means(&values, Some(&short), &[0, 4], 2, 0)
        .unwrap_err()
        .to_string()
        .starts_with("mask"));
    assert!(window_means(&values, None, &[0, 4], 0, 0)
        .unwrap_err()
        .to_string()
        .starts_with("window"));
}
