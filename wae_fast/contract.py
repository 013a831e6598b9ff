"""The backend contract: every op family, defined once, that every backend implements.

Public functions validate their arguments, ask :mod:`wae_fast.dispatch` for the backend, and
call the op of that backend through this module (:func:`mmd_terms`, :func:`mmd_value`,
:func:`prior_terms`, :func:`reparam`); the schemas, fake implementations (torch.compile) and
autograd of every op family live here (:data:`FAMILIES`), written once for every backend.
Eager mmd calls take a shorter road with the same numbers (the host cost dominates small sets):
:func:`mmd_value` applies one ``autograd.Function`` per backend that calls the forward op below
the Autograd keys, forms MMD^2 in its forward and scales the fused gradient parts in its
backward; :func:`mmd_segments` does the same for the ``mmd_segments`` family (``mmd_batched``,
``mmd_varlen``, ``mmd_terms_batched``, weighted ``mmd``); torch.compile traces the op and its
registered autograd.

MMD: every backend ``B`` (``reference``, ``cpp``, ``triton``, ``cuda``) provides two ops in the
``wae_fast`` namespace, with exactly these schemas (:data:`MMD_FWD_SCHEMA`, :data:`MMD_BWD_SCHEMA`)::

    wae_fast::mmd_fwd_B(Tensor x, Tensor y, Tensor offset, int kind, float[] params,
                        bool unbiased, bool grad_x, bool grad_y, str precision)
        -> (Tensor terms, Tensor gx_parts, Tensor gy_parts)
    wae_fast::mmd_bwd_B(Tensor grad_terms, Tensor x, Tensor y, Tensor offset, int kind,
                        float[] params, bool unbiased, bool grad_x, bool grad_y, str precision)
        -> (Tensor gx, Tensor gy)

Meaning:

* ``x`` (N, d), ``y`` (M, d): same device, same floating dtype (fp16/bf16/fp32/fp64), contiguous.
  ``offset`` in the compute dtype (fp64 for fp64 inputs, fp32 otherwise): the shifts subtracted
  from the points before distances (each term is translation invariant; a shift near the points
  avoids the cancellation in ||a||^2 + ||b||^2 - 2 a.b, which loses ~u (|a|^2 + |b|^2) of r).
  Either (3, d), one shift per term: row 0 for the xx term, row 1 for the yy term, row 2 for the
  xy term (both sets) and the cross part of the gradients; or (d,), one shift for all three.
  Or (0,), for a backend that declares ``computes_shifts`` and for the calls a backend declared
  ``one_launch`` (:func:`define_backend_ops`): the backend computes the (3, d) shifts of
  :func:`term_shifts` below itself (a one-launch call also returns the fused gradient parts).
  The glue passes (3, d) = the coordinate-wise medians of x and of y, and their size-weighted
  mean (N median(x) + M median(y)) / (N + M) (:func:`term_shifts`), so a set clustered far from
  the other keeps its own distances exact, and a few far points do not drag a shift away from
  the bulk of their set.
* ``kind``/``params``: the kernel lowered by :mod:`wae_fast.kernel_specs` (IMQ: the C_s; RBF: the
  gamma_s = 1/(2 bw^2)); the kernel is the unweighted sum over params.  Polynomial
  (``KIND_POLY``): params = [gamma, coef0, degree], k = (gamma a.b + coef0)^degree from the dot
  products of the shifted points; it is not translation invariant, so the glue passes zero
  offsets for it.
* ``unbiased``: U-statistic (i == j pairs excluded from the xx and yy sums, which are divided
  by N(N-1) and M(M-1)) or V-statistic (full means).
* ``terms``: float64 tensor of shape (3,) = (mean k(x,x'), mean k(y,y'), mean k(x,y)) under the
  estimator, so MMD^2 = terms[0] + terms[1] - 2 terms[2].
* ``gx_parts``: either shape (0,) or, when the backend fuses the gradient into the forward
  (Liger style) and ``grad_x`` is set, shape (2, N, d) in the compute dtype holding
  d terms[0]/dx and d terms[2]/dx.  ``gy_parts`` likewise: (2, M, d) = d terms[1]/dy, d terms[2]/dy.
* ``mmd_bwd_B`` is only called when the forward returned empty parts for an input that needs a
  gradient: it returns sum_t grad_terms[t] * d terms[t] / dx (and dy) in the input dtype, or a
  (0,) tensor where the flag is off.  ``grad_terms`` is a float64 (3,) tensor on the inputs' device.
* ``precision``: dot-product precision for fp32 ("ieee" exact, "tf32x3", "tf32"); backends
  that always compute exactly accept and ignore it.

Sampling ops (``z = mu + exp(logvar / 2) * eps``, eps from a counter-based RNG keyed by seed)::

    wae_fast::reparam_fwd_B(Tensor mu, Tensor logvar, int seed) -> Tensor z
    wae_fast::reparam_bwd_B(Tensor grad_z, Tensor logvar, int seed) -> Tensor grad_logvar

Backward regenerates eps from ``seed``; grad_mu = grad_z is done by the glue.

MMD to the prior N(0, sigma2 I_d) with the prior samples generated inside the kernels
(``mmd_to_prior(..., estimator="sampled")``), never stored::

    wae_fast::prior_fwd_B(Tensor x, int kind, float[] params, float sigma2, bool unbiased,
                          int num_samples, int seed, str precision) -> Tensor terms
    wae_fast::prior_bwd_B(Tensor grad_terms, Tensor x, int kind, float[] params, float sigma2,
                          bool unbiased, int num_samples, int seed, str precision) -> Tensor gx

* sample j (0 <= j < M = ``num_samples``) is y_j[k] = sqrt(sigma2) * randn(seed, j * d + k), with
  randn = Triton's ``tl.randn`` (Philox 4x32-10 keyed by the 64-bit seed, counter = the int64 flat
  index, Box-Muller on the first two outputs, in fp32; csrc/include/wae_fast/tile_math.h
  and :mod:`wae_fast.philox`, in torch, reproduce it), cast to the compute dtype before the
  multiplication by sqrt(sigma2) (computed in the compute dtype).  Every backend, the reference
  included, draws exactly these samples, so they agree to rounding (an ulp per draw).
* ``terms`` as for mmd_fwd (float64 (3,)); gradients flow to x only (the samples are not inputs);
  ``prior_bwd_B`` returns d/dx sum_t grad_terms[t] terms[t] in x's dtype, recomputing the tiles.
* shifts are internal (each term is translation invariant): xx (and the backward's self part) by
  the coordinate-wise median(x), yy by 0, xy and the backward's cross part by
  N / (N + M) * median(x) (the pooled centre's expectation); medians, as for mmd, so that one
  outlier code does not pull the shift off the other codes.

Kernel-matrix products ``out = K(x, y) @ v`` without forming K (``kernel_matmul``)::

    wae_fast::kernel_matmul_fwd_B(Tensor x, Tensor y, Tensor v, Tensor offset, int kind,
                                  float[] params, str precision) -> Tensor out
    wae_fast::kernel_matmul_bwd_B(Tensor grad_out, Tensor x, Tensor y, Tensor v, Tensor offset,
                                  int kind, float[] params, bool grad_x, bool grad_y,
                                  str precision) -> (Tensor gx, Tensor gy)

* ``x`` (N, d), ``y`` (M, d), ``v`` (M, P): one device, one floating dtype, contiguous; ``offset``
  (d,) (the glue passes median(y) for the translation-invariant kinds, zeros for the polynomial;
  a (3, d) offset is read as the mmd op's, its xy row shifting both sets).  ``out`` (N, P) in
  the input dtype, accumulated in the compute dtype.
* ``kernel_matmul_bwd_B`` returns the gradients to x and y of <grad_out, out> (or (0,) where the
  flag is off), in the input dtype: with U = grad_out and W_ij = w_ij (U_i . v_j), w the per-pair
  weight of the kernel (dk/dr for IMQ/RBF; -(gamma/2) dk/dt for the polynomial, tile_math.h
  poly_eval), gx_i = 2 (rowsum(W)_i x_i - (W y)_i) (polynomial: -2 (W y)_i), gy likewise over
  columns.  The gradient to v is K(y, x) @ grad_out: the forward op with x and y swapped.

Many (weighted) MMDs in one call (``mmd_batched``, ``mmd_varlen``, weights on ``mmd``)::

    wae_fast::mmd_segments_fwd_B(Tensor x, Tensor y, Tensor x_offsets, Tensor y_offsets,
                                 Tensor x_weights, Tensor y_weights, Tensor shifts, int kind,
                                 float[] params, bool unbiased, bool grad_x, bool grad_y,
                                 bool grad_xw, bool grad_yw, str precision,
                                 bool value_parts=False)
        -> (Tensor terms, Tensor gx_parts, Tensor gy_parts, Tensor gxw_parts, Tensor gyw_parts,
            Tensor value)
    wae_fast::mmd_segments_bwd_B(Tensor grad_terms, Tensor terms, <the forward's inputs>,
                                 bool grad_x, bool grad_y, bool grad_xw, bool grad_yw)
        -> (Tensor gx, Tensor gy, Tensor gxw, Tensor gyw)

* ``x`` (sum_b N_b, d), ``y`` (sum_b M_b, d) (one device and dtype, contiguous);
  ``x_offsets`` int64 (B + 1,) cumulative from 0 (cu_seqlens), on the inputs' device;
  ``y_offsets`` likewise, or (2,) = [0, M] when y is shared by every set (B = 1: the same thing);
  the glue has validated them (backends read them on the host; a GPU backend may copy them).
* ``x_weights`` (sum_b N_b,) / ``y_weights`` in the compute dtype, or (0,) for unit weights;
  ``shifts`` (B, d) in the compute dtype: set b's points are shifted by shifts[b] (the glue passes
  the mean of the set's y rows with non-zero weight, zeros for the polynomial:
  :func:`segment_shifts`); or (0,) for a backend that declares ``computes_shifts``, which then
  computes those means itself (one pass over y instead of several torch ops).  For a y shared by
  B > 1 sets a backend may compute the yy term once, with shifts[0] (exact for the translation-
  invariant kinds; the polynomial's shifts are zeros).
* ``terms`` float64 (B, 3): set b's weighted (mean k(x,x'), mean k(y,y'), mean k(x,y)), with
  reliability weights w (x), v (y): self terms sum_ij w_i w_j k_ij / (sum w)^2 (biased) or over
  i != j divided by sum_{i != j} w_i w_j (unbiased), cross term sum_ij w_i v_j k_ij / (sum w sum v).
  A row with weight 0 never contributes and its coordinates are not read; a negative or
  non-finite weight, or a zero denominator, makes that set's terms NaN.
* The parts: each (0,), or, from a backend that fuses the gradients into the forward
  (``segments_fuse_grad`` of :func:`define_backend_ops`) when its flag is set, the derivatives
  of the two terms the input enters, row i being in set b: ``gx_parts`` (2, sum_b N_b, d) in the
  compute dtype = d terms[b, 0]/dx_i and d terms[b, 2]/dx_i; ``gy_parts`` (2, sum_b M_b, d) =
  d terms[b, 1]/dy_i, d terms[b, 2]/dy_i; ``gxw_parts`` / ``gyw_parts`` (2, rows) float64, the
  same for the weights (with ``x_weights`` non-empty).  Never for a y shared by B > 1 sets (its
  cross-term gradient sums over the sets: ``gy_parts`` and ``gyw_parts`` stay (0,) and the
  backward op computes them).  Rows outside every packed set (weight 0) have zero x / y parts.
  With ``value_parts`` each returned part is one derivative instead (first dimension 1), that of
  MMD^2_b = terms[b] . (1, 1, -2): the first part minus twice the second (x: d t_xx/dx_i -
  2 d t_xy/dx_i).  The eager MMD^2 path asks for it when the backend fuses every asked part:
  its backward then scales one part per row by grad_b (half the parts' memory and stores).
* ``value``: with ``value_parts``, a fusing backend also returns MMD^2_b = terms[b] . (1, 1, -2)
  of every set, (B,), formed in float64 as (t_xx + t_yy) - 2 t_xy and rounded once to float64
  for fp64 points, float32 otherwise (:func:`segments_value_dtype`); else (0,).  The eager MMD^2
  path returns it as is: no product and cast ops after the kernel.  Differentiable like terms.
* ``mmd_segments_bwd_B`` returns the gradients of sum_b grad_terms[b] . terms[b] (grad_terms
  float64 (B, 3)) to x, y (input dtype) and the weights (their dtype), or (0,) where the flag is
  off; ``terms`` are the forward's.  Formulas: :mod:`wae_fast.segment_sums`.

The other estimators of ``mmd_to_prior`` ("closed_form", "linear") are not ops: PyTorch code in
:mod:`wae_fast.prior` that only the reference backend declares (``dispatch`` routes "auto" there
and refuses them, naming the limit, on the other backends).

Hostile input (every op, every backend, every dtype; ``tests/test_hostile.py`` checks each
backend of the shared fixtures):

* A non-finite coordinate makes ``terms`` NaN and every gradient row paired with that point NaN;
  ``reparam_fwd`` returns NaN where mu or logvar is not finite, ``reparam_bwd`` where logvar is not.
* Supported magnitude range (IMQ, RBF): every point, shifted by the shift of each term it is in
  (mmd: x by offset[0] and offset[2], y by offset[1] and offset[2]; prior: the shifts above;
  kernel_matmul: its offset), has |p - shift|^2 <= ``MAX_SQ_NORM`` of the compute dtype
  (:data:`wae_fast.kernel_specs.MAX_SQ_NORM`: 2^60 for fp32, 2^496 for fp64, i.e. |p - shift| <=
  2^30 ~ 1.07e9 or 2^248 ~ 4.5e74, on every backend; ``tile_math.h`` holds the same numbers).  A
  backend turns the squared norm of a row outside it (or NaN) into NaN, once per row and term,
  so its pairs in that term are NaN from the arithmetic itself (no host synchronisation); the
  distance clamp at 0 must keep NaN, and r = inf or huge must give k = 0 and dk/dr = 0 (never
  inf * 0).  Inside the range results are accurate (far pairs, and a set clustered far from the
  other, included: each term has its own shift).
* Polynomial: no shift; the range is that of its values: a power (gamma a.b + coef0)^degree that
  overflows the compute dtype is NaN (never inf) in every backend's pair math, and
  :func:`mmd_terms` and the op's backward turn an overflowed (inf) term or gradient into NaN.
* ``params`` arrive validated (finite, > 0, inside ``kernel_specs.PARAM_RANGE`` of the compute
  dtype); data-dependent checks (``check_finite=True``) are the public API's, never the ops'.
* New kernels and estimators follow the same rules: e.g. a polynomial kernel whose powers
  overflow, or a weighted set with an invalid weight, gives NaN, never a finite value.

Extension points (keep them this way):

* **A new op family** (e.g. batched/weighted MMD, kernel-matrix products): one
  :class:`OpFamily` in :data:`FAMILIES` below -- its two schemas and a ``define(backend)``
  function that registers the fakes and the autograd of ``<family>_fwd_<backend>`` (written once,
  for every backend) -- plus a caller here (like :func:`mmd_terms`), the family added to the
  capabilities of the backends that implement it in :mod:`wae_fast.dispatch`, and each of
  those backends' implementations (the reference's first: it is what the others are tested
  against).
* **A new backend** ``B``: one entry in :data:`wae_fast.dispatch.BACKEND_TABLE` (its module and
  its capabilities: op families, kernel kinds, maximum number of scales, dtypes, estimators,
  precisions, devices); its module calls :func:`define_backend_ops` once with its name (this
  defines every family's schemas, fakes and autograd) and registers the device implementations:
  from Python with ``define_backend_ops("B", dispatch_key="CUDA", mmd_fwd=fn, ...)`` or from C++
  with ``TORCH_LIBRARY_IMPL(wae_fast, CPU, m) { m.impl("mmd_fwd_B", &fn); }`` (the schemas are
  defined here, in Python, once), and exposes ``availability(device_type) -> reason or None``
  (cheap: never starts a compiler) and optionally ``prepare(device_type) -> reason or None``
  (one-time work such as a JIT build, run by dispatch on the first real call).  The shared tests
  (tests/conftest.py) then pick it up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .kernel_specs import KIND_POLY, TRANSLATION_INVARIANT

NAMESPACE = "wae_fast"

MMD_FWD_SCHEMA = (
    "(Tensor x, Tensor y, Tensor offset, int kind, float[] params, bool unbiased, "
    "bool grad_x, bool grad_y, str precision) -> (Tensor, Tensor, Tensor)"
)
MMD_BWD_SCHEMA = (
    "(Tensor grad_terms, Tensor x, Tensor y, Tensor offset, int kind, float[] params, "
    "bool unbiased, bool grad_x, bool grad_y, str precision) -> (Tensor, Tensor)"
)
REPARAM_FWD_SCHEMA = "(Tensor mu, Tensor logvar, int seed) -> Tensor"
REPARAM_BWD_SCHEMA = "(Tensor grad_z, Tensor logvar, int seed) -> Tensor"
PRIOR_FWD_SCHEMA = (
    "(Tensor x, int kind, float[] params, float sigma2, bool unbiased, int num_samples, int seed, "
    "str precision) -> Tensor"
)
PRIOR_BWD_SCHEMA = (
    "(Tensor grad_terms, Tensor x, int kind, float[] params, float sigma2, bool unbiased, "
    "int num_samples, int seed, str precision) -> Tensor"
)

KMM_FWD_SCHEMA = "(Tensor x, Tensor y, Tensor v, Tensor offset, int kind, float[] params, str precision) -> Tensor"
KMM_BWD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor y, Tensor v, Tensor offset, int kind, float[] params, "
    "bool grad_x, bool grad_y, str precision) -> (Tensor, Tensor)"
)

SEG_FWD_SCHEMA = (
    "(Tensor x, Tensor y, Tensor x_offsets, Tensor y_offsets, Tensor x_weights, Tensor y_weights, "
    "Tensor shifts, int kind, float[] params, bool unbiased, bool grad_x, bool grad_y, "
    "bool grad_xw, bool grad_yw, str precision, bool value_parts=False) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
SEG_BWD_SCHEMA = (
    "(Tensor grad_terms, Tensor terms, Tensor x, Tensor y, Tensor x_offsets, Tensor y_offsets, "
    "Tensor x_weights, Tensor y_weights, Tensor shifts, int kind, float[] params, bool unbiased, "
    "bool grad_x, bool grad_y, bool grad_xw, bool grad_yw, str precision) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)

PRECISIONS = ("ieee", "tf32x3", "tf32")

_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
_DEFINED: set[str] = set()

DOUBLE_BACKWARD_MSG = (
    "wae_fast: double backward (create_graph=True through mmd/reparameterize) is not "
    "supported; compute higher derivatives with backend='reference' on a dense formula instead"
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation/compute dtype: fp64 for fp64 inputs, fp32 for fp16/bf16/fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def op(name: str):
    """The OpOverloadPacket ``torch.ops.wae_fast.<name>``."""
    return getattr(getattr(torch.ops, NAMESPACE), name)


def _no_zero_grads(ctx) -> None:
    """The gradient parts are outputs no loss uses: autograd would hand their backward a zero
    tensor each (B = 256 sets of 64 points at d = 64: 8 MB of zeros filled, a quarter of the
    forward + backward on the CPU); None instead."""
    ctx.set_materialize_grads(False)


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _define_mmd(backend: str) -> None:
    fwd, bwd = f"mmd_fwd_{backend}", f"mmd_bwd_{backend}"
    _LIB.define(fwd + MMD_FWD_SCHEMA)
    _LIB.define(bwd + MMD_BWD_SCHEMA)
    qf, qb = f"{NAMESPACE}::{fwd}", f"{NAMESPACE}::{bwd}"

    @torch.library.register_fake(qf)
    def _fwd_fake(x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
        # A fake cannot know whether the backend fuses its gradient; the contract lets the
        # shapes differ, so the fake reports the fused shapes only for backends that say so.
        ct = compute_dtype(x.dtype)
        terms = x.new_empty((3,), dtype=torch.float64)
        if _FUSES.get(backend, False) or offset.numel() == 0:  # empty offset: one-launch path
            gx = x.new_empty((2, x.shape[0], x.shape[1]), dtype=ct) if grad_x else x.new_empty((0,), dtype=ct)
            gy = y.new_empty((2, y.shape[0], y.shape[1]), dtype=ct) if grad_y else y.new_empty((0,), dtype=ct)
        else:
            gx, gy = x.new_empty((0,), dtype=ct), y.new_empty((0,), dtype=ct)
        return terms, gx, gy

    @torch.library.register_fake(qb)
    def _bwd_fake(grad_terms, x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
        gx = torch.empty_like(x) if grad_x else x.new_empty((0,))
        gy = torch.empty_like(y) if grad_y else y.new_empty((0,))
        return gx, gy

    def setup_context(ctx, inputs, output):
        x, y, offset, kind, params, unbiased, grad_x, grad_y, precision = inputs
        _, gx_parts, gy_parts = output
        ctx.args = (kind, params, unbiased, precision)
        ctx.xdtype, ctx.ydtype = x.dtype, y.dtype
        ctx.save_for_backward(x, y, offset, gx_parts, gy_parts)
        _no_zero_grads(ctx)

    def backward(ctx, grad_terms, _g_gx, _g_gy):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        x, y, offset, gx_parts, gy_parts = ctx.saved_tensors
        kind, params, unbiased, precision = ctx.args
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_terms is None:  # only the parts reached the loss: they carry no gradient
            return None, None, None, None, None, None, None, None, None
        grad_terms = grad_terms.to(torch.float64).contiguous()
        gx = gy = None
        fused_x = need_x and gx_parts.numel() > 0
        fused_y = need_y and gy_parts.numel() > 0
        # parts (2, n, d) times the two coefficients, summed: a broadcast multiply and a sum
        # (measured cheaper than one mv at N = 64, d = 8: few small ops per call)
        if fused_x:
            c = grad_terms.to(gx_parts.dtype)[0::2].view(2, 1, 1)  # terms 0 (xx) and 2 (xy)
            gx = (gx_parts * c).sum(0).to(ctx.xdtype)
        if fused_y:
            c = grad_terms.to(gy_parts.dtype)[1:].view(2, 1, 1)  # terms 1 (yy) and 2 (xy)
            gy = (gy_parts * c).sum(0).to(ctx.ydtype)
        rx, ry = need_x and not fused_x, need_y and not fused_y
        if rx or ry:
            bx, by = op(bwd)(grad_terms, x, y, offset, kind, params, unbiased, rx, ry, precision)
            if rx:
                gx = bx
            if ry:
                gy = by
        if kind == KIND_POLY:  # an overflowed power or row sum reads NaN, not inf
            gx = inf_to_nan(gx) if gx is not None else None
            gy = inf_to_nan(gy) if gy is not None else None
        return gx, gy, None, None, None, None, None, None, None

    torch.library.register_autograd(qf, backward, setup_context=setup_context)
    fwd_overload = op(fwd).default

    class EagerMMD(torch.autograd.Function):
        """The same forward, setup and backward as the op's registered autograd, applied
        directly: an eager call skips torch.library's per-call Python autograd wrapper (schema
        default filling, a second Function) -- the host cost that dominates small sets.
        torch.compile traces the op itself (see :func:`mmd_terms`)."""

        @staticmethod
        def forward(ctx, *inputs):
            # Below the Autograd keys: straight to the backend kernel, not through the op's
            # registered Python autograd kernel (a no-grad redispatch costing ~10 us a call).
            with torch._C._AutoDispatchBelowAutograd():
                out = fwd_overload(*inputs)
            setup_context(ctx, inputs, out)
            ctx.mark_non_differentiable(out[1], out[2])
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    _EAGER_MMD[backend] = EagerMMD

    class EagerMMDValue(torch.autograd.Function):
        """MMD^2 = terms . (1, 1, -2) as one autograd node (eager calls of ``wae_fast.mmd``):
        the same op call, the value formed inside the forward, the fused parts scaled by
        grad * (1, -2) in backward -- the same numbers as the terms path (the weights are
        exact), without its dot and cast nodes.  inputs: the op's, then the output dtype."""

        @staticmethod
        def forward(ctx, x, y, offset, meta):
            # meta: the op's other arguments and the output dtype, one tuple (Function.apply
            # walks every argument: fewer arguments, less per-call work)
            kind, params, unbiased, grad_x, grad_y, precision, out_dtype = meta
            with torch._C._AutoDispatchBelowAutograd():
                terms, gx_parts, gy_parts = fwd_overload(x, y, offset, kind, params, unbiased, grad_x,
                                                         grad_y, precision)
            ctx.args = (kind, params, unbiased, precision)
            ctx.xdtype, ctx.ydtype = x.dtype, y.dtype
            ctx.save_for_backward(x, y, offset, gx_parts, gy_parts)
            return torch.dot(terms, mmd_weights(terms.device)).to(out_dtype)

        @staticmethod
        def backward(ctx, grad):
            if torch.is_grad_enabled():
                raise RuntimeError(DOUBLE_BACKWARD_MSG)
            x, y, offset, gx_parts, gy_parts = ctx.saved_tensors
            need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            gx = gy = None
            fused_x = need_x and gx_parts.numel() > 0
            fused_y = need_y and gy_parts.numel() > 0
            if fused_x:  # d/dx (t0 - 2 t2): parts (2, n, d) times grad * (1, -2), summed
                gx = (gx_parts * (grad.to(gx_parts.dtype) * _part_weights(gx_parts))).sum(0).to(ctx.xdtype)
            if fused_y:  # d/dy (t1 - 2 t2)
                gy = (gy_parts * (grad.to(gy_parts.dtype) * _part_weights(gy_parts))).sum(0).to(ctx.ydtype)
            rx, ry = need_x and not fused_x, need_y and not fused_y
            if rx or ry:
                kind, params, unbiased, precision = ctx.args
                grad_terms = grad.to(torch.float64) * mmd_weights(grad.device)
                bx, by = op(bwd)(grad_terms, x, y, offset, kind, params, unbiased, rx, ry, precision)
                gx = bx if rx else gx
                gy = by if ry else gy
            return gx, gy, None, None

    _EAGER_MMD_VALUE[backend] = EagerMMDValue


def _define_reparam(backend: str) -> None:
    fwd, bwd = f"reparam_fwd_{backend}", f"reparam_bwd_{backend}"
    _LIB.define(fwd + REPARAM_FWD_SCHEMA)
    _LIB.define(bwd + REPARAM_BWD_SCHEMA)

    @torch.library.register_fake(f"{NAMESPACE}::{fwd}")
    def _fwd_fake(mu, logvar, seed):
        return torch.empty_like(mu)

    @torch.library.register_fake(f"{NAMESPACE}::{bwd}")
    def _bwd_fake(grad_z, logvar, seed):
        return torch.empty_like(logvar)

    def setup_context(ctx, inputs, output):
        mu, logvar, seed = inputs
        ctx.seed = seed
        ctx.save_for_backward(logvar)

    def backward(ctx, grad_z):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        (logvar,) = ctx.saved_tensors
        gmu = grad_z if ctx.needs_input_grad[0] else None
        glv = None
        if ctx.needs_input_grad[1]:
            glv = op(bwd)(grad_z.contiguous(), logvar, ctx.seed)
        return gmu, glv, None

    torch.library.register_autograd(f"{NAMESPACE}::{fwd}", backward, setup_context=setup_context)


def _define_prior(backend: str) -> None:
    fwd, bwd = f"prior_fwd_{backend}", f"prior_bwd_{backend}"
    _LIB.define(fwd + PRIOR_FWD_SCHEMA)
    _LIB.define(bwd + PRIOR_BWD_SCHEMA)

    @torch.library.register_fake(f"{NAMESPACE}::{fwd}")
    def _fwd_fake(x, kind, params, sigma2, unbiased, num_samples, seed, precision):
        return x.new_empty((3,), dtype=torch.float64)

    @torch.library.register_fake(f"{NAMESPACE}::{bwd}")
    def _bwd_fake(grad_terms, x, kind, params, sigma2, unbiased, num_samples, seed, precision):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        x = inputs[0]
        ctx.args = inputs[1:]
        ctx.save_for_backward(x)

    def backward(ctx, grad_terms):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        (x,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            gx = op(bwd)(grad_terms.to(torch.float64).contiguous(), x, *ctx.args)
        return (gx,) + (None,) * 7

    torch.library.register_autograd(f"{NAMESPACE}::{fwd}", backward, setup_context=setup_context)


def _define_kmm(backend: str) -> None:
    fwd, bwd = f"kernel_matmul_fwd_{backend}", f"kernel_matmul_bwd_{backend}"
    _LIB.define(fwd + KMM_FWD_SCHEMA)
    _LIB.define(bwd + KMM_BWD_SCHEMA)

    @torch.library.register_fake(f"{NAMESPACE}::{fwd}")
    def _fwd_fake(x, y, v, offset, kind, params, precision):
        return x.new_empty((x.shape[0], v.shape[1]))

    @torch.library.register_fake(f"{NAMESPACE}::{bwd}")
    def _bwd_fake(grad_out, x, y, v, offset, kind, params, grad_x, grad_y, precision):
        gx = torch.empty_like(x) if grad_x else x.new_empty((0,))
        gy = torch.empty_like(y) if grad_y else y.new_empty((0,))
        return gx, gy

    def setup_context(ctx, inputs, output):
        x, y, v, offset, kind, params, precision = inputs
        ctx.args = (kind, params, precision)
        ctx.save_for_backward(x, y, v, offset)

    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        x, y, v, offset = ctx.saved_tensors
        kind, params, precision = ctx.args
        need_x, need_y, need_v = ctx.needs_input_grad[:3]
        g = grad_out.contiguous()
        gx = gy = gv = None
        if need_v:  # K(x, y)^T g = K(y, x) g (k is symmetric)
            gv = op(fwd)(y, x, g, offset, kind, params, precision)
        if need_x or need_y:
            bx, by = op(bwd)(g, x, y, v, offset, kind, params, need_x, need_y, precision)
            gx = bx if need_x else None
            gy = by if need_y else None
        return gx, gy, gv, None, None, None, None

    torch.library.register_autograd(f"{NAMESPACE}::{fwd}", backward, setup_context=setup_context)


def segments_fused_flags(backend: str, x_offsets, y_offsets, x_weights, y_weights, grad_x,
                         grad_y, grad_xw, grad_yw) -> tuple[bool, bool, bool, bool]:
    """Which of the four parts backend ``backend``'s ``mmd_segments_fwd`` returns for these
    flags (shapes only: the fake implementation uses it too)."""
    if not _SEG_FUSES.get(backend, False):
        return False, False, False, False
    shared = y_offsets.shape[0] == 2 and x_offsets.shape[0] > 2  # a y shared by B > 1 sets
    return (bool(grad_x), bool(grad_y) and not shared, bool(grad_xw) and x_weights.numel() > 0,
            bool(grad_yw) and not shared and y_weights.numel() > 0)


def segments_unfused(terms: torch.Tensor, x: torch.Tensor) -> tuple:
    """The forward outputs of a backend that does not fuse the gradients: the terms, four
    empty parts and an empty value (distinct tensors: an op's outputs may not alias)."""
    ct = compute_dtype(x.dtype)
    return (terms, x.new_empty((0,), dtype=ct), x.new_empty((0,), dtype=ct),
            x.new_empty((0,), dtype=torch.float64), x.new_empty((0,), dtype=torch.float64),
            x.new_empty((0,), dtype=segments_value_dtype(x.dtype)))


def segments_value_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of ``mmd_segments_fwd``'s value output (and of MMD^2): float64 for fp64
    points, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_of_sets(g: torch.Tensor, offsets: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, ...): row i gets g[b] of the set b holding it (offsets cumulative from 0 to rows)."""
    return g.repeat_interleave(offsets.diff(), dim=0, output_size=rows)


def _define_segments(backend: str) -> None:
    fwd, bwd = f"mmd_segments_fwd_{backend}", f"mmd_segments_bwd_{backend}"
    _LIB.define(fwd + SEG_FWD_SCHEMA)
    _LIB.define(bwd + SEG_BWD_SCHEMA)

    @torch.library.register_fake(f"{NAMESPACE}::{fwd}")
    def _fwd_fake(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased,
                  grad_x, grad_y, grad_xw, grad_yw, precision, value_parts=False):
        fx, fy, fxw, fyw = segments_fused_flags(backend, x_offsets, y_offsets, x_weights,
                                                y_weights, grad_x, grad_y, grad_xw, grad_yw)
        ct = compute_dtype(x.dtype)
        f64 = torch.float64
        n = 1 if value_parts else 2
        nsets = x_offsets.shape[0] - 1
        return (x.new_empty((nsets, 3), dtype=f64),
                x.new_empty((n, x.shape[0], x.shape[1]) if fx else (0,), dtype=ct),
                y.new_empty((n, y.shape[0], y.shape[1]) if fy else (0,), dtype=ct),
                x.new_empty((n, x.shape[0]) if fxw else (0,), dtype=f64),
                y.new_empty((n, y.shape[0]) if fyw else (0,), dtype=f64),
                x.new_empty((nsets,) if value_parts and _SEG_FUSES.get(backend, False) else (0,),
                            dtype=segments_value_dtype(x.dtype)))

    @torch.library.register_fake(f"{NAMESPACE}::{bwd}")
    def _bwd_fake(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
                  params, unbiased, grad_x, grad_y, grad_xw, grad_yw, precision):
        return tuple(torch.empty_like(t) if flag else t.new_empty((0,))
                     for t, flag in ((x, grad_x), (y, grad_y), (x_weights, grad_xw),
                                     (y_weights, grad_yw)))

    def setup_context(ctx, inputs, output):
        (x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased, _gx,
         _gy, _gxw, _gyw, precision) = inputs[:15]
        # value parts (one per input) are MMD^2's, not the terms': the backward op serves them
        ctx.value_parts = len(inputs) > 15 and bool(inputs[15])
        ctx.args = (kind, params, unbiased)
        ctx.precision = precision
        ctx.dtypes = (x.dtype, y.dtype, x_weights.dtype, y_weights.dtype)
        ctx.save_for_backward(*output[:5], x, y, x_offsets, y_offsets, x_weights, y_weights, shifts)
        _no_zero_grads(ctx)

    def grads(ctx, grad_terms: torch.Tensor, need) -> list:
        """Gradients (x, y, x_weights, y_weights) of sum_b grad_terms[b] . terms[b]; ``need``:
        which of the four are asked for."""
        terms, *parts = ctx.saved_tensors[:5]
        x, y, x_offsets, y_offsets, x_weights, y_weights, shifts = ctx.saved_tensors[5:]
        flags = (need[0], need[1], need[2] and x_weights.numel() > 0,
                 need[3] and y_weights.numel() > 0)
        grad_terms = grad_terms.to(torch.float64).contiguous()
        # equal sets (the eager batched path knows their size): each set's coefficients
        # broadcast over a (B, n, ...) view of the parts, no per-row copy of them
        uniform = getattr(ctx, "uniform", (0, 0))
        out: list[Optional[torch.Tensor]] = [None, None, None, None]
        # fused parts (x, y, x_weights, y_weights): each row's two derivatives times the two
        # coefficients of its set (in the parts' dtype, as mmd's backward), O(rows d) with one
        # allocation of the size of the gradient (fresh pages cost more than the arithmetic)
        for k, (flag, p) in enumerate(zip(flags, parts)):
            if not flag or p.numel() == 0 or getattr(ctx, "value_parts", False):
                continue
            side = k % 2  # 0: x rows (terms 0 and 2), 1: y rows (terms 1 and 2)
            g = grad_terms.to(p.dtype)
            n = uniform[side]
            if n:
                nsets = g.shape[0]
                view = (nsets, n) + tuple(p.shape[2:])
                coef = (nsets, 1) + (1,) * (p.dim() - 2)
                out[k] = torch.mul(p[0].reshape(view), g[:, 1 if side else 0].view(coef)).addcmul_(
                    p[1].reshape(view), g[:, 2].view(coef)).view(p.shape[1:]).to(ctx.dtypes[k])
                continue
            c = _rows_of_sets(g, y_offsets if side else x_offsets, (y if side else x).shape[0])
            c0, c1 = c[:, 1 if side else 0], c[:, 2]
            if k < 2:
                c0, c1 = c0.unsqueeze(1), c1.unsqueeze(1)
            out[k] = torch.mul(p[0], c0).addcmul_(p[1], c1).to(ctx.dtypes[k])
        rest = tuple(f and o is None for f, o in zip(flags, out))
        if any(rest):
            got = op(bwd)(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights,
                          shifts, *ctx.args, *rest, ctx.precision)
            out = [g if r else o for g, r, o in zip(got, rest, out)]
        return out

    def backward(ctx, grad_terms, *grad_rest):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        n_in = len(ctx.needs_input_grad)  # 15, or 16 with value_parts
        grad_value = grad_rest[4] if len(grad_rest) > 4 else None
        # the value output (when not (0,)): d value_b = d terms[b] . (1, 1, -2)
        if grad_value is not None and grad_value.numel() > 0:
            g = grad_value.to(torch.float64)
            gv = torch.stack((g, g, -2.0 * g), 1)  # no constant tensor: traced by aot too
            grad_terms = gv if grad_terms is None else grad_terms + gv
        if grad_terms is None:  # only the parts reached the loss: they carry no gradient
            return (None,) * n_in
        need = ctx.needs_input_grad
        gx, gy, gxw, gyw = grads(ctx, grad_terms, (need[0], need[1], need[4], need[5]))
        return (gx, gy, None, None, gxw, gyw) + (None,) * (n_in - 6)

    torch.library.register_autograd(f"{NAMESPACE}::{fwd}", backward, setup_context=setup_context)
    fwd_overload = op(fwd).default

    class EagerSegments(torch.autograd.Function):
        """The op's forward applied below the Autograd keys, its setup and backward applied
        directly, as one autograd node (eager calls of ``mmd_batched``, ``mmd_varlen``,
        ``mmd_terms_batched`` and weighted ``mmd`` / ``mmd_terms``): the (B, 3) terms, or with
        an ``out_dtype`` MMD^2 = terms . (1, 1, -2) of every set.  torch.library's per-call
        Python autograd wrapper (default filling of the 15 arguments, a second Function) and
        the dot and cast nodes cost ~110 us a call (one set of 64 points, forward + backward:
        240 -> 130 us).  torch.compile traces the op itself (see :func:`mmd_segments`).
        Inputs: the points and weights (differentiable), then the op's other arguments, the
        equal-set sizes and the output dtype, in one tuple (Function.apply walks every
        argument)."""

        @staticmethod
        def forward(ctx, x, y, x_weights, y_weights, meta):
            (x_offsets, y_offsets, shifts, kind, params, unbiased, flags, precision, uniform,
             out_dtype, scalar) = meta
            ctx.value = out_dtype is not None
            # batched (B, N, d) points arrive as they are and are flattened here, where autograd
            # does not record it: no view node per input in the graph, no reshape in backward
            ctx.shapes = (x.shape, y.shape)
            x, y = _flat_rows(x), _flat_rows(y)
            # MMD^2 with every asked gradient in the fused parts: the backward needs only those
            # parts, asked as MMD^2's own (value_parts: one per input, scaled by grad_b alone;
            # the terms' two per input took twice the stores and the saved memory, 8 MB at
            # B = 256 sets of 64 points, d = 64, and a product and an addcmul_ to scale), and
            # the value itself (none asked too: a forward only); see value_grads
            asked = [k for k in range(4) if flags[k]]
            fused = segments_fused_flags(backend, x_offsets, y_offsets, x_weights, y_weights,
                                         *flags)
            value_parts = (ctx.value and _SEG_FUSES.get(backend, False)
                           and all(fused[k] for k in asked))
            inputs = (x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params,
                      unbiased, *flags, precision, value_parts)
            with torch._C._AutoDispatchBelowAutograd():
                out = fwd_overload(*inputs)
            terms, parts = out[0], out[1:5]
            ctx.uniform = uniform
            ctx.nsets = terms.shape[0]
            ctx.parts_only = value_parts
            if ctx.parts_only:
                ctx.dtypes = (x.dtype, y.dtype, x_weights.dtype, y_weights.dtype)
                ctx.offsets = (x_offsets, y_offsets)  # made by the caller, not inputs
                ctx.asked = asked
                ctx.save_for_backward(*(parts[k] for k in asked))
                _no_zero_grads(ctx)
            else:
                setup_context(ctx, inputs, out)
            if out_dtype is None:  # one set read as (3,) (weighted mmd_terms): a copy, not a view
                return terms.view(3).clone() if scalar else terms
            value = out[5]
            if value.numel() > 0 and value.dtype == out_dtype:  # the backend's (value_parts)
                return value.view(()).clone() if scalar else value
            value = torch.mv(terms, mmd_weights(terms.device))
            # one set as a 0-dim value (weighted mmd): no select node after this one, and a
            # copy (an output viewing a tensor made in here could not be modified in place)
            return value.view(()).to(out_dtype, copy=True) if scalar else value.to(out_dtype)

        @staticmethod
        def backward(ctx, grad):
            if torch.is_grad_enabled():
                raise RuntimeError(DOUBLE_BACKWARD_MSG)
            if grad is None:  # undefined (set_materialize_grads(False))
                return None, None, None, None, None
            if ctx.parts_only:
                return (*value_grads(ctx, grad), None)
            if grad.dim() < (1 if ctx.value else 2):  # the scalar form: one set
                grad = grad.unsqueeze(0)
            # the value: the terms path's dot backward, the same values, grad_b * (1, 1, -2)
            grad_terms = (grad.to(torch.float64).unsqueeze(1) * mmd_weights(grad.device)
                          if ctx.value else grad)
            gx, gy, gxw, gyw = grads(ctx, grad_terms, ctx.needs_input_grad[:4])
            xs, ys = ctx.shapes
            if gx is not None and gx.shape != xs:
                gx = gx.view(xs)
            if gy is not None and gy.shape != ys:
                gy = gy.view(ys)
            return gx, gy, gxw, gyw, None

    def value_grads(ctx, grad: torch.Tensor) -> list:
        """Gradients (x, y, x_weights, y_weights) of sum_b grad[b] MMD^2_b from the fused value
        parts (the ones asked for, saved by the forward, one derivative of MMD^2_b per row):
        row i of set b gets part_i grad_b (grad converts exactly to the parts' dtype)."""
        out: list[Optional[torch.Tensor]] = [None, None, None, None]
        nsets = ctx.nsets
        for k, p in zip(ctx.asked, ctx.saved_tensors):
            side = k % 2  # 0: x rows, 1: y rows
            g = grad if grad.dtype == p.dtype else grad.to(p.dtype)  # (B,), or 0-dim (scalar)
            n = ctx.uniform[side]
            # p: (1, rows, ...); the gradient in the input's shape ((B, n, d) batched points)
            shape = ctx.shapes[side] if k < 2 else p.shape[1:]
            if nsets == 1:  # one set (a weighted mmd, or B = 1): grad is 0-dim or (1,)
                r = torch.mul(p.view(shape), g.reshape(()))
            elif n:  # equal sets: grad_b over a (B, n, ...) view of the part
                coef = g.view((nsets, 1) + (1,) * (p.dim() - 2))
                r = torch.mul(p.view((nsets, n) + p.shape[2:]), coef)
                if r.shape != shape:
                    r = r.view(shape)
            else:
                c = _rows_of_sets(g, ctx.offsets[side], p.shape[1])
                r = p[0] * (c.unsqueeze(1) if k < 2 else c)
            out[k] = r if r.dtype == ctx.dtypes[k] else r.to(ctx.dtypes[k])
        return out

    _EAGER_SEG[backend] = EagerSegments


_FUSES: dict[str, bool] = {}
_SEG_FUSES: dict[str, bool] = {}
_SHIFTS_IN_BACKEND: dict[str, bool] = {}
#: Per backend, ``one_launch(x, y, kind) -> bool`` (see :func:`define_backend_ops`).
_ONE_LAUNCH: dict[str, Callable] = {}
_EAGER_MMD: dict[str, type] = {}
_EAGER_MMD_VALUE: dict[str, type] = {}
_EAGER_SEG: dict[str, type] = {}
# MMD^2 = terms . (1, 1, -2); the fused parts (xx or yy, xy) of one input enter it with (1, -2)
_MMD_WEIGHTS = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
_MMD_WEIGHTS_ON: dict[torch.device, torch.Tensor] = {}
_PART_WEIGHTS: dict[tuple, torch.Tensor] = {}
_NO_OFFSET: dict[tuple, torch.Tensor] = {}


def _no_offset(x: torch.Tensor) -> torch.Tensor:
    """The empty (0,) tensor (compute dtype, x's device) of eager calls: the offset that asks a
    ``computes_shifts`` backend for the term shifts, and ``mmd_segments``' unit weights and
    backend-computed shifts; made once per (dtype, device), never written."""
    key = (x.dtype, x.device)
    e = _NO_OFFSET.get(key)
    if e is None:
        e = _NO_OFFSET[key] = x.new_empty((0,), dtype=compute_dtype(x.dtype))
    return e


def _part_weights(like: torch.Tensor) -> torch.Tensor:
    """(1, -2) as a (2, 1, 1) tensor of ``like``'s dtype and device, made once per key."""
    key = (like.dtype, like.device)
    w = _PART_WEIGHTS.get(key)
    if w is None:
        w = _PART_WEIGHTS[key] = torch.tensor([1.0, -2.0], dtype=like.dtype,
                                              device=like.device).view(2, 1, 1)
    return w


def mmd_weights(device: torch.device) -> torch.Tensor:
    """(1, 1, -2) float64 on ``device`` (MMD^2 = terms . it), copied once per device: no
    host-to-device copy per call (which a CUDA graph capture refuses); not cached while
    tracing."""
    w = _MMD_WEIGHTS_ON.get(device)
    if w is None:
        w = _MMD_WEIGHTS.to(device)
        if not torch.compiler.is_compiling():
            _MMD_WEIGHTS_ON[device] = w
    return w


@dataclass(frozen=True)
class OpFamily:
    """One op family: ``<name>_fwd_<backend>`` and ``<name>_bwd_<backend>`` with these schemas;
    ``define(backend)`` defines both ops and registers their fakes and autograd."""

    name: str
    fwd_schema: str
    bwd_schema: str
    define: Callable[[str], None]


#: Every op family of the contract, defined once here for every backend.
FAMILIES: dict[str, OpFamily] = {
    "mmd": OpFamily("mmd", MMD_FWD_SCHEMA, MMD_BWD_SCHEMA, _define_mmd),
    "reparam": OpFamily("reparam", REPARAM_FWD_SCHEMA, REPARAM_BWD_SCHEMA, _define_reparam),
    "prior": OpFamily("prior", PRIOR_FWD_SCHEMA, PRIOR_BWD_SCHEMA, _define_prior),
    "kernel_matmul": OpFamily("kernel_matmul", KMM_FWD_SCHEMA, KMM_BWD_SCHEMA, _define_kmm),
    "mmd_segments": OpFamily("mmd_segments", SEG_FWD_SCHEMA, SEG_BWD_SCHEMA, _define_segments),
}


def define_backend_ops(
    backend: str,
    *,
    fuses_grad: bool = False,
    segments_fuse_grad: bool = False,
    computes_shifts: bool = False,
    dispatch_key: str = "CompositeExplicitAutograd",
    one_launch: Optional[Callable] = None,
    **impls: Optional[Callable],
) -> None:
    """Define the schemas, fakes and autograd of every op family for backend ``backend``
    (idempotent), and register the given Python implementations (keywords ``<family>_fwd`` /
    ``<family>_bwd``, e.g. ``mmd_fwd=fn``) under ``dispatch_key`` ("CPU", "CUDA", or
    "CompositeExplicitAutograd" for any device).

    ``fuses_grad`` declares that ``mmd_fwd`` returns the (2, N, d)/(2, M, d) gradient parts when
    asked (the fake implementation must know the output shapes for torch.compile).
    ``segments_fuse_grad`` declares the same of ``mmd_segments_fwd`` (the parts of
    :func:`segments_fused_flags`); a backend without it returns :func:`segments_unfused`.
    ``computes_shifts`` declares that ``mmd_fwd`` / ``mmd_bwd`` accept an empty (0,) ``offset``
    and then compute the glue's :func:`term_shifts` themselves (same values: the lower median
    per coordinate, torch.lerp's formula), so :func:`mmd_terms` passes an empty one (a small
    call then pays no median, stack and cat ops in Python); and likewise that
    ``mmd_segments_fwd`` / ``_bwd`` accept empty ``shifts`` and compute :func:`segment_shifts`.

    ``one_launch(x, y, kind) -> bool`` (shapes, dtype and device only: it is evaluated while
    tracing) marks the calls a backend computes in one launch without host synchronisation:
    for them the glue passes an EMPTY ``offset`` (0,) instead of :func:`term_shifts` (whose
    medians are several launches), the backend computes those same shifts itself and returns
    the fused gradient parts for the inputs that need them (whatever ``fuses_grad`` says).
    """
    known = {f"{f}_{d}" for f in FAMILIES for d in ("fwd", "bwd")}
    unknown = set(impls) - known
    if unknown:
        raise ValueError(f"define_backend_ops: unknown op(s) {sorted(unknown)}; expected {sorted(known)}")
    if backend not in _DEFINED:
        _FUSES[backend] = fuses_grad
        _SEG_FUSES[backend] = segments_fuse_grad
        _SHIFTS_IN_BACKEND[backend] = computes_shifts
        for family in FAMILIES.values():
            family.define(backend)
        _DEFINED.add(backend)
    if one_launch is not None:
        _ONE_LAUNCH[backend] = one_launch
    for name, fn in impls.items():
        if fn is not None:
            _LIB.impl(f"{name}_{backend}", fn, dispatch_key)


def shifts_in_backend(backend: str, x: torch.Tensor, y: torch.Tensor, kind: int) -> bool:
    """Whether the glue passes an empty offset for this call: the backend computes the term
    shifts itself (``computes_shifts``), or the call is one of its ``one_launch`` calls."""
    if _SHIFTS_IN_BACKEND.get(backend, False):
        return True
    small = _ONE_LAUNCH.get(backend)
    return small is not None and bool(small(x, y, kind))


def mmd_terms(
    backend: str,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: int,
    params: list[float],
    unbiased: bool,
    precision: str = "ieee",
) -> torch.Tensor:
    """Call backend ``backend``'s forward op through autograd; returns the float64 (3,) terms.

    Inputs are assumed validated (same device/dtype, 2-D, matching d)."""
    x = x.contiguous()
    y = y.contiguous()
    if shifts_in_backend(backend, x, y, kind):  # the backend computes term_shifts itself
        offset = x.new_empty((0,), dtype=compute_dtype(x.dtype))  # (traceable: no cache here)
    else:
        offset = term_shifts(kind, x, y)  # zeros for the polynomial (not translation invariant)
    grad_on = torch.is_grad_enabled()
    gx, gy = grad_on and x.requires_grad, grad_on and y.requires_grad
    args = (x, y, offset, kind, [float(p) for p in params], unbiased, gx, gy, precision)
    if torch.compiler.is_compiling():
        terms = op(f"mmd_fwd_{backend}")(*args)[0]
    else:
        terms = _EAGER_MMD[backend].apply(*args)[0]
    if kind == KIND_POLY:
        terms = inf_to_nan(terms)  # an fp32 tile sum of finite powers may still overflow
    return terms


def mmd_value(
    backend: str,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: int,
    params: list[float],
    unbiased: bool,
    precision: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """MMD^2 = terms[0] + terms[1] - 2 terms[2] through backend ``backend``'s forward op, as a
    0-dim ``out_dtype`` tensor (differentiable).  Eagerly one autograd node (the value formed
    in its forward, the fused gradient parts scaled in its backward); under torch.compile, and
    for the polynomial kernel (whose overflowed terms must read NaN first), the terms of
    :func:`mmd_terms` and a dot.  Inputs are assumed validated (``params``: floats)."""
    if kind == KIND_POLY or torch.compiler.is_compiling() or backend not in _EAGER_MMD_VALUE:
        terms = mmd_terms(backend, x, y, kind, params, unbiased, precision)
        return torch.dot(terms, mmd_weights(terms.device)).to(out_dtype)
    x = x.contiguous()
    y = y.contiguous()
    offset = _no_offset(x) if shifts_in_backend(backend, x, y, kind) else term_shifts(kind, x, y)
    grad_on = torch.is_grad_enabled()
    return _EAGER_MMD_VALUE[backend].apply(x, y, offset, (
        kind, params if type(params) is list else list(map(float, params)), unbiased,
        grad_on and x.requires_grad, grad_on and y.requires_grad, precision, out_dtype))


def inf_to_nan(t: torch.Tensor) -> torch.Tensor:
    """t with +-inf turned into NaN, finite values and the gradient unchanged (t - t is 0
    where t is finite, NaN where it is not): an overflowed polynomial kernel sum is outside the
    supported range, and must read NaN, not inf (the hostile-input contract)."""
    return t + (t - t)


def prior_terms(backend: str, x: torch.Tensor, kind: int, params: list[float], sigma2: float,
                unbiased: bool, num_samples: int, seed: int, precision: str = "ieee") -> torch.Tensor:
    """Call backend ``backend``'s prior forward op (samples generated in the backend) through
    autograd (gradient to x); returns the float64 (3,) terms.  Inputs are assumed validated.
    A tensor ``seed`` (under torch.compile) goes through :data:`SEEDED_PRIOR`."""
    if isinstance(seed, torch.Tensor):
        return op(SEEDED_PRIOR)(x.contiguous(), int(kind), [float(p) for p in params], float(sigma2),
                                bool(unbiased), int(num_samples), seed, precision, backend)
    return op(f"prior_fwd_{backend}")(x.contiguous(), int(kind), [float(p) for p in params],
                                      float(sigma2), bool(unbiased), int(num_samples), seed,
                                      precision)


def term_shifts(kind: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (3, d) ``offset`` the glue passes to the mmd ops, in the compute dtype, for the
    translation-invariant kinds: the coordinate-wise medians of x (xx term) and of y (yy term),
    and for the xy term their size-weighted mean (N median(x) + M median(y)) / (N + M), a cheap
    stand-in for the pooled median; zeros for the polynomial.

    Each term gets its own shift near its points: a set clustered far from the other keeps its
    distances exact (one shared shift cancels them away in |a|^2 + |b|^2 - 2 a.b), and a median,
    unlike a mean, is not dragged away from the bulk of a set by a few far points (a NaN
    coordinate makes its column's shift NaN: every row of those terms NaN, as the contract
    asks)."""
    ct = compute_dtype(x.dtype)
    if kind not in TRANSLATION_INVARIANT:
        return x.new_zeros((3, x.shape[1]), dtype=ct)
    n, m = x.shape[0], y.shape[0]
    xc, yc = x.detach().to(ct), y.detach().to(ct)
    if n == m:  # one median call for both sets (the common WAE case: codes vs as many samples)
        med = torch.stack([xc, yc]).median(1).values
    else:
        med = torch.stack([xc.median(0).values, yc.median(0).values])
    return torch.cat([med, torch.lerp(med[0], med[1], m / (n + m)).unsqueeze(0)])


def per_term(offset: torch.Tensor) -> torch.Tensor:
    """``offset`` as (3, d) rows (xx, yy, xy shift): a (d,) offset is one shift for all terms."""
    return offset.expand(3, offset.shape[-1]) if offset.dim() == 1 else offset


def shift_for(kind: int, y: torch.Tensor) -> torch.Tensor:
    """The (d,) offset the glue passes to kernel_matmul: the coordinate-wise median of y in the
    compute dtype for the translation-invariant kinds (it avoids cancellation in
    ||a||^2 + ||b||^2 - 2 a.b, and unlike a mean is not dragged away from y's bulk by a few far
    points), zeros for the polynomial."""
    ct = compute_dtype(y.dtype)
    if kind in TRANSLATION_INVARIANT:
        return y.detach().to(ct).median(0).values.contiguous()
    return y.new_zeros((y.shape[1],), dtype=ct)


def kernel_matmul(backend: str, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, kind: int,
                  params: list[float], precision: str = "ieee") -> torch.Tensor:
    """K(x, y) @ v through backend ``backend``'s op (differentiable in x, y and v); v is 2-D.
    Inputs are assumed validated (one device and dtype)."""
    out = op(f"kernel_matmul_fwd_{backend}")(x.contiguous(), y.contiguous(), v.contiguous(),
                                             shift_for(kind, y), int(kind), [float(p) for p in params],
                                             precision)
    return inf_to_nan(out) if kind == KIND_POLY else out  # an overflowed sum reads NaN


def reparam(backend: str, mu: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
    """Call backend ``backend``'s sampling op through autograd: z = mu + exp(logvar / 2) * eps.
    A tensor ``seed`` (under torch.compile) goes through :data:`SEEDED_REPARAM`."""
    if isinstance(seed, torch.Tensor):
        return op(SEEDED_REPARAM)(mu.contiguous(), logvar.contiguous(), seed, backend)
    return op(f"reparam_fwd_{backend}")(mu.contiguous(), logvar.contiguous(), seed)


def segment_shifts(kind: int, y: torch.Tensor, y_offsets: Sequence[int], y_weights: torch.Tensor,
                   num_sets: int) -> torch.Tensor:
    """The per-set offsets (B, d) the glue passes to ``mmd_segments``: the mean of each set's y
    rows with a non-zero weight (all rows when unweighted), in the compute dtype; zeros for the
    polynomial.  Rows with weight 0 are never read (padding may hold NaN).  ``y_offsets``: host
    values, (B + 1) cumulative or [0, M] for a y shared by every set."""
    ct = compute_dtype(y.dtype)
    d = y.shape[1]
    if kind not in TRANSLATION_INVARIANT:
        return y.new_zeros((num_sets, d), dtype=ct)
    yd = y.detach().to(ct)
    counts = [e - s for s, e in zip(y_offsets[:-1], y_offsets[1:])]
    if y_weights.numel() == 0 and len(set(counts)) == 1:  # equal sets (batched): a view, one mean
        mean = yd.view(len(counts), counts[0], d).mean(1)
        return (mean.expand(num_sets, d) if len(counts) == 1 else mean).contiguous()
    if y_weights.numel() > 0:
        keep = (y_weights.detach() != 0)
        yd = torch.where(keep[:, None], yd, torch.zeros((), dtype=ct, device=y.device))
        ones = keep.to(ct)
        if len(set(counts)) == 1:  # equal sets: views, no index_add (0.4 ms of a 3 ms call at B=256)
            b, m = len(counts), counts[0]
            mean = yd.view(b, m, d).sum(1) / ones.view(b, m).sum(1).clamp(min=1)[:, None]
            return (mean.expand(num_sets, d) if b == 1 else mean).contiguous()
    else:
        ones = torch.ones((y.shape[0],), dtype=ct, device=y.device)
    seg = torch.repeat_interleave(torch.arange(len(counts), device=y.device),
                                  torch.tensor(counts, device=y.device), output_size=y.shape[0])
    total = yd.new_zeros((len(counts), d)).index_add_(0, seg, yd)
    n = ones.new_zeros((len(counts),)).index_add_(0, seg, ones)
    mean = total / n.clamp(min=1)[:, None]
    return (mean.expand(num_sets, d) if len(counts) == 1 else mean).contiguous()


_RANGE_OFFSETS: dict[tuple, torch.Tensor] = {}
_RANGE_OFFSETS_MAX = 64


def _offsets_tensor(offsets, device: torch.device) -> torch.Tensor:
    """int64 tensor of host offsets: a list, or a ``range`` (equal sets: no per-set loop).
    Eagerly a range's tensor is made once (a training loop's sets keep their sizes: two
    ``arange`` were 3 us of a 30 us one-set call) and never written (the ops read offsets)."""
    if not isinstance(offsets, range):
        return torch.tensor(offsets, dtype=torch.int64, device=device)
    # not cached while tracing, nor inside a CUDA graph capture (its arange would run only at
    # the graph's replay: a later eager call would read the tensor unfilled)
    if torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return torch.arange(offsets.start, offsets.stop, offsets.step, dtype=torch.int64, device=device)
    key = (offsets.start, offsets.stop, offsets.step, device)
    t = _RANGE_OFFSETS.get(key)
    if t is None:
        if len(_RANGE_OFFSETS) >= _RANGE_OFFSETS_MAX:  # many sizes: start over, bounded
            _RANGE_OFFSETS.clear()
        t = _RANGE_OFFSETS[key] = torch.arange(offsets.start, offsets.stop, offsets.step,
                                               dtype=torch.int64, device=device)
    return t


def _flat_rows(t: torch.Tensor) -> torch.Tensor:
    """(rows, d): t itself, or the view of batched (B, N, d) points."""
    return t if t.dim() == 2 else t.view(-1, t.shape[-1])


def _equal_sets(offsets: Sequence[int]) -> int:
    """The size of every set when ``offsets`` is the ``range`` of equal sets the batched entry
    points pass, else 0 (ragged, or a shared y's [0, M])."""
    return offsets.step if isinstance(offsets, range) and offsets.step > 0 else 0


def mmd_segments(backend: str, x: torch.Tensor, y: torch.Tensor, x_offsets: Sequence[int],
                 y_offsets: Sequence[int], x_weights: Optional[torch.Tensor],
                 y_weights: Optional[torch.Tensor], kind: int, params: list[float], unbiased: bool,
                 precision: str = "ieee", out_dtype: Optional[torch.dtype] = None,
                 scalar: bool = False) -> torch.Tensor:
    """Call backend ``backend``'s ``mmd_segments`` forward op through autograd; returns the
    float64 (B, 3) terms of every set, or with ``out_dtype`` the (B,) MMD^2 = terms . (1, 1, -2)
    in that dtype (eagerly one autograd node, see ``EagerSegments`` in :func:`_define_segments`;
    under torch.compile the op, and for MMD^2 a product); ``scalar`` (one set): without the set
    dimension, (3,) or 0-dim.  ``x_offsets`` (B + 1 host ints, cumulative from
    0; a ``range`` for equal sets), ``y_offsets`` likewise or [0, M] (y shared by every set);
    weights None for unit weights.  Inputs are assumed validated (:mod:`wae_fast.segments`)."""
    x, y = x.contiguous(), y.contiguous()
    eager = backend in _EAGER_SEG and not torch.compiler.is_compiling()
    # (0,) for unit weights / backend shifts: eagerly one cached empty tensor (never written)
    empty = _no_offset(x) if eager else x.new_empty((0,), dtype=compute_dtype(x.dtype))
    xw = empty if x_weights is None else x_weights.contiguous()
    yw = empty if y_weights is None else y_weights.contiguous()
    num_sets = len(x_offsets) - 1
    if _SHIFTS_IN_BACKEND.get(backend, False):  # the backend computes segment_shifts itself
        shifts = empty
    else:
        shifts = segment_shifts(kind, _flat_rows(y), y_offsets, yw, num_sets)
    device = x.device
    xo, yo = _offsets_tensor(x_offsets, device), _offsets_tensor(y_offsets, device)
    grad_on = torch.is_grad_enabled()
    flags = (grad_on and x.requires_grad, grad_on and y.requires_grad,
             grad_on and xw.requires_grad, grad_on and yw.requires_grad)
    params = params if type(params) is list else [float(p) for p in params]
    if eager:
        uniform = (_equal_sets(x_offsets), _equal_sets(y_offsets))
        # batched (B, N, d) points as they are: the node flattens them (no view node in the graph)
        return _EAGER_SEG[backend].apply(x, y, xw, yw, (
            xo, yo, shifts, int(kind), params, bool(unbiased), flags, precision, uniform, out_dtype,
            scalar))
    terms = op(f"mmd_segments_fwd_{backend}")(_flat_rows(x), _flat_rows(y), xo, yo, xw, yw, shifts,
                                              int(kind), params, bool(unbiased), *flags, precision)[0]
    res = terms if out_dtype is None else (terms @ mmd_weights(terms.device)).to(out_dtype)
    return res[0] if scalar else res


# ----------------------------------------------------------------------------------------------
# Tensor seeds under torch.compile.  The backends' sampling ops take ``int seed``; a 0-dim integer
# tensor seed read with .item() while tracing is an unbacked SymInt those schemas refuse.  These
# two glue ops (defined once, for every backend: the backend is a string argument) take the seed
# tensor and read it inside, when they run; their fakes need no value, so a traced graph holds
# the seed as an input.  Eager calls read the seed before the op (:func:`wae_fast.philox.check_seed`)
# and never use them.  Reading the value synchronises with the seed's device.

SEEDED_REPARAM = "reparam_seeded"
SEEDED_PRIOR = "prior_seeded"
_LIB.define(SEEDED_REPARAM + "(Tensor mu, Tensor logvar, Tensor seed, str backend) -> Tensor")
_LIB.define(SEEDED_REPARAM + "_bwd(Tensor grad_z, Tensor logvar, Tensor seed, str backend) -> Tensor")
_LIB.define(SEEDED_PRIOR + "(Tensor x, int kind, float[] params, float sigma2, bool unbiased, "
            "int num_samples, Tensor seed, str precision, str backend) -> Tensor")
_LIB.define(SEEDED_PRIOR + "_bwd(Tensor grad_terms, Tensor x, int kind, float[] params, float sigma2, "
            "bool unbiased, int num_samples, Tensor seed, str precision, str backend) -> Tensor")


def _seed_value(seed: torch.Tensor) -> int:
    v = int(seed.item())
    if not 0 <= v < 2**63:
        raise ValueError(f"seed must be an int in [0, 2^63), got {v}")
    return v


def _reparam_seeded(mu, logvar, seed, backend):
    return op(f"reparam_fwd_{backend}")(mu, logvar, _seed_value(seed))


def _reparam_seeded_bwd(grad_z, logvar, seed, backend):
    return op(f"reparam_bwd_{backend}")(grad_z, logvar, _seed_value(seed))


def _prior_seeded(x, kind, params, sigma2, unbiased, num_samples, seed, precision, backend):
    return op(f"prior_fwd_{backend}")(x, kind, params, sigma2, unbiased, num_samples,
                                      _seed_value(seed), precision)


def _prior_seeded_bwd(grad_terms, x, kind, params, sigma2, unbiased, num_samples, seed, precision,
                      backend):
    return op(f"prior_bwd_{backend}")(grad_terms, x, kind, params, sigma2, unbiased, num_samples,
                                      _seed_value(seed), precision)


for _name, _fn in ((SEEDED_REPARAM, _reparam_seeded), (SEEDED_REPARAM + "_bwd", _reparam_seeded_bwd),
                   (SEEDED_PRIOR, _prior_seeded), (SEEDED_PRIOR + "_bwd", _prior_seeded_bwd)):
    _LIB.impl(_name, _fn, "CompositeExplicitAutograd")


@torch.library.register_fake(f"{NAMESPACE}::{SEEDED_REPARAM}")
def _reparam_seeded_fake(mu, logvar, seed, backend):
    return torch.empty_like(mu)


@torch.library.register_fake(f"{NAMESPACE}::{SEEDED_REPARAM}_bwd")
def _reparam_seeded_bwd_fake(grad_z, logvar, seed, backend):
    return torch.empty_like(logvar)


@torch.library.register_fake(f"{NAMESPACE}::{SEEDED_PRIOR}")
def _prior_seeded_fake(x, kind, params, sigma2, unbiased, num_samples, seed, precision, backend):
    return x.new_empty((3,), dtype=torch.float64)


@torch.library.register_fake(f"{NAMESPACE}::{SEEDED_PRIOR}_bwd")
def _prior_seeded_bwd_fake(grad_terms, x, kind, params, sigma2, unbiased, num_samples, seed,
                           precision, backend):
    return torch.empty_like(x)


def _reparam_seeded_setup(ctx, inputs, output):
    _mu, logvar, seed, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(logvar, seed)


def _reparam_seeded_backward(ctx, grad_z):
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MSG)
    logvar, seed = ctx.saved_tensors
    gmu = grad_z if ctx.needs_input_grad[0] else None
    glv = None
    if ctx.needs_input_grad[1]:
        glv = op(SEEDED_REPARAM + "_bwd")(grad_z.contiguous(), logvar, seed, ctx.backend)
    return gmu, glv, None, None


def _prior_seeded_setup(ctx, inputs, output):
    x, seed = inputs[0], inputs[6]
    ctx.args = inputs[1:6]
    ctx.tail = inputs[7:]
    ctx.save_for_backward(x, seed)


def _prior_seeded_backward(ctx, grad_terms):
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MSG)
    x, seed = ctx.saved_tensors
    gx = None
    if ctx.needs_input_grad[0]:
        gx = op(SEEDED_PRIOR + "_bwd")(grad_terms.to(torch.float64).contiguous(), x, *ctx.args, seed,
                                       *ctx.tail)
    return (gx,) + (None,) * 8


torch.library.register_autograd(f"{NAMESPACE}::{SEEDED_REPARAM}", _reparam_seeded_backward,
                                setup_context=_reparam_seeded_setup)
torch.library.register_autograd(f"{NAMESPACE}::{SEEDED_PRIOR}", _prior_seeded_backward,
                                setup_context=_prior_seeded_setup)
