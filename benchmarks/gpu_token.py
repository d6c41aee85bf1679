"""The GPU table of ``performance.md``, reproduced next to entcore in one run.

Entropy + log-prob of the sampled token from bf16 logits ``(N, V) = (8192, 151936)`` (2.49 GB):
the HBM floor (one read), verl's ``entropy_from_logits`` form in bf16, TRL's 128-row chunked
``log_softmax`` form in bf16, the float32 upcast of the whole tensor, verl's 2048-row chunked
form (fp32 per chunk), log-prob by gather − logsumexp in fp32, ``torch.compile`` of entropy +
log-prob with fp32 accumulation; then the linear head ``hidden (N, D) @ W.T (V, D)`` alone in
bf16, naive and in 1024-row chunks. Next to them: ``entcore.torch.token_logprob_entropy`` and
``token_logprob_entropy_linear`` through the Triton kernels and through the chunked torch
fallback (``ENTCORE_TORCH_KERNEL=chunked``), forward and forward + backward. TRL's fused Triton
kernel (an anchor row of ``performance.md``) is not reproduced: TRL is not a dependency.

Measured as ``performance.md`` says: CUDA events, 3 warm-ups, median of 10; extra memory is
``torch.cuda.max_memory_allocated()`` above what was allocated before the call (inputs), in a
separate call; the error is the largest absolute difference of the entropy and log-prob from a
float64 evaluation on the first ``--error-rows`` rows. Ratios are times over entcore's Triton
time of the same section, all measured in the same process.

    python benchmarks/gpu_token.py [--rows 8192] [--vocab 151936] [--dim 4096] [--json PATH]
    python benchmarks/gpu_token.py --device cpu --small   # dry run of every code path on CPU

The dry run uses small shapes, wall-clock timing, no memory figures, and Triton's interpreter
(``TRITON_INTERPRET=1`` is set before Triton is imported); its times mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from _harness import write_json

GIB = 2**30


@dataclass
class GpuRow:
    section: str
    method: str
    ms: float
    extra_gib: float | None
    max_error: float | None
    ratio: float  # this method's time / entcore Triton's time in the same section
    note: str = ""


# ---------------------------------------------------------------------------------------------
# The forms found in the wild (performance.md anchors)
# ---------------------------------------------------------------------------------------------


def verl_entropy(x: torch.Tensor) -> torch.Tensor:
    """verl ``entropy_from_logits``: ``logsumexp(z) − Σ softmax(z)·z`` in the input dtype."""
    return torch.logsumexp(x, dim=-1) - (torch.softmax(x, dim=-1) * x).sum(dim=-1)


def trl_chunked_entropy(x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """TRL ``entropy_from_logits(logits, chunk_size=128)``: ``−Σ exp(lp)·lp`` per chunk."""
    out = []
    for part in x.split(chunk):
        lp = torch.log_softmax(part, dim=-1)
        out.append(-(lp.exp() * lp).sum(dim=-1))
    return torch.cat(out)


def verl_chunked_entropy(x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """verl ``entropy_from_logits_with_chunking``: fp32 per 2048-row chunk."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], chunk):
        out[i : i + chunk] = verl_entropy(x[i : i + chunk].float())
    return out


def gather_logprob(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob by gather − logsumexp in fp32 (verl ``logprobs_from_logits`` without flash-attn)."""
    z = x.float()
    return z.gather(-1, labels[:, None])[:, 0] - torch.logsumexp(z, dim=-1)


def logprob_entropy_fp32(
    x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy + log-prob with fp32 accumulation, the body given to ``torch.compile``."""
    z = x.float()
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    p = torch.exp(z - lse)
    entropy = lse[:, 0] - (p * z).sum(dim=-1)
    return z.gather(-1, labels[:, None])[:, 0] - lse[:, 0], entropy


def linear_naive(hidden, weight, labels):
    return logprob_entropy_fp32(hidden @ weight.T, labels)


def linear_chunked(hidden, weight, labels, chunk: int = 1024):
    parts = [
        linear_naive(hidden[i : i + chunk], weight, labels[i : i + chunk])
        for i in range(0, hidden.shape[0], chunk)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


@contextmanager
def kernel(choice: str) -> Iterator[None]:
    """``ENTCORE_TORCH_KERNEL`` for the duration (``triton`` or ``chunked``)."""
    old = os.environ.get("ENTCORE_TORCH_KERNEL")
    os.environ["ENTCORE_TORCH_KERNEL"] = choice
    try:
        yield
    finally:
        if old is None:
            del os.environ["ENTCORE_TORCH_KERNEL"]
        else:
            os.environ["ENTCORE_TORCH_KERNEL"] = old


class Timer:
    """Median time (CUDA events on a GPU, wall clock on CPU) and extra memory of a call."""

    def __init__(self, device: torch.device, warmup: int, repeats: int) -> None:
        self.cuda = device.type == "cuda"
        self.warmup = warmup
        self.repeats = repeats

    def ms(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    def extra_gib(self, fn: Callable[[], object]) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return peak / GIB


def max_error(
    outputs: object, lp_ref: torch.Tensor, h_ref: torch.Tensor, rows: int
) -> float | None:
    """Largest |difference| of ``(logprob, entropy)`` (or entropy alone) on the first rows."""
    if outputs is None:
        return None
    if isinstance(outputs, torch.Tensor):
        return float((outputs[:rows].double() - h_ref).abs().max())
    lp, h = outputs
    err_h = (h[:rows].double() - h_ref).abs().max()
    err_lp = (lp[:rows].double() - lp_ref).abs().max()
    return float(torch.maximum(err_h, err_lp))


def reference(z64: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(logprob, entropy)`` of the rows of ``z64`` (finite logits)."""
    lse = torch.logsumexp(z64, dim=-1)
    p = torch.exp(z64 - lse[:, None])
    return z64.gather(-1, labels[:, None])[:, 0] - lse, lse - (p * z64).sum(dim=-1)


def fwd_bwd(fn: Callable[[], tuple[torch.Tensor, ...]], leaves: list[torch.Tensor]):
    """A call of ``fn`` followed by the backward of ``Σ logprob + Σ entropy``."""

    def run() -> None:
        for t in leaves:
            t.grad = None
        lp, h = fn()
        (lp.sum() + h.sum()).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dim", type=int, default=4096, help="hidden size of the linear head")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--error-rows", type=int, default=64)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument("--small", action="store_true", help="(64, 1000) logits, D = 64")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--no-linear", action="store_true", help="skip the linear-head section")
    parser.add_argument("--json", default="bench-results/gpu_token.json")
    args = parser.parse_args()
    if args.small:
        args.rows, args.vocab, args.dim = 64, 1000, 64
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "gpu_token.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run `python benchmarks/gpu_token.py --device cpu --small` for a dry run of its logic"
        )
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports Triton
    elif device.type != "cuda":
        sys.exit(f"--device: expected cuda or cpu, got {args.device!r}")

    import entcore.torch as et

    dtype = getattr(torch, args.dtype)
    timer = Timer(device, args.warmup, args.repeats)
    gen = torch.Generator(device=device).manual_seed(0)
    n, v, d = args.rows, args.vocab, args.dim
    x = (torch.randn((n, v), generator=gen, device=device) * 4.0).to(dtype)
    labels = torch.randint(0, v, (n,), generator=gen, device=device)
    e_rows = min(args.error_rows, n)
    lp_ref, h_ref = reference(x[:e_rows].double(), labels[:e_rows])
    rows: list[GpuRow] = []

    def add(section, method, fn, note="", errors=True):
        ms = timer.ms(fn)
        extra = timer.extra_gib(fn)
        err = max_error(fn(), lp_ref, h_ref, e_rows) if errors else None
        rows.append(GpuRow(section, method, ms, extra, err, 0.0, note))
        print(f"  {method}: {ms:.3f} ms", flush=True)

    logits = f"Entropy + log-prob from {args.dtype} logits ({n}, {v}), {x.nbytes / 1e9:.2f} GB"
    print(logits)

    def entcore_logits(choice: str):
        def run():
            with kernel(choice):
                return et.token_logprob_entropy(x, labels)

        return run

    add(logits, "entcore token_logprob_entropy, Triton", entcore_logits("triton"))
    add(logits, "entcore token_logprob_entropy, chunked torch", entcore_logits("chunked"))
    add(logits, "one read of the logits (sum(dim=-1)), the HBM floor", lambda: x.sum(-1), "", False)
    add(logits, f"verl entropy_from_logits form in {args.dtype}", lambda: verl_entropy(x))
    add(logits, "TRL chunked (128 rows) log_softmax form", lambda: trl_chunked_entropy(x))
    add(logits, "float32 upcast of the whole tensor (verl form)", lambda: verl_entropy(x.float()))
    add(logits, "verl chunked (2048 rows, fp32 per chunk)", lambda: verl_chunked_entropy(x))
    add(
        logits,
        "log-prob by gather - logsumexp, fp32",
        lambda: gather_logprob(x, labels),
        "log-prob only",
        False,
    )
    if not args.no_compile:
        compiled = torch.compile(logprob_entropy_fp32)
        add(logits, "torch.compile of entropy + log-prob, fp32", lambda: compiled(x, labels))

    xg = x.clone().requires_grad_()
    scratch = torch.empty_like(x)

    def entcore_grad(choice: str):
        def run():
            with kernel(choice):
                fwd_bwd(lambda: et.token_logprob_entropy(xg, labels), [xg])()

        return run

    add(logits, "entcore forward + backward, Triton", entcore_grad("triton"), "", False)
    add(logits, "entcore forward + backward, chunked torch", entcore_grad("chunked"), "", False)
    add(
        logits,
        "three passes over the logits (sum, then copy), the fwd+bwd floor",
        lambda: (x.sum(-1), scratch.copy_(x)),
        "",
        False,
    )

    if not args.no_linear:
        linear = f"Linear head: hidden ({n}, {d}) @ W.T ({v}, {d}), {args.dtype}"
        print(linear)
        hidden = (torch.randn((n, d), generator=gen, device=device) / d**0.5).to(dtype)
        weight = (torch.randn((v, d), generator=gen, device=device) * 2.0).to(dtype)
        z64 = hidden[:e_rows].double() @ weight.double().T
        lp_ref, h_ref = reference(z64, labels[:e_rows])
        del z64

        def entcore_linear(choice: str, h=hidden, w=weight):
            def run():
                with kernel(choice):
                    return et.token_logprob_entropy_linear(h, w, labels)

            return run

        add(linear, "entcore token_logprob_entropy_linear, Triton", entcore_linear("triton"))
        add(linear, "entcore ..._linear, chunked torch", entcore_linear("chunked"))
        add(linear, "matmul alone", lambda: hidden @ weight.T, "", False)
        add(
            linear,
            "linear head + entropy + log-prob, naive",
            lambda: linear_naive(hidden, weight, labels),
        )
        add(
            linear,
            "linear head + entropy + log-prob, 1024-row chunks",
            lambda: linear_chunked(hidden, weight, labels),
        )
        hg = hidden.clone().requires_grad_()
        wg = weight.clone().requires_grad_()

        def linear_grad(choice: str):
            def run():
                with kernel(choice):
                    fwd_bwd(lambda: et.token_logprob_entropy_linear(hg, wg, labels), [hg, wg])()

            return run

        add(
            linear,
            "entcore ..._linear forward + backward, Triton",
            linear_grad("triton"),
            "",
            False,
        )

    for section in dict.fromkeys(r.section for r in rows):
        base = next(r.ms for r in rows if r.section == section)
        for r in rows:
            if r.section == section:
                r.ratio = r.ms / base
    report(rows, device, args)


def report(rows: list[GpuRow], device: torch.device, args: argparse.Namespace) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"\nDevice: {name}; torch {torch.__version__}")
    for section in dict.fromkeys(r.section for r in rows):
        print(f"\n{section}")
        width = max(len(r.method) for r in rows)
        print(f"| {'method':<{width}} | {'median':>10} | {'extra':>9} | {'max error':>9} | ratio")
        print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 11}|{'-' * 11}|------")
        for r in rows:
            if r.section != section:
                continue
            extra = "—" if r.extra_gib is None else f"{r.extra_gib:.2f} GiB"
            err = "—" if r.max_error is None else f"{r.max_error:.1e}"
            print(
                f"| {r.method:<{width}} | {r.ms:7.3f} ms | {extra:>9} | {err:>9} | {r.ratio:.2f}x"
            )
    by = {r.method: r for r in rows}
    goals = goal_lines(by, args.dtype)
    print("\nGoals (performance.md, H200):")
    for line in goals:
        print(f"  {line}")
    write_json(
        args.json,
        "gpu_token",
        {
            "device": name,
            "shape": [args.rows, args.vocab],
            "dim": args.dim,
            "dtype": args.dtype,
            "rows": rows,
            "goals": goals,
        },
    )


def goal_lines(by: dict[str, GpuRow], dtype: str) -> list[str]:
    """The goals of ``performance.md`` against the figures of this run."""
    tri = by["entcore token_logprob_entropy, Triton"]
    floor = by["one read of the logits (sum(dim=-1)), the HBM floor"]
    lines = [
        f"forward {tri.ms:.3f} ms (goal <= 0.8 ms), error {tri.max_error:.1e} (goal <= 1e-4), "
        f"{floor.ms / tri.ms:.0%} of the HBM floor (goal >= 75%)",
        f"{by['verl entropy_from_logits form in ' + dtype].ms / tri.ms:.1f}x verl's form "
        "(goal >= 12x)",
    ]
    compiled = by.get("torch.compile of entropy + log-prob, fp32")
    if compiled is not None:
        lines.append(f"{compiled.ms / tri.ms:.2f}x torch.compile (goal >= 2.5x)")
    fb = by["entcore forward + backward, Triton"]
    lines.append(f"forward + backward {fb.ms:.3f} ms (goal <= 2.1 ms)")
    lin = by.get("entcore token_logprob_entropy_linear, Triton")
    if lin is not None:
        mm = by["matmul alone"]
        lin_fb = by["entcore ..._linear forward + backward, Triton"]
        extra = "—" if lin.extra_gib is None else f"{lin.extra_gib:.2f} GiB"
        lines.append(
            f"linear head forward {lin.ms / mm.ms:.2f}x the matmul (goal <= 1.15x), extra memory "
            f"{extra} (goal <= 0.5 GiB); backward {(lin_fb.ms - lin.ms) / mm.ms:.2f}x the "
            "matmul (goal <= 2.5x)"
        )
    return lines


if __name__ == "__main__":
    main()
