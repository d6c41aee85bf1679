//! Second-moment kernels of `matrix.md` §0: the lower triangle of `ZᵀZ` for a chunk of at most
//! [`CHUNK_ROWS`] f32 rows, multiplied in f32 registers and added to an f64 matrix once per chunk,
//! and the small f64 Gram matrix `ZZᵀ` of the `n < d` route.

use crate::core::simd::Lanes;

/// Rows per f32 partial product (`matrix.md` §0 allows ≤ 1024); each chunk's f32 sums are
/// added to the f64 matrix, so f32 rounding accumulates over at most this many products. The
/// rounding of a chunk's sums perturbs `Â` at first order, which shows most on a rank-one set
/// (its zero eigenvalues become ~1e-7 · chunk): 32 rows keep that set's normalised entropy within
/// ~3e-6 of the float64 value (256 rows gave 2e-5, above the 1e-5 target) at no measurable cost.
pub const CHUNK_ROWS: usize = 32;

/// Rows of `C` per register tile below the diagonal blocks.
const MR: usize = 6;
/// Vectors of columns per register tile.
const NV: usize = 2;
/// Widest lane count of any level (AVX-512).
const MAX_WIDTH: usize = 16;

/// The row stride of packed chunks and of the f64 matrix for `d` features: room for the
/// widest tile past column `d` and past row `d`, so tiles never need a tail case.
pub fn padded(d: usize) -> usize {
    (d + MR).next_multiple_of(NV * MAX_WIDTH)
}

/// `c[a·s + b] += Σ_{i<rows} z[i·s + a] · z[i·s + b]` for every `b ≤ a < d` (some `b > a` near
/// the diagonal and the padding rows/columns are written too and must be ignored).
///
/// `z` holds `rows ≤ CHUNK_ROWS` packed rows of stride `s = padded(d)`, zero past column `d`;
/// `c` is `s × s`. The products of a chunk are summed in f32 lanes and added to `c` in f64.
///
/// Columns go in blocks of `NV` vectors. In a block's own rows, the rows of its first vector's
/// span take only that vector and the next rows take both (tiles of up to 4 rows); the rows
/// below take `MR × NV` tiles. Every (row, vector) pair is computed once, and only about 6% of
/// the products at `d = 128` fall above the diagonal or past `d`.
///
/// # Safety
/// The CPU must support `L`; `z.len() ≥ rows·s`, `c.len() ≥ s·s`, `s = padded(d)`.
#[inline(always)]
pub unsafe fn accumulate_lower<L: Lanes>(z: &[f32], rows: usize, d: usize, c: &mut [f64]) {
    let s = padded(d);
    debug_assert!(z.len() >= rows * s && c.len() >= s * s && rows <= CHUNK_ROWS);
    let w = L::WIDTH;
    let bw = NV * w;
    let (zp, cp) = (z.as_ptr(), c.as_mut_ptr());
    let mut b0 = 0;
    while b0 < d {
        for v in 0..NV {
            let (first, end) = (b0 + v * w, (b0 + (v + 1) * w).min(d));
            if w % 4 == 0 {
                for a0 in (first..end).step_by(4) {
                    match v {
                        0 => tile::<L, 4, 1>(zp, rows, s, a0, b0, cp),
                        _ => tile::<L, 4, NV>(zp, rows, s, a0, b0, cp),
                    }
                }
            } else {
                for a0 in first..end {
                    match v {
                        0 => tile::<L, 1, 1>(zp, rows, s, a0, b0, cp),
                        _ => tile::<L, 1, NV>(zp, rows, s, a0, b0, cp),
                    }
                }
            }
        }
        let mut a0 = b0 + bw;
        while a0 < d {
            if d - a0 <= 4 {
                tile::<L, 4, NV>(zp, rows, s, a0, b0, cp);
            } else {
                tile::<L, MR, NV>(zp, rows, s, a0, b0, cp);
            }
            a0 += MR;
        }
        b0 += bw;
    }
}

/// One register tile: `c[(a0 + r)·s + b0 + j] += Σ_i z[i·s + a0 + r] · z[i·s + b0 + j]` for
/// `r < R`, `j < V·WIDTH`, summed in f32 lanes over the chunk's rows, then added in f64.
#[inline(always)]
unsafe fn tile<L: Lanes, const R: usize, const V: usize>(
    zp: *const f32,
    rows: usize,
    s: usize,
    a0: usize,
    b0: usize,
    cp: *mut f64,
) {
    let w = L::WIDTH;
    let mut acc = [[L::splat(0.0); V]; R];
    for i in 0..rows {
        let row = zp.add(i * s);
        let mut bv = [L::splat(0.0); V];
        for v in 0..V {
            bv[v] = L::load_f32(row.add(b0 + v * w));
        }
        for r in 0..R {
            let a = L::splat(*row.add(a0 + r));
            for v in 0..V {
                acc[r][v] = L::fmadd(a, bv[v], acc[r][v]);
            }
        }
    }
    for r in 0..R {
        for v in 0..V {
            L::add_to_f64(cp.add((a0 + r) * s + b0 + v * w), acc[r][v]);
        }
    }
}

/// The lower triangle of `G_ij = f_i f_j Σ_a z[i·s + a] z[j·s + a]` (`i ≥ j`, row-major `m × m`)
/// for `m` rows of stride `s`, products and sums in f64.
pub fn gram_lower(z: &[f32], scale: &[f64], s: usize, d: usize) -> Vec<f64> {
    let m = scale.len();
    let mut g = vec![0f64; m * m];
    for i in 0..m {
        let zi = &z[i * s..i * s + d];
        for j in 0..=i {
            let zj = &z[j * s..j * s + d];
            let dot: f64 = zi.iter().zip(zj).map(|(&a, &b)| a as f64 * b as f64).sum();
            g[i * m + j] = scale[i] * scale[j] * dot;
        }
    }
    g
}
