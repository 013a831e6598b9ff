"""The counter-based random stream every backend shares, and the one way seeds are drawn.

:func:`randn` is Triton's ``tl.randn(seed, offset)`` written with torch integer ops, so the
reference backend draws the very samples the cpp, triton and cuda kernels draw (to an ulp of
the fp32 log/cos/sqrt, which may differ between libm, torch's vector code and the GPU):

* Philox 4x32-10 keyed by the 64-bit seed (k0 = low 32 bits, k1 = high 32 bits), counters
  (offset low 32 bits, offset high 32 bits, 0, 0) (csrc/include/wae_fast/tile_math.h);
* Triton's ``uint_to_uniform_float`` on the first two outputs (as int32: x < 0 -> -x - 1, times
  2^-31 in fp32), u1 clamped to >= 1e-7;
* Box-Muller in fp32: sqrt(-2 log u1) * cos(2 pi u2).

Everything is done on int64 tensors holding uint32 values; the 32 x 32-bit products are split in
16-bit halves so that no intermediate passes 2^63.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

#: Seeds drawn from a generator lie in [0, SEED_LIMIT): every backend's int64 seed argument
#: takes them, and the Philox key uses both 32-bit words.
SEED_LIMIT = 2**62
#: Explicit seeds are accepted in [0, MAX_SEED) (the ops' seed is an int64).
MAX_SEED = 2**63

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def draw_seed(generator: Optional[torch.Generator] = None) -> int:
    """One seed in [0, 2^62) from ``generator`` (the global CPU generator when None)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    dev = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, SEED_LIMIT, (1,), generator=generator, device=dev).item())


def check_seed(seed) -> Union[int, torch.Tensor]:
    """``seed`` (an int or a 0-dim integer tensor) as an int in [0, 2^63), or
    ValueError/TypeError naming it.  Eagerly a tensor seed is read with ``.item()``; under
    torch.compile it is returned as the tensor (an int64 0-dim tensor), which the sampling ops
    read when they run (:data:`wae_fast.contract.SEEDED_REPARAM`; :func:`philox4x32_10` takes it
    as is), so a compiled function takes a new seed without recompiling or a graph break."""
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise TypeError(f"seed must be an int or a 0-dim integer tensor, got a {seed.dtype} tensor "
                            f"of shape {tuple(seed.shape)}")
        if torch.compiler.is_compiling():
            return seed.to(torch.int64)  # range checked when an op reads it
        seed = seed.item()
        torch._check(seed >= 0, lambda: "seed must be an int in [0, 2^63)")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a 0-dim integer tensor or None, got {type(seed).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
    return int(seed)


def resolve_seed(seed: Union[int, torch.Tensor, None],
                 generator: Optional[torch.Generator]) -> Union[int, torch.Tensor]:
    """The explicit ``seed`` if given (checked), else one drawn from ``generator``."""
    return draw_seed(generator) if seed is None else check_seed(seed)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the constant ``a`` times the uint32 values ``b``."""
    lo_part = b & 0xFFFF
    lo_part = lo_part * a                      # < 2^48
    mid = (b >> 16) * a                        # < 2^48
    low_sum = lo_part + ((mid & 0xFFFF) << 16)  # < 2^49
    return (mid >> 16) + (low_sum >> 32), low_sum & _M32


def philox4x32_10(offset: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two Philox 4x32-10 outputs for int64 counters ``offset`` and a 64-bit key
    (an int, or a 0-dim int64 tensor in [0, 2^63) under torch.compile: tensor ops then)."""
    if not isinstance(seed, torch.Tensor):
        seed = int(seed) & ((1 << 64) - 1)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0 = offset & _M32
    c1 = (offset >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1


def _uniform(u: torch.Tensor) -> torch.Tensor:
    # int32 view: u >= 2^31 is negative, and -x - 1 == 2^32 - 1 - u
    x = torch.where(u >= 2**31, _M32 - u, u)
    return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def randn(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """fp32 ``tl.randn(seed, offset)`` for an int64 tensor of non-negative counters."""
    r0, r1 = philox4x32_10(offset.to(torch.int64), seed)
    u1 = _uniform(r0).clamp_(min=1.0e-7)
    u2 = _uniform(r1)
    th = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    # log, sqrt and cos in fp64 rounded to fp32: torch's fp32 vector log/sqrt/cos are up to a
    # few ulps off the host libm (sqrt is then exact; log and cos within an ulp of libm's)
    t = -2.0 * torch.log(u1.double()).float()
    return torch.sqrt(t.double()).float() * torch.cos(th.double()).float()


def prior_rows(j0: int, j1: int, d: int, seed: int, sigma2: float, dtype: torch.dtype,
               device) -> torch.Tensor:
    """Rows [j0, j1) of the virtual (M, d) prior samples y_j[k] = sqrt(sigma2) * randn(seed,
    j * d + k): the fp32 draw cast to ``dtype`` (the compute dtype), times sqrt(sigma2) rounded
    to ``dtype`` -- what every backend's in-kernel sampler computes."""
    idx = torch.arange(j0 * d, j1 * d, dtype=torch.int64, device=device)
    sig = torch.tensor(math.sqrt(float(sigma2)), dtype=dtype, device=device)
    return (randn(seed, idx).to(dtype) * sig).view(j1 - j0, d)
