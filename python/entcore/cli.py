"""The ``entcore`` command line.

``entcore demo`` runs the main job; ``entcore info`` prints the build, the CPU kernel family and
the thread count.
"""

from __future__ import annotations

import argparse
import sys

import entcore


def _info(_: argparse.Namespace) -> int:
    from entcore import _core

    print(f"entcore {entcore.__version__}")
    supported = ", ".join(_core.supported_simd_levels())
    print(f"kernels: {_core.simd_level()} (this CPU supports {supported})")
    print(f"threads: {entcore.get_num_threads()}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from entcore._demo import run_token_demo

    return run_token_demo(rows=args.rows, vocab=args.vocab, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entcore", description="Exact, fast entropy statistics for RL on LLMs."
    )
    parser.add_argument("--threads", type=int, default=None, help="entcore worker threads")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="token entropy and log-probs on LLM-shaped logits, against NumPy and torch"
    )
    demo.add_argument("--rows", type=int, default=1024, help="token positions (default 1024)")
    demo.add_argument("--vocab", type=int, default=49152, help="vocabulary size (default 49152)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    info = commands.add_parser("info", help="version, CPU kernels and threads")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        entcore.set_num_threads(args.threads)
    try:
        return args.run(args)
    except (ValueError, TypeError) as err:
        print(f"entcore: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
