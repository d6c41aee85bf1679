"""Triton kernels of the fused linear head (``token.md`` §8.2): ``(N, V)`` logits never exist.

Forward: a grid of ``(row blocks of BLOCK_N, vocabulary splits)``; each program walks its split
in tiles of ``BLOCK_V`` columns, forms ``Z = hidden_blk @ weight_tileᵀ (+ bias_tile)`` with
``tl.dot`` over ``BLOCK_D`` slices of ``D`` (float32 accumulation; IEEE float32 products for
float32 inputs, no TF32), scales ``z' = Z / T`` and merges the tile into the per-row state
``(m, s, w, q)`` of ``token.md`` §2 (online softmax, Milakov & Gimelshein, arXiv 1805.02867; the
running maximum starts at ``-inf``). The label logit is taken from the very tile value (``ℓ ≤ 0``
always, verl #2656). Each split writes its partial state; :func:`linear_state` merges the splits
with the rule of §2 in torch (``O(splits · N)`` numbers). No divisibility requirement on ``N``,
``V`` or ``D``: tiles are masked.

Backward: for each ``(row_block, vocab_block)`` chunk a kernel recomputes the logits tile and
writes ``g_z`` of ``token.md`` §5 (NaN-free: ``p = exp(z' − LSE)`` is exactly 0 on a masked entry
and ``z' − μ`` is clamped finite), in the matmul dtype of the inputs; ``d_hidden += g_z @ W``,
``d_weight += g_zᵀ @ hidden`` run as float32-accumulating matmuls and ``d_bias += Σ_rows g_z`` in
float32. Extra memory: the float32 gradient accumulators plus one ``row_block × vocab_block``
chunk. For bf16/fp16 inputs ``g_z`` is rounded to the input dtype before the matmul (relative
``2⁻⁹`` per entry, so that the products run on tensor cores); float32 inputs keep float32 ``g_z``.
Tiles: ``Blocks`` (128×128×64 forward, 128×64×64 backward for half inputs, 64×64×32 for float32,
chosen from sm_90 builds: no spills for half inputs, 24 bytes of stack for the float32 forward;
not tuned on a GPU).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from entcore.torch._triton_token import NEG_BIG, divide, interpreting, temperature_args

#: Tiles of the fused matmul (rows, vocabulary columns, hidden slice) and its launch shape.
BLOCK_N = 128
BLOCK_V = 128
BLOCK_D = 64
NUM_WARPS = 8
NUM_STAGES = 3


class Blocks(NamedTuple):
    """Tile sizes (powers of two ≥ 16) and the number of vocabulary splits (None: automatic)."""

    n: int = BLOCK_N
    v: int = BLOCK_V
    d: int = BLOCK_D
    splits: int | None = None


DEFAULT_BLOCKS = Blocks()
#: The backward tile is narrower: its epilogue holds more live tiles (no register spills on sm_90).
GRAD_BLOCKS = Blocks(v=64)
#: float32 inputs multiply on the FMA units (IEEE, no TF32): smaller tiles avoid spills.
FP32_BLOCKS = Blocks(64, 64, 32)


def _blocks(blocks: Blocks | None, dtype: torch.dtype, default: Blocks) -> Blocks:
    if blocks is not None:
        return blocks
    return FP32_BLOCKS if dtype == torch.float32 else default


class LinearState(NamedTuple):
    """Merged per-row state of ``token.md`` §2 (float32, ``(N,)``), ``y = z'_y`` or ``-inf``."""

    m: torch.Tensor
    s: torch.Tensor
    w: torch.Tensor
    q: torch.Tensor
    y: torch.Tensor


@triton.jit
def _logits_tile(
    h_ptr,
    stride_hn,
    stride_hd,
    w_ptr,
    stride_wv,
    stride_wd,
    b_ptr,
    rows,
    cols,
    n_rows,
    v_end,
    dim,
    temperature,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    SCALE: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``z' = (hidden[rows] @ weight[cols]ᵀ + bias[cols]) / T``; ``-inf`` for columns ≥ v_end."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    row_ok = rows < n_rows
    col_ok = cols < v_end
    for d0 in range(0, dim, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < dim
        h = tl.load(
            h_ptr + rows[:, None] * stride_hn + dd[None, :] * stride_hd,
            mask=row_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + dd[:, None] * stride_wd + cols[None, :] * stride_wv,
            mask=d_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if UPCAST:  # the interpreter multiplies bf16 as raw integers: widen exactly first
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc = tl.dot(h, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if SCALE:
        acc = divide(acc, temperature, inv_temperature)
    return tl.where(col_ok[None, :], acc, float("-inf"))


@triton.jit
def _linear_forward_kernel(
    h_ptr,
    stride_hn,
    stride_hd,
    w_ptr,
    stride_wv,
    stride_wd,
    b_ptr,
    labels_ptr,
    part_ptr,
    n_rows,
    vocab,
    dim,
    split_size,
    temperature,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    SCALE: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    COLLISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    v_start = split * split_size
    v_end = tl.minimum(vocab, v_start + split_size)
    y = tl.load(labels_ptr + rows64, mask=row_ok, other=-1)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    w = tl.zeros([BLOCK_N], tl.float32)
    q = tl.zeros([BLOCK_N], tl.float32)
    y_val = tl.zeros([BLOCK_N], tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = _logits_tile(
            h_ptr,
            stride_hn,
            stride_hd,
            w_ptr,
            stride_wv,
            stride_wd,
            b_ptr,
            rows64,
            cols.to(tl.int64),
            n_rows,
            v_end,
            dim,
            temperature,
            inv_temperature,
            HAS_BIAS,
            SCALE,
            IEEE,
            UPCAST,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
        )
        hit = (cols[None, :] == y[:, None]) & (cols < v_end)[None, :]
        y_val += tl.sum(tl.where(hit, z, 0.0), 1)  # the label logit from this tile value
        m_new = tl.maximum(m, tl.max(z, 1))
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        zs = tl.maximum(z - ref[:, None], NEG_BIG)  # −inf → finite: e = 0, zs·e = 0 exactly
        e = tl.exp(zs)
        d = tl.where(m == float("-inf"), NEG_BIG, m - ref)
        a = tl.exp(d)
        w = a * (w + d * s) + tl.sum(zs * e, 1)
        s = a * s + tl.sum(e, 1)
        if COLLISION:
            q = a * a * q + tl.sum(e * e, 1)
        m = m_new
    stride_k = n_splits * n_rows
    base = part_ptr + split * n_rows + rows64
    tl.store(base, m, mask=row_ok)
    tl.store(base + stride_k, s, mask=row_ok)
    tl.store(base + 2 * stride_k, w, mask=row_ok)
    tl.store(base + 3 * stride_k, q, mask=row_ok)
    tl.store(base + 4 * stride_k, y_val, mask=row_ok)


@triton.jit
def _linear_grad_kernel(
    h_ptr,
    stride_hn,
    stride_hd,
    w_ptr,
    stride_wv,
    stride_wd,
    b_ptr,
    labels_ptr,
    lse_ptr,
    mu_ptr,
    p2_ptr,
    g_lp_ptr,
    g_h_ptr,
    g_c_ptr,
    g_ptr,
    stride_g,
    n_rows,
    v_end,
    dim,
    temperature,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    SCALE: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    LABELS: tl.constexpr,
    ENTROPY: tl.constexpr,
    COLLISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``g_z`` of one chunk: rows ``[0, n_rows)`` × columns ``[0, v_end)`` of the given views."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    z = _logits_tile(
        h_ptr,
        stride_hn,
        stride_hd,
        w_ptr,
        stride_wv,
        stride_wd,
        b_ptr,
        rows64,
        cols64,
        n_rows,
        v_end,
        dim,
        temperature,
        inv_temperature,
        HAS_BIAS,
        SCALE,
        IEEE,
        UPCAST,
        BLOCK_N,
        BLOCK_V,
        BLOCK_D,
    )
    lse = tl.load(lse_ptr + rows64, mask=row_ok, other=0.0)
    p = tl.exp(z - lse[:, None])  # exactly 0 on masked entries and padding columns
    g = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    if ENTROPY:
        mu = tl.load(mu_ptr + rows64, mask=row_ok, other=0.0)
        g_h = tl.load(g_h_ptr + rows64, mask=row_ok, other=0.0)
        centred = tl.maximum(z - mu[:, None], NEG_BIG)  # finite on masked entries
        g -= g_h[:, None] * p * centred
    if COLLISION:
        p2 = tl.load(p2_ptr + rows64, mask=row_ok, other=0.0)
        g_c = tl.load(g_c_ptr + rows64, mask=row_ok, other=0.0)
        g += 2.0 * g_c[:, None] * p * (p - p2[:, None])
    if LABELS:
        y = tl.load(labels_ptr + rows64, mask=row_ok, other=-1)
        g_y = tl.load(g_lp_ptr + rows64, mask=row_ok, other=0.0)
        onehot = (cols64[None, :] == y[:, None]).to(tl.float32)
        g += g_y[:, None] * (onehot - p)
    if SCALE:
        g = g * inv_temperature
    out = g_ptr + rows64[:, None] * stride_g + cols64[None, :]
    tl.store(out, g.to(g_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < v_end)[None, :])


def _common(hidden: torch.Tensor, temperature: float) -> dict[str, object]:
    """Constexpr flags shared by both kernels."""
    return {
        "SCALE": temperature != 1.0,
        "IEEE": hidden.dtype == torch.float32,
        "UPCAST": interpreting(),
    }


def _launch() -> dict[str, object]:
    """Launch options on a GPU (the interpreter takes none); FMA contraction stays on."""
    if interpreting():
        return {}
    return {"num_warps": NUM_WARPS, "num_stages": NUM_STAGES, "enable_fp_fusion": True}


def _splits(rows: int, vocab: int, device: torch.device, blocks: Blocks) -> int:
    """Vocabulary splits: enough programs for two waves over the device's multiprocessors."""
    if blocks.splits is not None:
        return max(1, min(blocks.splits, triton.cdiv(vocab, blocks.v)))
    units = 8
    if device.type == "cuda":
        units = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(rows, blocks.n)
    return max(1, min(triton.cdiv(2 * units, row_blocks), triton.cdiv(vocab, blocks.v)))


def linear_state(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    local_labels: torch.Tensor,
    temperature: float,
    collision: bool,
    blocks: Blocks | None = None,
) -> LinearState:
    """Row state of ``z' = (hidden @ weightᵀ + bias) / T`` over this shard (``token.md`` §8.2).

    ``local_labels`` ``(N,)`` int64: the label's column in ``weight``, or -1 when the label is
    ignored or lies in another shard (then ``y = -inf``).
    """
    rows, dim = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    blocks = _blocks(blocks, hidden.dtype, DEFAULT_BLOCKS)
    n_splits = _splits(rows, vocab, device, blocks)
    split_size = triton.cdiv(triton.cdiv(vocab, n_splits), blocks.v) * blocks.v
    n_splits = triton.cdiv(vocab, split_size)
    part = torch.empty((5, n_splits, rows), dtype=torch.float32, device=device)
    labels = local_labels.to(torch.int64).contiguous()
    bias = None if bias is None else bias.contiguous()  # the kernels read it with unit stride
    if rows:
        grid = (triton.cdiv(rows, blocks.n), n_splits)
        _linear_forward_kernel[grid](
            hidden,
            hidden.stride(0),
            hidden.stride(1),
            weight,
            weight.stride(0),
            weight.stride(1),
            bias,
            labels,
            part,
            rows,
            vocab,
            dim,
            split_size,
            *temperature_args(None, temperature)[1:],
            HAS_BIAS=bias is not None,
            COLLISION=collision,
            BLOCK_N=blocks.n,
            BLOCK_V=blocks.v,
            BLOCK_D=blocks.d,
            **_common(hidden, temperature),
            **_launch(),
        )
    m_part, s_part, w_part, q_part, y_part = part
    # Merge the splits (token.md §2): empty splits (m = -inf) get weight 0.
    m = m_part.amax(0)
    ref = torch.where(torch.isneginf(m), 0.0, m)
    empty = torch.isneginf(m_part)
    d = torch.where(empty, 0.0, m_part - ref)
    a = torch.where(empty, 0.0, torch.exp(d))
    s = (a * s_part).sum(0)
    w = (a * (w_part + d * s_part)).sum(0)
    q = (a * a * q_part).sum(0)
    owned = labels >= 0
    y = torch.where(owned, y_part.sum(0), -torch.inf)  # one split holds the label, the rest 0
    return LinearState(m, s, w, q, y)


def linear_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    local_labels: torch.Tensor,
    lse: torch.Tensor,
    mu: torch.Tensor,
    sum_p2: torch.Tensor | None,
    g_lp: torch.Tensor | None,
    g_h: torch.Tensor | None,
    g_c: torch.Tensor | None,
    needs: tuple[bool, bool, bool],
    temperature: float,
    row_block: int,
    vocab_block: int,
    blocks: Blocks | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Float32 ``(d_hidden, d_weight, d_bias)`` (None where not needed), ``token.md`` §5, §8.2.

    ``g_lp`` is zero for ignored labels; ``local_labels`` as in :func:`linear_state`.
    """
    rows, dim = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    blocks = _blocks(blocks, hidden.dtype, GRAD_BLOCKS)
    need_h, need_w, need_b = needs
    f32 = {"dtype": torch.float32, "device": device}
    d_hidden = torch.zeros((rows, dim), **f32) if need_h else None
    d_weight = torch.zeros((vocab, dim), **f32) if need_w else None
    d_bias = torch.zeros(vocab, **f32) if need_b else None
    g_dtype = hidden.dtype  # the matmul input dtype (float32 inputs keep float32)
    labels = local_labels.to(torch.int64).contiguous()
    bias = None if bias is None else bias.contiguous()  # the kernels read it with unit stride

    def f32v(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(torch.float32).contiguous()

    lse, mu, sum_p2 = f32v(lse), f32v(mu), f32v(sum_p2)
    g_lp, g_h, g_c = f32v(g_lp), f32v(g_h), f32v(g_c)
    chunk = torch.empty(
        (min(rows, row_block), min(vocab, vocab_block)), dtype=g_dtype, device=device
    )
    for r0 in range(0, rows, row_block):
        r1 = min(rows, r0 + row_block)
        h_blk = hidden[r0:r1]
        for v0 in range(0, vocab, vocab_block):
            v1 = min(vocab, v0 + vocab_block)
            g = chunk[: r1 - r0, : v1 - v0]
            w_tile = weight[v0:v1]
            grid = (triton.cdiv(r1 - r0, blocks.n), triton.cdiv(v1 - v0, blocks.v))
            _linear_grad_kernel[grid](
                h_blk,
                h_blk.stride(0),
                h_blk.stride(1),
                w_tile,
                w_tile.stride(0),
                w_tile.stride(1),
                None if bias is None else bias[v0:v1],
                labels[r0:r1] - v0,
                lse[r0:r1],
                mu[r0:r1],
                None if sum_p2 is None else sum_p2[r0:r1],
                None if g_lp is None else g_lp[r0:r1],
                None if g_h is None else g_h[r0:r1],
                None if g_c is None else g_c[r0:r1],
                g,
                g.stride(0),
                r1 - r0,
                v1 - v0,
                dim,
                *temperature_args(None, temperature)[1:],
                HAS_BIAS=bias is not None,
                LABELS=g_lp is not None,
                ENTROPY=g_h is not None,
                COLLISION=g_c is not None,
                BLOCK_N=blocks.n,
                BLOCK_V=blocks.v,
                BLOCK_D=blocks.d,
                **_common(hidden, temperature),
                **_launch(),
            )
            if need_h:
                d_hidden[r0:r1] += _mm_f32(g, w_tile)
            if need_w:
                d_weight[v0:v1] += _mm_f32(g.t(), h_blk)
            if need_b:
                d_bias[v0:v1] += g.sum(0, dtype=torch.float32)
    return d_hidden, d_weight, d_bias


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with float32 accumulation and output (half inputs stay on tensor cores)."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16) and a.dtype == b.dtype:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.to(torch.float32), b.to(torch.float32))
