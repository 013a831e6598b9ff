"""The ``wae-fast`` command (also ``python -m wae_fast``)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import torch


def _demo(args: argparse.Namespace) -> int:
    import wae_fast

    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.n, args.d, generator=g) * 1.1 + 0.1
    y = torch.randn(args.n, args.d, generator=g)
    x.requires_grad_(True)
    backend = wae_fast.which_backend(x, args.backend)
    t0 = time.perf_counter()
    val = wae_fast.mmd(x, y, backend=args.backend)
    val.backward()
    dt = time.perf_counter() - t0
    print(f"backend={backend}  N=M={args.n}  d={args.d}  7-scale IMQ unbiased MMD^2={val.item():.6g}  "
          f"forward+backward {dt * 1e3:.1f} ms  |grad x|={x.grad.norm().item():.4g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wae-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="MMD between two sample sets with the chosen backend, timed")
    d.add_argument("--n", type=int, default=4096)
    d.add_argument("--d", type=int, default=64)
    d.add_argument("--backend", default="auto")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
