"""The NumPy and torch faces of ``more.md`` against the float64 oracle, and the torch gradients.

Tolerances (``conventions.md`` Numbers): float32 results within 1e-5 relative (1e-5 absolute near
0) of the reference run on the same, exactly upcast, values; float64 results within 1e-10.
Gradients of the differentiable measures are checked with ``gradcheck`` in float64, and the
regulariser's gradient against the closed form of ``more.md`` §3.
"""

from __future__ import annotations

from helpers import require_torch

torch = require_torch()

import math  # noqa: E402

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import entcore  # noqa: E402
import entcore.torch as et  # noqa: E402
from entcore.reference import measures as ref  # noqa: E402

F32 = {"rtol": 1e-5, "atol": 1e-5}
F64 = {"rtol": 1e-10, "atol": 1e-12}


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def t(x, dtype=None):
    x = torch.as_tensor(np.asarray(x))
    return x if dtype is None else x.to(dtype)


def close(got, want, tol):
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, **tol)


# ---------------------------------------------------------------------------------------------
# §1 attention_entropy
# ---------------------------------------------------------------------------------------------

CASES = [
    {},
    {"from_logits": True},
    {"from_logits": True, "causal": True, "normalize": "row"},
    {"causal": True, "normalize": "log_keys", "reduce": "mean_queries"},
    {"from_logits": True, "key_mask": "km", "query_mask": "qm", "reduce": "head_mean"},
    {"query_mask": "qm", "eps": 1e-9},
    {"from_logits": True, "eps": 1e-9, "causal": True},
]


def attention_case(seed, case, layers=False):
    rng = np.random.default_rng(seed)
    shape = (2, 2, 3, 4, 6) if layers else (2, 3, 4, 6)
    s = rng.normal(size=shape) * 2
    causal = np.arange(6)[None, :] <= 2 + np.arange(4)[:, None]
    x = s if case.get("from_logits") else softmax(np.where(causal, s, -np.inf))
    kw = dict(case)
    if kw.get("key_mask") == "km":
        kw["key_mask"] = rng.random((2, 6)) > 0.3
        kw["key_mask"][:, 0] = True
    if kw.get("query_mask") == "qm":
        kw["query_mask"] = rng.random((2, 4)) > 0.4
        x[..., 0, :, 1, :] = np.nan  # an excluded row of batch 0 (query 1) may hold NaN
        kw["query_mask"][0, 1] = False
    return x, kw


@pytest.mark.parametrize("layers", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
def test_attention_entropy_numpy_face(case, dtype, layers):
    x, kw = attention_case(case, CASES[case], layers)
    xd = x.astype(dtype)
    want = ref.attention_entropy(xd.astype(np.float64), **kw)
    got = entcore.attention_entropy(xd, **kw)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, **F32)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_attention_entropy_torch_face(case, dtype, grad):
    # Without a graph, CPU tensors go through the Rust core; with one, through torch ops.
    x, kw = attention_case(case, CASES[case], layers=case % 2 == 0)
    xt = t(x, dtype).requires_grad_(grad)
    want = ref.attention_entropy(xt.detach().to(torch.float64).numpy(), **kw)
    got = et.attention_entropy(
        xt, **{k: t(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    )
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    close(got, want, F64 if dtype == torch.float64 else F32)


def test_attention_entropy_sequence_of_layers_and_nan_propagation():
    rng = np.random.default_rng(30)
    layers = [softmax(rng.normal(size=(1, 2, 3, 4))).astype(np.float32) for _ in range(2)]
    layers[1][0, 1, 2, 0] = np.nan
    want = ref.attention_entropy(layers, nan_policy="propagate")
    got = entcore.attention_entropy(layers, nan_policy="propagate")
    np.testing.assert_allclose(got, want, **F32)
    assert np.isnan(got[1, 0, 1, 2]) and np.isfinite(np.delete(got.ravel(), 1 * 6 + 5)).all()
    got_t = et.attention_entropy([t(a) for a in layers], nan_policy="propagate")
    close(got_t, want, F32)
    for face in (entcore.attention_entropy, lambda a: et.attention_entropy([t(v) for v in a])):
        with pytest.raises(ValueError, match="attn: .*NaN"):
            face(layers)
    with pytest.raises(ValueError, match="attn: .*-inf"):
        entcore.attention_entropy(np.full((1, 1, 1, 3), -np.inf, np.float32), from_logits=True)
    for grad in (False, True):  # the Rust core and the torch ops
        with pytest.raises(ValueError, match="attn: .*-inf"):
            x = torch.full((1, 1, 1, 3), -math.inf, requires_grad=grad)
            et.attention_entropy(x, from_logits=True)
    with pytest.raises(TypeError, match="attn"):
        entcore.attention_entropy(np.ones((1, 1, 1, 3), np.int32))


def test_attention_entropy_gradients_are_finite_with_masked_logits():
    s = torch.tensor([[[[0.5, -math.inf, 1.0, -0.2], [0.1, 0.2, -math.inf, -math.inf]]]])
    s = s.to(torch.float64).requires_grad_()
    h = et.attention_entropy(s, from_logits=True)
    h.sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 0, 0, 1] == 0.0
    p = torch.softmax(s.detach(), -1).requires_grad_()
    et.attention_entropy(p, causal=True).sum().backward()
    assert torch.isfinite(p.grad).all()
    x = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: et.attention_entropy(v, from_logits=True, causal=True), (x,))
    assert gradcheck(lambda v: et.attention_entropy(v, from_logits=True, eps=1e-3), (x,))
    q = torch.softmax(torch.randn(1, 2, 3, 5, dtype=torch.float64), -1).requires_grad_()
    assert gradcheck(lambda v: et.attention_entropy(v, normalize="log_keys"), (q,))


# ---------------------------------------------------------------------------------------------
# §2, §3: overload fraction and the regulariser
# ---------------------------------------------------------------------------------------------


def test_overload_fraction_faces():
    rng = np.random.default_rng(31)
    h = rng.uniform(0, 3, size=(4, 9))
    want = ref.entropic_overload_fraction(h, max_entropy=3.0, threshold=0.5, side="below")
    close(
        entcore.entropic_overload_fraction(h, max_entropy=3.0, threshold=0.5, side="below"),
        want,
        F64,
    )
    got = et.entropic_overload_fraction(t(h), max_entropy=3.0, threshold=0.5, side="below")
    assert got.dtype == torch.float64
    close(got, want, F64)


def test_regularizer_faces_and_gradient_formula():
    rng = np.random.default_rng(32)
    n_layers, batch, heads, q = 3, 2, 4, 5
    e_max = math.log(32)
    theta = rng.uniform(0.2, 0.9, size=(heads,))
    h = theta[None, None, :, None] * e_max + rng.normal(scale=0.8, size=(n_layers, batch, heads, q))
    qmask = rng.random((batch, q)) > 0.3
    for reduction in ("sum", "mean"):
        want = ref.attention_entropy_regularizer(
            h, theta, max_entropy=e_max, query_mask=qmask, reduction=reduction
        )
        close(
            entcore.attention_entropy_regularizer(
                h, theta, max_entropy=e_max, query_mask=qmask, reduction=reduction
            ),
            want,
            F64,
        )
        close(
            et.attention_entropy_regularizer(
                t(h), t(theta), max_entropy=e_max, query_mask=t(qmask), reduction=reduction
            ),
            want,
            F64,
        )
    th = t(np.broadcast_to(theta, (n_layers, heads)).copy()).requires_grad_()
    et.attention_entropy_regularizer(t(h), th, max_entropy=e_max).backward()
    dev = h - theta[None, None, :, None] * e_max
    outside = np.abs(dev) > 0.2 * e_max
    want_grad = np.where(outside, -2 * dev * e_max / (heads * n_layers), 0.0).sum(axis=(1, 3))
    np.testing.assert_allclose(th.grad.numpy(), want_grad, rtol=1e-12)
    hh = t(h).requires_grad_()
    assert gradcheck(
        lambda v, w: et.attention_entropy_regularizer(v, w, max_entropy=e_max, reduction="mean"),
        (hh, th),
    )


# ---------------------------------------------------------------------------------------------
# §4 – §8 utilities
# ---------------------------------------------------------------------------------------------


def test_scale_faces():
    n = np.array([64, 256, 1024])
    want = ref.entropy_invariant_scale(256, n, 64)
    close(entcore.entropy_invariant_scale(256, n, 64), want, F64)
    close(et.entropy_invariant_scale(256, t(n), 64), want, F64)
    with pytest.raises(ValueError, match="n_train"):
        et.entropy_invariant_scale(1, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deyo_torch_face_and_gradient(dtype):
    rng = np.random.default_rng(33)
    logits = rng.normal(size=(30, 8)) * 4
    aug = rng.normal(size=(30, 8))
    want = ref.deyo(logits, aug)
    got = et.deyo(t(logits, dtype).requires_grad_(), t(aug, dtype))
    tol = F64 if dtype == torch.float64 else F32
    for field in ("entropy", "plpd", "weights", "loss"):
        close(getattr(got, field), getattr(want, field), tol)
    assert torch.equal(got.selected, torch.as_tensor(want.selected))
    assert got.n_selected == want.n_selected > 0
    got.loss.backward()
    assert entcore.deyo is ref.deyo
    empty = et.deyo(torch.zeros(3, 5, requires_grad=True), torch.zeros(3, 5))
    assert float(empty.loss.detach()) == 0.0 and empty.loss.requires_grad
    # Weights and PLPD are constants: the gradient is (1/|S|) Σ_S w_i ∇Ent_i.
    x = t(logits).requires_grad_()
    r = et.deyo(x, t(aug))
    (grad,) = torch.autograd.grad(r.loss, x)
    y = x.detach().clone().requires_grad_()
    p = torch.softmax(y, 1)
    ent = -(p * torch.log(p)).sum(1)
    direct = (r.weights * ent)[r.selected].sum() / r.n_selected
    (want_grad,) = torch.autograd.grad(direct, y)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transform", [None, "softplus_mean", "abs_mean"])
def test_ldr_losses_torch_face_and_gradients(transform):
    rng = np.random.default_rng(34)
    f = rng.normal(size=(7, 5))
    y = rng.integers(0, 5, size=7)
    lam_prev = rng.uniform(2, 10, size=7)
    for reduction in ("mean", "sum", "none"):
        want = ref.ldr_kl_loss(f, y, score_transform=transform, reduction=reduction)
        close(et.ldr_kl_loss(t(f), t(y), score_transform=transform, reduction=reduction), want, F64)
        loss, lam_new = ref.aldr_kl_loss(
            f, y, lam_prev, score_transform=transform, reduction=reduction
        )
        got, got_lam = et.aldr_kl_loss(
            t(f), t(y), t(lam_prev), score_transform=transform, reduction=reduction
        )
        close(got, loss, F64)
        close(got_lam, lam_new, F64)
        assert not got_lam.requires_grad
    x = t(f).requires_grad_()
    assert gradcheck(lambda v: et.ldr_kl_loss(v, t(y), score_transform=transform), (x,))
    # lam_new is a constant of the loss: its gradient is that of λ_new,i ln mean exp(z/λ_new,i).
    loss, lam_new = et.aldr_kl_loss(x, t(y), t(lam_prev), score_transform=transform)
    (grad,) = torch.autograd.grad(loss, x)
    per_row = torch.stack(
        [
            et.ldr_kl_loss(
                x[i : i + 1], t(y[i : i + 1]), lam=float(lam_new[i]), score_transform=transform
            )
            for i in range(7)
        ]
    )
    (want_grad,) = torch.autograd.grad(per_row.mean(), x)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        et.ldr_kl_loss(t(f), torch.full((7,), 5))
    with pytest.raises(ValueError, match="alpha"):
        et.aldr_kl_loss(t(f), t(y), t(lam_prev), alpha=0.5)


def test_marginal_entropy_torch_face_and_gradient():
    rng = np.random.default_rng(35)
    z = rng.normal(size=(6, 2, 5))
    mask = rng.random((6, 2)) > 0.3
    for kw in ({}, {"eps": 0.0}, {"mask": mask}):
        want = ref.marginal_entropy(z, **kw)
        close(
            et.marginal_entropy(t(z), **{k: t(v) if k == "mask" else v for k, v in kw.items()}),
            want,
            F64,
        )
    p = softmax(z)
    close(
        et.marginal_entropy(t(p), from_logits=False),
        ref.marginal_entropy(p, from_logits=False),
        F64,
    )
    x = t(z).requires_grad_()
    assert gradcheck(lambda v: et.marginal_entropy(v), (x,))
    one_hot = torch.zeros(3, 4, dtype=torch.float64)
    one_hot[:, 0] = 1
    one_hot.requires_grad_()
    et.marginal_entropy(one_hot, from_logits=False).backward()
    assert torch.isfinite(one_hot.grad).all()


def test_east_faces():
    rng = np.random.default_rng(36)
    counts = rng.integers(0, 5, size=(6, 4))
    counts[:, 0] += 1
    close(et.action_entropy(t(counts)), ref.action_entropy(counts), F64)
    h = rng.normal(size=(6, 3))
    w = rng.uniform(0.1, 1, size=6)
    for kw in ({}, {"center": False}, {"normalize": True}):
        close(
            et.entropy_weighted_direction(t(h), t(w), **kw),
            ref.entropy_weighted_direction(h, w, **kw),
            F64,
        )
    with pytest.raises(ValueError, match="entropies"):
        et.entropy_weighted_direction(t(h), t(-w))


# ---------------------------------------------------------------------------------------------
# §9 – §14
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["rao", "mc"])
def test_semantic_entropy_faces(estimator):
    rng = np.random.default_rng(37)
    ids = rng.integers(0, 4, size=(8, 10)) * 3 - 5
    logp = rng.normal(size=(8, 10)) * 2
    logp[1, :4] = -np.inf
    mask = rng.random((8, 10)) > 0.2
    mask[:, 5] = True
    for args, kw in (((ids,), {}), ((ids, logp), {}), ((ids, logp), {"mask": mask})):
        want = ref.semantic_entropy(*args, estimator=estimator, **kw)
        got = entcore.semantic_entropy(*args, estimator=estimator, **kw)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, **F32)
        got_t = et.semantic_entropy(
            *(t(a) for a in args), estimator=estimator, **{k: t(v) for k, v in kw.items()}
        )
        assert got_t.dtype == torch.float32
        close(got_t, want, F32)
    single = entcore.semantic_entropy(ids[0], logp[0], estimator=estimator)
    np.testing.assert_allclose(
        single, ref.semantic_entropy(ids[0], logp[0], estimator=estimator), **F32
    )
    for face in (
        entcore.semantic_entropy,
        lambda *a, **k: et.semantic_entropy(*map(t, a), **{x: t(y) for x, y in k.items()}),
    ):
        with pytest.raises(ValueError, match="mask"):
            face(ids, mask=np.zeros((8, 10), dtype=bool))
        with pytest.raises(ValueError, match="seq_logprob"):
            face(ids, np.full((8, 10), -np.inf))


def test_inv_entropy_faces():
    rng = np.random.default_rng(38)
    sx, sy = np.abs(rng.normal(size=(2, 4, 5, 5)))
    close(et.inv_entropy(t(sx), t(sy)), ref.inv_entropy(sx, sy), F64)
    sy_all = np.abs(rng.normal(size=(15, 15)))
    want = ref.inv_entropy_bootstrap(sx[0], sy_all, n_answers=3, n_bootstrap=12, seed=5)
    close(
        et.inv_entropy_bootstrap(t(sx[0]), t(sy_all), n_answers=3, n_bootstrap=12, seed=5),
        want,
        F64,
    )
    with pytest.raises(ValueError, match="sim_x"):
        et.inv_entropy(t(-sx), t(sy))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"blur_sigma": None},
        {"gradient": "central", "bins": 64},
        {"gradient": "forward", "base": math.e},
    ],
)
def test_delentropy_faces(kw):
    rng = np.random.default_rng(39)
    img = rng.integers(0, 256, size=(3, 14, 11)).astype(np.uint8)
    want = ref.delentropy(img, **kw)
    close(et.delentropy(t(img), **kw), want, F64)
    close(
        et.delentropy(t(img.astype(np.float32)), **{**kw, "blur_sigma": None}),
        ref.delentropy(img.astype(np.float32), **{**kw, "blur_sigma": None}),
        F64,
    )
    values = rng.uniform(3, 7, size=50)
    for got, want_v in zip(
        et.delentropic_scene_profile(t(values)), ref.delentropic_scene_profile(values), strict=True
    ):
        close(got, want_v, F64)


def test_structural_and_pds_faces():
    rng = np.random.default_rng(40)
    w = rng.uniform(size=(9, 9)) * (rng.random((9, 9)) < 0.5)
    w = w + w.T
    w[2, :] = w[:, 2] = 0.0  # an isolated node
    labels = rng.integers(0, 3, size=9)
    close(et.structural_entropy(t(w)), ref.structural_entropy(w), F64)
    close(et.structural_entropy(t(w), t(labels)), ref.structural_entropy(w, labels), F64)
    close(
        et.structural_entropy(t(w), t(labels), base=math.e),
        ref.structural_entropy(w, labels, base=math.e),
        F64,
    )
    counts = rng.integers(0, 5, size=(4, 6))
    counts[0] = 0
    for kw in ({}, {"n_categories": 10}):
        close(et.pds_entropy(t(counts), **kw), ref.pds_entropy(counts, **kw), F64)
    with pytest.raises(ValueError, match="symmetric"):
        et.structural_entropy(torch.triu(torch.ones(3, 3)))


@pytest.mark.parametrize("from_logits", [False, True])
def test_history_consistency_faces_and_gradient(from_logits):
    rng = np.random.default_rng(41)
    z = rng.normal(size=(4, 3, 5, 7)) * 2
    x = z if from_logits else softmax(z)
    mask = rng.random((4, 3, 5)) > 0.25
    mask[:, 0, 0] = False  # a position with no kept step reads 0
    weights = rng.uniform(0.2, 1.0, size=4)
    for kw in ({}, {"weights": weights, "mask": mask}):
        want = ref.history_consistency(x, from_logits=from_logits, **kw)
        got = entcore.history_consistency(x.astype(np.float32), from_logits=from_logits, **kw)
        want32 = ref.history_consistency(x.astype(np.float32), from_logits=from_logits, **kw)
        got_t = et.history_consistency(
            t(x), from_logits=from_logits, **{k: t(v) for k, v in kw.items()}
        )
        for g, g_t, w64, w32 in zip(got, got_t, want, want32, strict=True):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w32, **F32)
            close(g_t, w64, F64)
    xt = t(x[:, :1, :2]).requires_grad_()
    for i in range(3):
        assert gradcheck(
            lambda v, i=i: et.history_consistency(v, from_logits=from_logits)[i], (xt,)
        )
