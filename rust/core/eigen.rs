//! Eigenvalues of a real symmetric matrix in f64 (`matrix.md` §0: a symmetric eigensolver, never
//! an SVD): Householder tridiagonalisation ([`crate::core::tridiag`]), then the implicit QL
//! iteration with Wilkinson shifts on the tridiagonal matrix, eigenvalues only, in its root-free
//! form (Bowdler, Martin, Reinsch & Wilkinson, "The QR and QL algorithms for symmetric
//! matrices", Numer. Math. 11, 1968; Pal, Walker & Kahan's variant as in LAPACK `dsterf`).

use std::cell::RefCell;

use crate::core::error::{Error, Result};
use crate::core::pool;
use crate::core::tridiag::tridiagonalize;

/// QL sweeps allowed per eigenvalue before giving up (LAPACK allows 30).
const MAX_SWEEPS: usize = 60;

/// Eigenvalues of the symmetric `dim × dim` matrix whose lower triangle is `a` (row-major; the
/// upper triangle is not read), clamped at 0, descending, zero-padded or cut to `d` values.
pub fn eigenvalues_desc(a: &[f64], dim: usize, d: usize) -> Result<Vec<f64>> {
    WORK.with(|cell| {
        let mut work = cell.borrow_mut();
        work.clear();
        work.extend_from_slice(&a[..dim * dim]);
        eigenvalues_in_place(&mut work, dim, d)
    })
}

/// [`eigenvalues_desc`] overwriting `a` (its lower triangle) as work space.
pub fn eigenvalues_in_place(a: &mut [f64], dim: usize, d: usize) -> Result<Vec<f64>> {
    let (mut diag, mut off) = (vec![0f64; dim], vec![0f64; dim]);
    let scale = tridiagonalize(a, dim, &mut diag, &mut off);
    tridiagonal_eigenvalues(&mut diag, &mut off)?;
    let mut values: Vec<f64> = diag.into_iter().map(|v| (v * scale).max(0.0)).collect();
    values.sort_by(|p, q| q.total_cmp(p));
    values.resize(d, 0.0);
    Ok(values)
}

thread_local! {
    /// The copy [`eigenvalues_desc`] works on, kept between calls (no fresh pages per matrix).
    static WORK: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
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
            let old_gamma = gamma;
            let alpha = diag[i];
            let rp = r * p;
            if rp.is_normal() {
                // One division on the recurrence's critical path: with t = 1/(rp),
                // c = p/r = p²t, s = bb/r = bb·pt, γ = c(α − σ) − s γ_old = N·pt with
                // N = p(α − σ) − bb·γ_old, and the next p = γ²/c = N²t.
                let t = 1.0 / rp;
                let num = p * (alpha - sigma) - bb * old_gamma;
                let pt = p * t;
                c = p * pt;
                s = bb * pt;
                gamma = num * pt;
                p = num * num * t;
            } else {
                // p = 0 (c = 0) or a product out of range: the two-division form of dsterf.
                let old_c = c;
                let inv = 1.0 / r;
                c = p * inv;
                s = bb * inv;
                gamma = c * (alpha - sigma) - s * old_gamma;
                p = if c != 0.0 {
                    gamma * gamma / c
                } else {
                    old_c * bb
                };
            }
            diag[i + 1] = old_gamma + (alpha - gamma);
        }
        e[l] = s * p;
        diag[l] = sigma + gamma;
    }
    Ok(())
}
