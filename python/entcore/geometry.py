"""Representation geometry (``matrix.md`` §3) on NumPy arrays: float64 results.

Names, arguments and defaults match ``entcore.reference.geometry`` and ``entcore.torch``. For now
every function is the float64 reference itself (NumPy ``eigvalsh`` on float64 second-moment and
Gram matrices, exact pairwise differences), re-exported so that ``entcore.<name>`` exists for
every name of the spec. The heavy steps are the ones the Rust matrix core of ``entcore.matrix``
(``matrix.md`` §1: float64 second moments from float32 tiles, a faer symmetric eigensolver,
parallel over problems) is built for: the covariance/Gram spectra of ``von_neumann_entropy``,
``rankme``, ``alpha_req`` and ``effective_rank``, the kernel matrices and eigenvalues of
``matrix_renyi_entropy`` and DSE/DSMI, and the pairwise distances of the intrinsic-dimension
estimators; they move there as those kernels become available.
"""

from __future__ import annotations

from entcore.reference.geometry import (
    PowerLawFit,
    alpha_req,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    effective_rank,
    matrix_joint_entropy,
    matrix_mutual_information,
    matrix_renyi_entropy,
    mle_dimension,
    phd_dimension,
    powerlaw_alpha,
    rankme,
    spectrum_entropy,
    twonn_dimension,
    von_neumann_entropy,
)

__all__ = [
    "PowerLawFit",
    "alpha_req",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
    "effective_rank",
    "matrix_joint_entropy",
    "matrix_mutual_information",
    "matrix_renyi_entropy",
    "mle_dimension",
    "phd_dimension",
    "powerlaw_alpha",
    "rankme",
    "spectrum_entropy",
    "twonn_dimension",
    "von_neumann_entropy",
]
