//! Eigenvalues of a real symmetric matrix in f64 (`matrix.md` §0: a symmetric eigensolver, never
//! an SVD): faer's Householder tridiagonalisation, then the implicit QL iteration with Wilkinson
//! shifts on the tridiagonal matrix, eigenvalues only, in its root-free form (Bowdler, Martin,
//! Reinsch & Wilkinson, "The QR and QL algorithms for symmetric matrices", Numer. Math. 11, 1968;
//! Pal, Walker & Kahan's variant as in LAPACK `dsterf`).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::tridiag::{tridiag_in_place, tridiag_in_place_scratch};
use faer::linalg::qr::no_pivoting::factor::recommended_block_size;
use faer::{Mat, Par};

use crate::core::error::{Error, Result};
use crate::core::pool;

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

/// Eigenvalues of `batch` symmetric `dim × dim` matrices stored one after another in `a`
/// (row-major; only each lower triangle is read), clamped at 0 and descending, `(batch, dim)`:
/// one matrix per task on entcore's pool, so results do not depend on the thread count.
/// A matrix holding NaN or ±inf is an error.
pub fn symmetric_eigenvalues(a: &[f64], batch: usize, dim: usize) -> Result<Vec<f64>> {
    let size = dim.checked_mul(dim);
    if dim == 0 || size.and_then(|s| s.checked_mul(batch)) != Some(a.len()) {
        return Err(Error::value(
            "a",
            format!(
                "expected {batch} matrices of {dim} × {dim} (dim >= 1), got {} values",
                a.len()
            ),
        ));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::value(
            "a",
            "expected finite values (NaN or inf found)",
        ));
    }
    let size = dim * dim;
    let work = a.len().saturating_mul(dim);
    let parts = pool::map_indexed(
        batch,
        1,
        work,
        || (),
        |_, b| eigenvalues_desc(&a[b * size..(b + 1) * size], dim, dim),
    );
    Ok(parts.into_iter().collect::<Result<Vec<_>>>()?.concat())
}

/// Eigenvalues (unsorted, in `diag`) of the symmetric tridiagonal matrix with diagonal `diag`
/// and off-diagonal `off` (`off[i]` couples `i` and `i + 1`; `off[n − 1]` is ignored; `off` is
/// overwritten).
///
/// The root-free QL iteration of Pal, Walker and Kahan (as in LAPACK `dsterf`): it works on the
/// squared off-diagonal, so a sweep step has no square root, and its dependency chain is about
/// half that of the classic implicit QL. An off-diagonal entry is negligible when
/// `e_m² ≤ ε² |d_m d_{m+1}|` or `|e_m| ≤ ε ‖T‖`: zeroing it moves the eigenvalues by at most
/// `|e_m|`, the size of the rounding already made by the tridiagonalisation (the relative test
/// alone stalls on clusters of eigenvalues at 0, as in a Gram matrix of rank below its size).
pub fn tridiagonal_eigenvalues(diag: &mut [f64], off: &mut [f64]) -> Result<()> {
    let n = diag.len();
    if n <= 1 {
        return Ok(());
    }
    let norm = diag
        .iter()
        .chain(&off[..n - 1])
        .fold(0f64, |m, &v| m.max(v.abs()));
    let floor2 = (f64::EPSILON * norm).powi(2);
    let eps2 = f64::EPSILON * f64::EPSILON;
    let e = off;
    for v in e[..n - 1].iter_mut() {
        *v *= *v;
    }
    e[n - 1] = 0.0;
    let mut l = 0;
    let mut sweeps = 0;
    while l < n {
        let mut m = l;
        while m + 1 < n {
            if e[m] <= eps2 * (diag[m] * diag[m + 1]).abs() || e[m] <= floor2 {
                break;
            }
            m += 1;
        }
        if m < n - 1 {
            e[m] = 0.0;
        }
        if m == l {
            // d_l is an eigenvalue.
            l += 1;
            sweeps = 0;
            continue;
        }
        if m == l + 1 {
            // A 2 × 2 block: its eigenvalues directly.
            let (a, c) = (diag[l], diag[l + 1]);
            let half = 0.5 * (a - c);
            let root = half.hypot(e[l].sqrt());
            let mid = 0.5 * (a + c);
            diag[l] = mid + root;
            diag[l + 1] = mid - root;
            e[l] = 0.0;
            l += 2;
            sweeps = 0;
            continue;
        }
        sweeps += 1;
        if sweeps > MAX_SWEEPS {
            return Err(Error::value(
                "x",
                "the symmetric eigensolver did not converge",
            ));
        }
        // Wilkinson-type shift from the leading 2 × 2 block.
        let p0 = diag[l];
        let rte = e[l].sqrt();
        let mut sigma = (diag[l + 1] - p0) / (2.0 * rte);
        let r = sigma.hypot(1.0);
        sigma = p0 - rte / (sigma + r.copysign(sigma));
        let (mut c, mut s) = (1.0f64, 0.0f64);
        let mut gamma = diag[m] - sigma;
        let mut p = gamma * gamma;
        for i in (l..m).rev() {
            let bb = e[i];
            let r = p + bb;
            if i + 1 != m {
                e[i + 1] = s * r;
            }
            let old_c = c;
            let inv = 1.0 / r;
            c = p * inv;
            s = bb * inv;
            let old_gamma = gamma;
            let alpha = diag[i];
            gamma = c * (alpha - sigma) - s * old_gamma;
            diag[i + 1] = old_gamma + (alpha - gamma);
            p = if c != 0.0 {
                gamma * gamma / c
            } else {
                old_c * bb
            };
        }
        e[l] = s * p;
        diag[l] = sigma + gamma;
    }
    Ok(())
}
