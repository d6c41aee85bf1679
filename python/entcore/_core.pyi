"""Type stubs of the compiled Rust core (``rust/py``). Private: use ``entcore`` and its modules.

Arrays are C-contiguous. Float inputs come with a kind tag: ``"f32"`` (float32), ``"f64"``
(float64), ``"f16"`` / ``"bf16"`` (the raw 16-bit patterns as a ``uint16`` array). Errors are
``ValueError`` (bad values, shapes) and ``TypeError`` (dtypes), naming the argument.
"""

from typing import Literal

import numpy as np
from numpy.typing import NDArray

FloatKind = Literal["f32", "f64", "f16", "bf16"]

__version__: str

def token_stats(
    logits: NDArray[np.float32] | NDArray[np.float64] | NDArray[np.uint16],
    kind: FloatKind,
    labels: NDArray[np.int64] | None,
    temperature: float,
    temperatures: NDArray[np.float64] | None,
    ignore_index: int | None,
    collision: bool,
    lse: bool,
    propagate_nan: bool,
) -> tuple[
    NDArray[np.float32] | None,
    NDArray[np.float32],
    NDArray[np.float32] | None,
    NDArray[np.float32] | None,
]:
    """The fused pass over ``logits (N, V)``: ``(logprob (N·K,), entropy, collision, lse)``.

    ``labels (N, K)``; unrequested outputs are ``None``. ``temperatures (N,)`` overrides
    ``temperature`` when given.
    """

def renyi_entropy(
    logits: NDArray[np.float32] | NDArray[np.float64] | NDArray[np.uint16],
    kind: FloatKind,
    alpha: float,
    temperature: float,
    temperatures: NDArray[np.float64] | None,
    propagate_nan: bool,
) -> NDArray[np.float32]:
    """Rényi entropy of order ``alpha != 1`` per row of ``logits (N, V)``."""

def prob_entropy(
    probs: NDArray[np.float32] | NDArray[np.float64] | NDArray[np.uint16],
    kind: FloatKind,
    eps: float,
    propagate_nan: bool,
) -> NDArray[np.float32]:
    """``−Σ_j p_j ln(p_j + eps)`` per row of probabilities ``probs (N, K)`` (``more.md`` §1)."""

def topk_entropy(
    topk_logprobs: NDArray[np.float64],
    vocab_size: int,
    mode: Literal["estimate", "lower", "upper", "truncated", "bucket", "renormalized"],
) -> NDArray[np.float32]:
    """Top-k entropy convention per row of ``topk_logprobs (N, k)``; ``vocab_size=-1``: unknown."""

def token_logprob_entropy_linear(
    hidden: NDArray[np.float32] | NDArray[np.float64],
    weight: NDArray[np.float32] | NDArray[np.float64],
    bias: NDArray[np.float32] | NDArray[np.float64] | None,
    labels: NDArray[np.int64],
    temperature: float,
    ignore_index: int | None,
    collision: bool,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32] | None]:
    """``(logprob, entropy, collision)`` of ``softmax((hidden @ weight.T + bias) / T)`` by tiles."""

def high_entropy_select(
    values: NDArray[np.float32],
    valid: NDArray[np.bool_] | None,
    rho: float,
    method: Literal["linear", "lower", "nearest", "topk", "higher", "midpoint"],
    nan_policy: Literal["raise", "omit", "propagate"],
) -> tuple[NDArray[np.bool_], float, int, int]:
    """Top-ρ selection of one unit: ``(mask, threshold, kept, valid)`` (``rollout.md`` §3)."""

def row_stats(
    values: NDArray[np.float32],
    valid: NDArray[np.bool_] | None,
    cu_seqlens: NDArray[np.int64],
    omit_nan: bool,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """``(count, sum, sum_sq)`` of the valid values of each ``cu_seqlens`` row, in float64."""

def window_means(
    values: NDArray[np.float32],
    valid: NDArray[np.bool_] | None,
    cu_seqlens: NDArray[np.int64],
    window: int,
    start: int,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """``(W, defined)``: sliding-window means per token (``rollout.md`` §8)."""

def centered_cov(
    advantages: NDArray[np.float64],
    logprob: NDArray[np.float64],
    valid: NDArray[np.bool_] | None,
) -> NDArray[np.float64]:
    """``(A_t − Ā)(ℓ_t − ℓ̄)`` over one unit's valid tokens (0 elsewhere)."""

def top_k(
    values: NDArray[np.float64], valid: NDArray[np.bool_] | None, k: int
) -> NDArray[np.int64]:
    """Indices (ascending) of the ``k`` largest valid values, ties by lower index."""

def matrix_spectrum(
    x: NDArray[np.float32] | NDArray[np.float64] | NDArray[np.uint16],
    kind: FloatKind,
    mask: NDArray[np.bool_] | None,
    problems: int,
    rows: int,
    d: int,
    center: bool,
    row_normalize: bool,
    zero_tol: float,
    method_name: Literal["auto", "covariance", "gram"],
) -> NDArray[np.float64]:
    """Spectra ``(problems · d,)`` of ``Â`` for ``x`` flattened from ``(problems, rows, d)``,
    ``mask`` flattened from ``(problems, rows)`` (``matrix.md`` §1.1)."""

def matrix_entropy(
    x: NDArray[np.float32] | NDArray[np.float64] | NDArray[np.uint16],
    kind: FloatKind,
    mask: NDArray[np.bool_] | None,
    problems: int,
    rows: int,
    d: int,
    pool: int,
    center: bool,
    row_normalize: bool,
    zero_tol: float,
    method_name: Literal["auto", "covariance", "gram"],
    k: int | None,
    renormalized: bool,
    normalize_name: Literal["log_d", "log_k", "log_rank"] | None,
    base: float,
    eps: float,
    propagate_nan: bool,
) -> NDArray[np.float64]:
    """Matrix entropies ``(problems / pool,)`` (``matrix.md`` §1.2); ``pool`` consecutive
    problems average their ``Â`` (``group_reduce="pooled"``)."""

def matrix_renyi2(
    x: NDArray[np.float32] | NDArray[np.float64] | NDArray[np.uint16],
    kind: FloatKind,
    mask: NDArray[np.bool_] | None,
    problems: int,
    rows: int,
    d: int,
    pool: int,
    center: bool,
    row_normalize: bool,
    zero_tol: float,
    normalize_name: Literal["log_d", "log_rank"] | None,
) -> NDArray[np.float64]:
    """Rényi-2 entropies ``−ln ‖Â‖_F²`` over the divisor ``(problems / pool,)`` (§1.3)."""

def symmetric_eigenvalues(a: NDArray[np.float64], batch: int, dim: int) -> NDArray[np.float64]:
    """Eigenvalues ``(batch · dim,)`` of ``batch`` symmetric ``dim × dim`` matrices flattened
    (lower triangles read), clamped at 0, descending per matrix (``matrix.md`` §0)."""

def knn_distances(x: NDArray[np.float64], n: int, dim: int, k: int) -> NDArray[np.float64]:
    """Distances ``(n · k,)`` from each row of ``x (n × dim)`` flattened to its ``k`` nearest
    other rows, ascending (``matrix.md`` §3.8)."""

def sq_distances(x: NDArray[np.float64], n: int, dim: int) -> NDArray[np.float64]:
    """Squared distances ``(n · n,)`` between the rows of ``x (n × dim)`` flattened, from exact
    differences (``matrix.md`` §3.3, §3.7)."""

def mst_weights(
    x: NDArray[np.float64], batch: int, n: int, dim: int, alpha: float
) -> NDArray[np.float64]:
    """``Σ |e|^α`` over the Euclidean minimum spanning tree of each of ``batch`` point sets
    ``x (batch · n · dim,)`` flattened, ``(batch,)`` (``matrix.md`` §3.8)."""

def set_num_threads(n: int) -> None:
    """Size of entcore's own thread pool (``n >= 1``)."""

def get_num_threads() -> int:
    """Current size of entcore's thread pool."""

def simd_level() -> Literal["avx512", "avx2", "scalar"]:
    """The instruction set the kernels dispatch to."""

def set_simd_level(level: Literal["auto", "avx512", "avx2", "scalar"]) -> None:
    """Force a kernel family (tests); ``ValueError`` if this CPU lacks it."""

def supported_simd_levels() -> list[str]:
    """The kernel families this CPU can run, best first."""
