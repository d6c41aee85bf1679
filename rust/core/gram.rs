//! Second-moment kernels of `matrix.md` §0: the lower triangle of `ZᵀZ` for a chunk of at most
//! [`CHUNK_ROWS`] f32 rows, multiplied in f32 registers, gathered in an f32 matrix over
//! [`WIDEN_EVERY`] chunks and then added to an f64 matrix; and the small f64 Gram matrix `ZZᵀ`
//! of the `n < d` route.

use crate::core::simd::Lanes;

/// Rows per f32 partial product (`matrix.md` §0 allows ≤ 1024): f32 rounding accumulates over
/// at most this many products in a register before the chunk's sums leave it. The
/// rounding of a chunk's sums perturbs `Â` at first order, which shows most on a rank-one set
/// (its zero eigenvalues become ~1e-7 · chunk): 32 rows keep that set's normalised entropy within
/// ~3e-6 of the float64 value (256 rows gave 2e-5, above the 1e-5 target) at no measurable cost.
pub const CHUNK_ROWS: usize = 32;

/// Chunks whose f32 sums are first added in an f32 matrix (one f32 load, add and store per
/// vector) before that matrix goes into the f64 one (two conversions, two f64 loads, adds and
/// stores per vector). Each of these additions rounds once relative to a running total of at
/// most this many chunks, so a group of `8 · 32` rows carries about `32 + 8` f32 roundings
/// instead of the `256` of one long f32 sum.
pub const WIDEN_EVERY: usize = 8;

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
/// `mid` (f32) and `c` (f64) are `s × s`. The products of a chunk are summed in f32 lanes and
/// added to `mid`; with `widen`, `mid` plus the chunk's sums go into `c` and `mid` is zeroed
/// (`rows = 0` with `widen` moves `mid` alone).
///
/// Columns go in blocks of `NV` vectors. In a block's own rows, the rows of its first vector's
/// span take only that vector and the next rows take both (tiles of up to 4 rows); the rows
/// below take `MR × NV` tiles. Every (row, vector) pair is computed once, and only about 6% of
/// the products at `d = 128` fall above the diagonal or past `d`.
///
/// # Safety
/// The CPU must support `L`; `z.len() ≥ rows·s`, `mid.len() ≥ s·s`, `c.len() ≥ s·s`,
/// `s = padded(d)`.
#[inline(always)]
pub unsafe fn accumulate_lower<L: Lanes>(
    z: &[f32],
    rows: usize,
    d: usize,
    mid: &mut [f32],
    c: &mut [f64],
    widen: bool,
) {
    let s = padded(d);
    assert!(z.len() >= rows * s && mid.len() >= s * s && c.len() >= s * s);
    debug_assert!(rows <= CHUNK_ROWS);
    let w = L::WIDTH;
    let bw = NV * w;
    let (zp, out) = (
        z.as_ptr(),
        Out {
            mid: mid.as_mut_ptr(),
            c: c.as_mut_ptr(),
            widen,
        },
    );
    let mut b0 = 0;
    while b0 < d {
        for v in 0..NV {
            let (first, end) = (b0 + v * w, (b0 + (v + 1) * w).min(d));
            if w % 4 == 0 {
                for a0 in (first..end).step_by(4) {
                    match v {
                        0 => tile::<L, 4, 1>(zp, rows, s, a0, b0, out),
                        _ => tile::<L, 4, NV>(zp, rows, s, a0, b0, out),
                    }
                }
            } else {
                for a0 in first..end {
                    match v {
                        0 => tile::<L, 1, 1>(zp, rows, s, a0, b0, out),
                        _ => tile::<L, 1, NV>(zp, rows, s, a0, b0, out),
                    }
                }
            }
        }
        let mut a0 = b0 + bw;
        while a0 < d {
            if d - a0 <= 4 {
                tile::<L, 4, NV>(zp, rows, s, a0, b0, out);
            } else {
                tile::<L, MR, NV>(zp, rows, s, a0, b0, out);
            }
            a0 += MR;
        }
        b0 += bw;
    }
}

/// Where a tile's sums go: the f32 matrix, and with `widen` on into the f64 one.
#[derive(Copy, Clone)]
struct Out {
    mid: *mut f32,
    c: *mut f64,
    widen: bool,
}

/// One register tile: the sums `Σ_i z[i·s + a0 + r] · z[i·s + b0 + j]` for `r < R`,
/// `j < V·WIDTH`, in f32 lanes over the chunk's rows, added at `(a0 + r)·s + b0 + j` as
/// [`accumulate_lower`] says.
#[inline(always)]
unsafe fn tile<L: Lanes, const R: usize, const V: usize>(
    zp: *const f32,
    rows: usize,
    s: usize,
    a0: usize,
    b0: usize,
    out: Out,
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
            let at = (a0 + r) * s + b0 + v * w;
            let sum = L::add(acc[r][v], L::load_f32(out.mid.add(at)));
            if out.widen {
                L::store(out.mid.add(at), L::splat(0.0));
                L::add_to_f64(out.c.add(at), sum);
            } else {
                L::store(out.mid.add(at), sum);
            }
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
