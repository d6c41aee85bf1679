"""The ``entcore`` command line.

``entcore demo`` runs the main job: the rollout report on the real rollouts shipped in the
package. ``entcore rollout-report PATH`` does the same for any buffer in entcore's format,
``entcore token-demo`` holds the token kernels against NumPy and torch, ``entcore kv-profile``
profiles attention heads by matrix entropy (SmolLM2 or a KV dump), ``entcore info`` prints
the build, the CPU kernel family and the thread count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import entcore


def _info(_: argparse.Namespace) -> int:
    from entcore import _core

    print(f"entcore {entcore.__version__}")
    supported = ", ".join(_core.supported_simd_levels())
    print(f"kernels: {_core.simd_level()} (this CPU supports {supported})")
    print(f"threads: {entcore.get_num_threads()}")
    return 0


def _token_demo(args: argparse.Namespace) -> int:
    from entcore._demo import run_token_demo

    return run_token_demo(rows=args.rows, vocab=args.vocab, seed=args.seed)


def _demo(args: argparse.Namespace) -> int:
    from entcore.io import default_rollouts_path, default_tokenizer_path
    from entcore.report import run_report

    return run_report(default_rollouts_path(), Path(args.out), default_tokenizer_path())


def _rollout_report(args: argparse.Namespace) -> int:
    from entcore.report import run_report

    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    return run_report(Path(args.path), Path(args.out), tokenizer)


def _kv_profile(args: argparse.Namespace) -> int:
    from entcore.kv_report import run_kv_profile

    dump = Path(args.dump) if args.dump else None
    return run_kv_profile(
        dump,
        Path(args.out),
        samples=args.samples,
        tokens=args.tokens,
        k=args.k,
        n_groups=args.groups,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entcore", description="Exact, fast entropy statistics for RL on LLMs."
    )
    parser.add_argument("--threads", type=int, default=None, help="entcore worker threads")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="the rollout report on the real SmolLM2 rollouts shipped in the package"
    )
    demo.add_argument(
        "--out", default="entcore-report", help="report folder (default ./entcore-report)"
    )
    demo.set_defaults(run=_demo)
    report = commands.add_parser("rollout-report", help="the rollout report of any buffer")
    report.add_argument("path", help="a rollout buffer (safetensors, entcore.io format)")
    report.add_argument("--out", default="entcore-report", help="report folder")
    report.add_argument("--tokenizer", default=None, help="tokenizer.json to decode tokens")
    report.set_defaults(run=_rollout_report)
    token = commands.add_parser(
        "token-demo", help="token entropy and log-probs on LLM-shaped logits, vs NumPy and torch"
    )
    token.add_argument("--rows", type=int, default=1024, help="token positions (default 1024)")
    token.add_argument("--vocab", type=int, default=49152, help="vocabulary size (default 49152)")
    token.add_argument("--seed", type=int, default=0)
    token.set_defaults(run=_token_demo)
    kv = commands.add_parser(
        "kv-profile",
        help="per-layer/per-head matrix entropy of attention states (SmolLM2, or a KV dump)",
    )
    kv.add_argument(
        "dump", nargs="?", default=None, help="KV dump (safetensors: queries and/or keys)"
    )
    kv.add_argument("--out", default="entcore-kv-profile", help="output folder")
    kv.add_argument("--samples", type=int, default=4, help="model: text windows (default 4)")
    kv.add_argument("--tokens", type=int, default=256, help="model: tokens per window")
    kv.add_argument("--k", type=int, default=32, help="top-k eigenvalues (UNComp: 32)")
    kv.add_argument("--groups", type=int, default=2, help="head groups of the consensus")
    kv.set_defaults(run=_kv_profile)
    info = commands.add_parser("info", help="version, CPU kernels and threads")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        entcore.set_num_threads(args.threads)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"entcore: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
