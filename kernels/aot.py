"""Ahead-of-time compile check of every Triton kernel of wae_fast for sm_90, without a GPU.

    python -m wae_fast.kernels.aot [--set core|extra|all] [--family mmd|prior|all] [--only SUBSTRING]
                                   [--arch 90] [--json FILE]

Compiles each distinct code path (kernel function x kernel kind x dtype x estimator x symmetry x
ragged/even tiles x dot precision x padded d) with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`` and prints registers and spills per variant, read from
``ptxas -v`` run on the generated PTX (the ``n_regs``/``n_spills`` fields of a compiled kernel are
only filled when the binary is loaded on a GPU).  Exits 1 if any variant fails to compile.

TRITON_INTERPRET must be unset (the interpreter replaces ``@triton.jit``): run this in a fresh
process.  Written for Triton 3.6/3.7 (signature dict with "constexpr" entries + constexprs
dict keyed by name); an older API (constants keyed by index, constexprs absent from the
signature) is tried as a fallback.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("wae_fast.kernels.aot: unset TRITON_INTERPRET (the interpreter cannot compile)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import kmm as KM  # noqa: E402
from . import mmd as M  # noqa: E402
from . import mmd_small as SM  # noqa: E402
from . import prior as P  # noqa: E402
from . import reparam as R  # noqa: E402
from . import segments as SG  # noqa: E402

_PTR = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "fp64": "*fp64"}


def _jit_fn(k):
    """The JITFunction under autotune/heuristics wrappers."""
    while not isinstance(k, triton.runtime.jit.JITFunction):
        k = k.fn
    return k


def _sig_and_tl_dtype(dtype):
    """(signature name, Triton dtype) of the compute dtype of inputs of ``dtype``."""
    return ("fp64", tl.float64) if dtype == "fp64" else ("fp32", tl.float32)


def mmd_variants(which: str = "core"):
    """(name, kernel, runtime signature, constexprs, num_warps, num_stages).

    ``core``: every kernel x kind x dtype x estimator/symmetry at d = 64 (ragged tiles) with the
    primary tile config (:data:`wae_fast.kernels.mmd.PRIMARY`); ``extra``: the other things that
    change the generated code (d = 1/3/130/600, even tiles, tf32/tf32x3, one scale, other tiles)."""
    out = []
    KIND_NAMES = {M.KIND_IMQ: "imq", M.KIND_RBF: "rbf", M.KIND_POLY: "poly"}

    def cfg(kern, dtype, block, warps):
        if block is None:
            block, warps = M.PRIMARY["fp64" if dtype == "fp64" else kern]
        return block, warps

    def fwd(dtype, kind, sym, unb, d=64, block=None, warps=None, even=False, prec="ieee", scales=None):
        block, warps = cfg("fwd", dtype, block, warps)
        scales = scales or (7 if kind == M.KIND_IMQ else 3)
        cts, ct = _sig_and_tl_dtype(dtype)
        dp = M.padded_dim(d)
        sig = {"A": _PTR[dtype], "B": _PTR[dtype], "OFF": "*" + cts, "P": "*" + cts, "PART": "*fp64",
               "NA": "i32", "NB": "i32", "D": "i32", "SIZE_BUCKET": "i32"}
        cx = dict(SYM=sym, UNBIASED=unb, KIND=kind, NUM_SCALES=scales, PRECISION=prec, CT=ct,
                  BLOCK=block, DP=dp, EVEN_A=even, EVEN_B=even, EVEN_D=(d == dp),
                  BK=M.chunk_dim(d), EVEN_K=(d % M.chunk_dim(d) == 0))
        name = (f"mmd_fwd {KIND_NAMES[kind]} {dtype} {'sym' if sym else 'xy'}"
                f"{' unbiased' if (sym and unb) else (' biased' if sym else '')} d={d} B={block} w={warps}"
                f"{' even' if even else ''}{'' if prec == 'ieee' else ' ' + prec} S={scales}")
        out.append((name, M._mmd_fwd_kernel, sig, cx, warps, 2))

    def bwd(dtype, kind, d=64, block=None, warps=None, even=False, prec="ieee", scales=None, unb=True):
        block, warps = cfg("bwd", dtype, block, warps)
        scales = scales or (7 if kind == M.KIND_IMQ else 3)
        cts, ct = _sig_and_tl_dtype(dtype)
        dp = M.padded_dim(d)
        sig = {"A": _PTR[dtype], "B": _PTR[dtype], "OFF": "*" + cts, "OFFX": "*" + cts, "P": "*" + cts,
               "COEF": "*" + cts,
               "G": _PTR[dtype], "NA": "i32", "NB": "i32", "D": "i32", "SIZE_BUCKET": "i32"}
        dp = M.grad_chunk(d)
        cx = dict(KIND=kind, NUM_SCALES=scales, UNBIASED=unb, PRECISION=prec, CT=ct, BLOCK=block, DC=dp,
                  EVEN_A=even, EVEN_B=even, EVEN_D=(d % dp == 0), BK=M.chunk_dim(d),
                  EVEN_K=(d % M.chunk_dim(d) == 0))
        name = (f"mmd_bwd {KIND_NAMES[kind]} {dtype}{'' if unb else ' biased'} d={d} B={block} w={warps}"
                f"{' even' if even else ''}{'' if prec == 'ieee' else ' ' + prec} S={scales}")
        out.append((name, M._mmd_bwd_kernel, sig, cx, warps, 2))

    if which in ("core", "all"):
        for dtype in ("fp32", "fp16", "bf16", "fp64"):
            for kind in (M.KIND_IMQ, M.KIND_RBF):
                for sym, unb in ((True, True), (True, False), (False, True)):
                    fwd(dtype, kind, sym, unb)
                bwd(dtype, kind)
        for dtype in ("fp32", "fp64"):  # the polynomial (KID): its own epilogue and diagonal rule
            for sym, unb in ((True, True), (True, False), (False, True)):
                fwd(dtype, M.KIND_POLY, sym, unb)
            bwd(dtype, M.KIND_POLY, unb=True)
            bwd(dtype, M.KIND_POLY, unb=False)
    if which in ("extra", "all"):
        fwd("fp32", 0, True, True, even=True)
        fwd("fp32", 0, False, True, even=True)
        bwd("fp32", 0, even=True)
        fwd("fp32", 0, False, True, block=128, warps=8)
        fwd("fp32", 0, False, True, block=64, warps=4)
        bwd("fp32", 0, block=32, warps=4)
        for d in (1, 3, 130):
            fwd("fp32", 0, True, True, d=d)
            bwd("fp32", 0, d=d)
        fwd("fp32", 0, False, True, d=600)
        bwd("fp32", 0, d=600)
        bwd("fp16", 1, d=130)
        fwd("fp32", 0, True, True, scales=1)
        for prec in ("tf32", "tf32x3"):
            fwd("fp32", 0, True, True, prec=prec)
            fwd("fp32", 0, False, True, prec=prec)
            bwd("fp32", 0, prec=prec)
        fwd("bf16", 0, False, True, prec="tf32")
    return out


def reparam_variants(which: str = "core"):
    out = []
    if which not in ("core", "all"):
        return out
    for dtype in ("fp32", "fp16", "bf16", "fp64"):
        cts, ct = _sig_and_tl_dtype(dtype)
        sig = {"MU": _PTR[dtype], "LV": _PTR[dtype], "Z": _PTR[dtype], "n": "i32", "seed": "i32"}
        out.append((f"reparam_fwd {dtype}", R._reparam_fwd_kernel, sig, dict(CT=ct, BLOCK=1024), 4, 1))
        sig = {"GZ": _PTR[dtype], "LV": _PTR[dtype], "GLV": _PTR[dtype], "n": "i32", "seed": "i32"}
        out.append((f"reparam_bwd {dtype}", R._reparam_bwd_kernel, sig, dict(CT=ct, BLOCK=1024), 4, 1))
    return out


def kmm_variants(which: str = "core"):
    """The kernel_matmul kernels (:mod:`wae_fast.kernels.kmm`), fp32 and fp64, every kernel kind,
    d = 64 (ragged tiles), P = 1 and 64, in the format of :func:`mmd_variants`."""
    out = []
    if which not in ("core", "all"):
        return out
    names = {M.KIND_IMQ: "imq", M.KIND_RBF: "rbf", M.KIND_POLY: "poly"}
    for dtype in ("fp32", "fp64"):
        cts, ct = _sig_and_tl_dtype(dtype)
        block, warps = KM.tile_config(dtype == "fp64")
        for kind in (M.KIND_IMQ, M.KIND_RBF, M.KIND_POLY):
            scales = {M.KIND_IMQ: 7, M.KIND_RBF: 3, M.KIND_POLY: 3}[kind]
            for pv in (1, 64):
                pb = KM.p_chunk(pv)
                base = dict(KIND=kind, NUM_SCALES=scales, PRECISION="ieee", CT=ct, BLOCK=block,
                            BK=M.chunk_dim(64), PB=pb, EVEN_A=False, EVEN_B=False, EVEN_K=True)
                sig = {"A": _PTR[dtype], "B": _PTR[dtype], "V": _PTR[dtype], "OFF": "*" + cts,
                       "P": "*" + cts, "OUT": _PTR[dtype], "NA": "i32", "NB": "i32", "D": "i32", "PV": "i32"}
                out.append((f"kmm_fwd {names[kind]} {dtype} P={pv}", KM._kmm_fwd_kernel, sig, base, warps, 1))
                sig = {"A": _PTR[dtype], "B": _PTR[dtype], "U": _PTR[dtype], "V": _PTR[dtype],
                       "OFF": "*" + cts, "P": "*" + cts, "G": _PTR[dtype], "NA": "i32", "NB": "i32",
                       "D": "i32", "PV": "i32"}
                out.append((f"kmm_bwd {names[kind]} {dtype} P={pv}", KM._kmm_bwd_kernel, sig,
                            dict(base, DP=M.grad_chunk(64), EVEN_D=True), warps, 1))
    return out


def prior_variants(which: str = "core"):
    """(name, kernel, runtime signature, constexprs, num_warps, num_stages) of the in-kernel
    prior kernels (:mod:`wae_fast.kernels.prior`), in the format of :func:`mmd_variants`, with the primary tile configs
    (:data:`wae_fast.kernels.mmd.PRIMARY`), ragged tiles.  ``core``: fp32 IMQ/RBF at d = 64,
    fp32 IMQ at d = 3, the fp32 sampler; ``all`` adds biased yy, bf16 codes, fp64 IMQ/RBF,
    d = 17 / 130, the 8-warp yy forward (pruned at run time) and the fp64 sampler."""
    ptr = _PTR
    out = []
    cts = _sig_and_tl_dtype

    def fwd(dtype, kind, sym, unb, d=64, warps=None):
        block, w = M.PRIMARY["fp64"] if dtype == "fp64" else (P.PRIMARY_YY if sym else M.PRIMARY["fwd"])
        warps = warps or w
        c, ct = cts(dtype)
        scales = 7 if kind == M.KIND_IMQ else 3
        dp = M.padded_dim(d)
        sig = {"A": ptr[dtype], "B": ptr[dtype], "OFF": "*" + c, "P": "*" + c, "SIG": "*" + c,
               "PART": "*fp64", "NA": "i32", "NB": "i32", "D": "i32", "SIZE_BUCKET": "i32",
               "seed": "i64"}
        cx = dict(SYM=sym, UNBIASED=unb, KIND=kind, NUM_SCALES=scales, PRECISION="ieee", CT=ct,
                  GEN_A=sym, GEN_B=True, BLOCK=block, DP=dp, EVEN_A=False, EVEN_B=False,
                  EVEN_D=(d == dp), BK=M.chunk_dim(d), EVEN_K=(d % M.chunk_dim(d) == 0))
        name = (f"prior_fwd {'imq' if kind == 0 else 'rbf'} {dtype} {'yy' if sym else 'xy'}"
                f"{(' unbiased' if unb else ' biased') if sym else ''} d={d} B={block} w={warps}")
        out.append((name, P._prior_fwd_kernel, sig, cx, warps, 2))

    def bwd(dtype, kind, d=64):
        block, warps = M.PRIMARY["fp64" if dtype == "fp64" else "bwd"]
        c, ct = cts(dtype)
        scales = 7 if kind == M.KIND_IMQ else 3
        dc = M.grad_chunk(d)
        sig = {"A": ptr[dtype], "OFF": "*" + c, "OFFX": "*" + c, "P": "*" + c, "SIG": "*" + c, "COEF": "*" + c,
               "G": ptr[dtype], "NA": "i32", "NB": "i32", "D": "i32", "SIZE_BUCKET": "i32",
               "seed": "i64"}
        cx = dict(KIND=kind, NUM_SCALES=scales, PRECISION="ieee", CT=ct, BLOCK=block, DC=dc,
                  EVEN_A=False, EVEN_B=False, EVEN_D=(d % dc == 0), BK=M.chunk_dim(d),
                  EVEN_K=(d % M.chunk_dim(d) == 0))
        name = f"prior_bwd {'imq' if kind == 0 else 'rbf'} {dtype} d={d} B={block} w={warps}"
        out.append((name, P._prior_bwd_kernel, sig, cx, warps, 2))

    def sample(dtype):
        c, ct = cts(dtype)
        out.append((f"prior_sample {dtype}", P._prior_sample_kernel,
                    {"Y": ptr[dtype], "SIG": "*" + c, "n": "i64", "D": "i32", "seed": "i64"},
                    dict(CT=ct, BLOCK=P.SAMPLE_BLOCK), 4, 1))

    for dtype, kind, d in (("fp32", 0, 64), ("fp32", 1, 64), ("fp32", 0, 3)):
        fwd(dtype, kind, True, True, d=d)
        fwd(dtype, kind, False, False, d=d)
        bwd(dtype, kind, d=d)
    sample("fp32")
    if which == "all":
        fwd("fp64", 0, True, True)
        fwd("fp64", 0, False, False)
        bwd("fp64", 0)
        for kind in (0, 1):
            fwd("fp32", kind, True, False)
            fwd("fp32", kind, True, True, warps=8)   # the spilling config, pruned at run time
            fwd("bf16", kind, False, False)
            bwd("bf16", kind)
        fwd("fp64", 1, True, True)
        fwd("fp64", 1, False, False)
        bwd("fp64", 1)
        for d in (17, 130):
            fwd("fp32", 0, True, True, d=d)
            fwd("fp32", 0, False, False, d=d)
            bwd("fp32", 0, d=d)
        sample("fp64")
    return out


def _attrs(fn, sig, backend):
    """Mark pointer arguments 16-byte aligned, as the launcher specialises them at run time."""
    try:
        return {(fn.arg_names.index(k),): backend.parse_attr("D") for k, v in sig.items() if v.startswith("*")}
    except Exception:  # older API
        return None


def _source(fn, sig, cx, backend):
    full = {}
    for name in fn.arg_names:
        full[name] = sig[name] if name in sig else "constexpr"
    try:
        return ASTSource(fn, full, constexprs=dict(cx), attrs=_attrs(fn, sig, backend))
    except TypeError:
        # Triton <= 3.1: constexprs keyed by index and absent from the signature.
        sig_idx = {fn.arg_names.index(k): v for k, v in sig.items()}
        cst = {fn.arg_names.index(k): v for k, v in cx.items()}
        return ASTSource(fn, sig_idx, cst)


def _ptxas():
    here = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return os.environ.get("TRITON_PTXAS_PATH", here)


def _usage(ptx: str):
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v``."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([_ptxas(), "-v", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    txt = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", txt)
    st = re.search(r"(\d+) bytes spill stores", txt)
    ld = re.search(r"(\d+) bytes spill loads", txt)
    return (int(regs.group(1)) if regs else -1, int(st.group(1)) if st else -1, int(ld.group(1)) if ld else -1)


def segment_variants(which: str = "core"):
    """The mmd_segments kernels (:mod:`wae_fast.kernels.segments`) at d = 64: "all" every kernel
    kind in fp32 and fp64, the one-launch forward (weighted, shared y), its finalize and the
    one-launch backward; "core" (what CI compiles, ~15 s) the IMQ fp32 forward and backward, the
    polynomial fp32 backward and the finalize."""
    out = []
    if which not in ("core", "all"):
        return out
    core = {"seg_fwd imq fp32", "seg_bwd imq fp32", "seg_bwd poly fp32", "seg_finalize fp32",
            "seg_finalize shared_y fp32"}
    names = {M.KIND_IMQ: "imq", M.KIND_RBF: "rbf", M.KIND_POLY: "poly"}
    for dtype in ("fp32", "fp64"):
        cts, ct = _sig_and_tl_dtype(dtype)
        pts = {n: "*" + cts for n in ("X", "Y", "XW", "YW", "SH", "P")}
        idx = {"XO": "*i64", "YO": "*i64", "TASKS": "*i64"}
        fwd_sig = {**pts, **idx, "PART": "*fp64", "D": "i32"}
        bwd_sig = {**pts, **idx, "GT": "*fp64", "TT": "*fp64", "GX": "*" + cts, "GY": "*" + cts,
                   "GXW": "*fp64", "GYW": "*fp64", "D": "i32"}
        flags = dict(UNBIASED=True, HAS_XW=True, HAS_YW=True, SHARED_Y=False)
        fin_sig = {"XW": "*" + cts, "YW": "*" + cts, **idx, "SET_TASKS": "*i64",
                   "PART": "*fp64", "OUT": "*fp64"}
        for shared, name in ((False, f"seg_finalize {dtype}"),
                             (True, f"seg_finalize shared_y {dtype}")):
            if which == "all" or name in core:  # shared_y: every set's yy from set 0's partials
                out.append((name, SG._seg_finalize_kernel, fin_sig,
                            dict(flags, SHARED_Y=shared, BLOCK=32), 1, 1))
        for kind in (M.KIND_IMQ, M.KIND_RBF, M.KIND_POLY):
            scales = {M.KIND_IMQ: 7, M.KIND_RBF: 3, M.KIND_POLY: 3}[kind]
            base = dict(KIND=kind, NUM_SCALES=scales, PRECISION="ieee", CT=ct, BLOCK=32,
                        DP=M.padded_dim(64), **flags)
            name = f"seg_fwd {names[kind]} {dtype}"
            if which == "all" or name in core:
                out.append((name, SG._seg_fwd_kernel, fwd_sig, dict(base, SHARED_Y=True), 4, 1))
            name = f"seg_bwd {names[kind]} {dtype}"
            if which == "all" or name in core:
                out.append((name, SG._seg_bwd_kernel, bwd_sig,
                            dict(base, NEED_P=True, NEED_GX=True, NEED_GY=True, NEED_GXW=True,
                                 NEED_GYW=True), 4, 1))
    return out


def small_variants(which: str = "core"):
    """The one-launch small-set kernel (:mod:`wae_fast.kernels.mmd_small`) with the fixed configs
    of :func:`~wae_fast.kernels.mmd_small.small_config`: "core" IMQ fp32 and fp64 at d = 8,
    N = 100 (the WAE MNIST row, BLOCK 16) and RBF fp32 at d = 64, N = 1024 (BLOCK 32); "all"
    every kind x dtype x estimator at both sizes."""
    out = []
    if which not in ("core", "all"):
        return out
    names = {M.KIND_IMQ: "imq", M.KIND_RBF: "rbf", M.KIND_POLY: "poly"}
    core = {"small imq fp32 unbiased d=8 n=100", "small imq fp64 unbiased d=8 n=100",
            "small rbf fp32 biased d=64 n=1024"}
    import torch
    for dtype in ("fp32", "fp64"):
        cts, ct = _sig_and_tl_dtype(dtype)
        sig = {"X": _PTR[dtype], "Y": _PTR[dtype], "P": "*" + cts, "S": "*" + cts, "PART": "*fp64",
               "GX": "*" + cts, "GY": "*" + cts, "N": "i32", "M": "i32", "D": "i32",
               "CXX": "fp32", "CYY": "fp32", "CXY": "fp32", "WGT": "fp32"}
        for kind in (M.KIND_IMQ, M.KIND_RBF, M.KIND_POLY):
            scales = {M.KIND_IMQ: 7, M.KIND_RBF: 3, M.KIND_POLY: 3}[kind]
            for unb in (True, False):
                for d, n in ((8, 100), (64, 1024)):
                    block, warps = SM.small_config(n, n, torch.float64 if dtype == "fp64" else torch.float32)
                    cx = dict(UNBIASED=unb, KIND=kind, NUM_SCALES=scales, PRECISION="ieee", CT=ct,
                              GRAD_X=True, GRAD_Y=True, BLOCK=block, BK=M.chunk_dim(d),
                              DG=M.padded_dim(d), RB=SM.MEDIAN_TILE[0], CB=SM.MEDIAN_TILE[1], DC=SM.MEDIAN_TILE[2],
                              LERP_HI=True)
                    name = (f"small {names[kind]} {dtype} {'unbiased' if unb else 'biased'} "
                            f"d={d} n={n}")
                    if which == "all" or name in core:
                        out.append((name, SM._mmd_small_kernel, sig, cx, warps, 1))
    return out


def compile_all(arch: int = 90, which: str = "core", verbose: bool = True, only=None, variants=None):
    """Compile ``variants`` (default: the MMD and sampling kernels of set ``which``) for
    sm_``arch``; returns (rows, failures)."""
    target = GPUTarget("cuda", arch, 32)
    from triton.compiler.compiler import make_backend
    backend = make_backend(target)
    rows, failures = [], []
    if variants is None:
        variants = (mmd_variants(which) + reparam_variants(which) + kmm_variants(which)
                    + segment_variants(which) + small_variants(which))
    for name, kern, sig, cx, warps, stages in variants:
        if only and only not in name:
            continue
        fn = _jit_fn(kern)
        t0 = time.time()
        try:
            ck = triton.compile(_source(fn, sig, cx, backend), target=target,
                                options={"num_warps": warps, "num_stages": stages})
            regs, sst, sld = _usage(ck.asm["ptx"])
            shared = int(getattr(ck.metadata, "shared", -1))
            row = dict(name=name, regs=regs, spill_stores=sst, spill_loads=sld, shared=shared,
                       seconds=round(time.time() - t0, 2), ok=True)
        except Exception as exc:  # noqa: BLE001 - report every failure
            msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            row = dict(name=name, ok=False, error=msg, seconds=round(time.time() - t0, 2))
            failures.append(row)
        rows.append(row)
        if verbose:
            if row["ok"]:
                print(f"{name:<62} regs {row['regs']:>4}  spill st/ld {row['spill_stores']:>5}/{row['spill_loads']:<5}"
                      f" smem {row['shared']:>6}  {row['seconds']:5.2f}s", flush=True)
            else:
                print(f"{name:<62} FAILED {row['error']}", flush=True)
    return rows, failures


def compile_prior(which: str = "core", arch: int = 90, json_path=None) -> int:
    """Compile :func:`prior_variants` for sm_``arch`` and print registers / spills (TRITON_INTERPRET
    must be unset); write the rows as JSON to ``json_path``.  Returns the failure count.

        python -c "from wae_fast.kernels.aot import compile_prior; compile_prior('all')"
    """
    rows, failures = compile_all(arch, which, variants=prior_variants(which))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return len(failures)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--set", default="core", choices=("core", "extra", "all"),
                    help="core: every kernel x kind x dtype x estimator (default); extra: d, tiles, precisions")
    ap.add_argument("--only", default=None, help="compile only variants whose name contains this")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("--family", default="mmd", choices=("mmd", "prior", "all"),
                    help="mmd: the MMD and sampling kernels (default); prior: the in-kernel prior "
                         "kernels (--set core|all); all: both")
    args = ap.parse_args(argv)
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    t0 = time.time()
    variants = []
    if args.family in ("mmd", "all"):
        variants += (mmd_variants(args.set) + reparam_variants(args.set) + kmm_variants(args.set)
                     + segment_variants(args.set) + small_variants(args.set))
    if args.family in ("prior", "all"):
        variants += prior_variants("all" if args.set == "all" else "core")
    rows, failures = compile_all(args.arch, args.set, only=args.only, variants=variants)
    print(f"{len(rows)} variants, {len(failures)} failed, {time.time() - t0:.1f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
