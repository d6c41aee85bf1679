//! Eigenvalues of a real symmetric matrix in f64 (`matrix.md` §0: a symmetric eigensolver, never
//! an SVD): faer's Householder tridiagonalisation, then the implicit QL iteration with Wilkinson
//! shifts on the tridiagonal matrix, eigenvalues only (Bowdler, Martin, Reinsch & Wilkinson,
//! "The QR and QL algorithms for symmetric matrices", Numer. Math. 11, 1968; EISPACK `tql1`).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::tridiag::{tridiag_in_place, tridiag_in_place_scratch};
use faer::linalg::qr::no_pivoting::factor::recommended_block_size;
use faer::{Mat, Par};

use crate::core::error::{Error, Result};

/// QL sweeps allowed per eigenvalue before giving up (LAPACK allows 30).
const MAX_SWEEPS: usize = 60;

/// Eigenvalues of the symmetric `dim × dim` matrix whose lower triangle is `a` (row-major; the
/// upper triangle is not read), clamped at 0, descending, zero-padded or cut to `d` values.
pub fn eigenvalues_desc(a: &[f64], dim: usize, d: usize) -> Result<Vec<f64>> {
    let mut m = Mat::<f64>::from_fn(dim, dim, |i, j| if i >= j { a[i * dim + j] } else { 0.0 });
    let params = Default::default();
    let mut householder = Mat::<f64>::zeros(
        recommended_block_size::<f64>(dim, dim),
        dim.saturating_sub(1),
    );
    let mut mem = MemBuffer::new(tridiag_in_place_scratch::<f64>(dim, Par::Seq, params));
    tridiag_in_place(
        m.as_mut(),
        householder.as_mut(),
        Par::Seq,
        MemStack::new(&mut mem),
        params,
    );
    let mut diag: Vec<f64> = (0..dim).map(|i| m[(i, i)]).collect();
    let mut off: Vec<f64> = (0..dim)
        .map(|i| if i + 1 < dim { m[(i + 1, i)] } else { 0.0 })
        .collect();
    tridiagonal_eigenvalues(&mut diag, &mut off)?;
    let mut values: Vec<f64> = diag.into_iter().map(|v| v.max(0.0)).collect();
    values.sort_by(|p, q| q.total_cmp(p));
    values.resize(d, 0.0);
    Ok(values)
}

/// Eigenvalues (unsorted, in `diag`) of the symmetric tridiagonal matrix with diagonal `diag`
/// and off-diagonal `off` (`off[i]` couples `i` and `i + 1`; `off[n − 1]` is ignored).
///
/// Meant for matrices of moderate norm (`Â` has trace 1): rotations use `√(f² + g²)`.
/// An off-diagonal entry is negligible when `|e_m| ≤ ε (|d_m| + |d_{m+1}|)` or
/// `|e_m| ≤ ε ‖T‖`: zeroing it moves the eigenvalues by at most `|e_m|`, the size of the
/// rounding already made by the tridiagonalisation (a purely relative test stalls on clusters of
/// eigenvalues at 0, as in a Gram matrix of rank below its size).
pub fn tridiagonal_eigenvalues(diag: &mut [f64], off: &mut [f64]) -> Result<()> {
    let n = diag.len();
    if n <= 1 {
        return Ok(());
    }
    let e = off;
    e[n - 1] = 0.0;
    let norm = diag
        .iter()
        .chain(e.iter())
        .fold(0f64, |m, &v| m.max(v.abs()));
    let floor = f64::EPSILON * norm;
    for l in 0..n {
        let mut sweeps = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = diag[m].abs() + diag[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd || e[m].abs() <= floor {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            sweeps += 1;
            if sweeps > MAX_SWEEPS {
                return Err(Error::value(
                    "x",
                    "the symmetric eigensolver did not converge",
                ));
            }
            // Wilkinson shift from the leading 2 × 2 block.
            let mut g = (diag[l + 1] - diag[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = diag[m] - diag[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut underflow = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                // No overflow: the entries here are bounded by ‖T‖ (≤ 1 for a trace-1 `Â`).
                r = (f * f + g * g).sqrt();
                e[i + 1] = r;
                if r == 0.0 {
                    diag[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = diag[i + 1] - p;
                r = (diag[i] - g) * s + 2.0 * c * b;
                p = s * r;
                diag[i + 1] = g + p;
                g = c * r - b;
            }
            if underflow {
                continue;
            }
            diag[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}
