"""The prior op family (``prior_fwd/bwd_<backend>``: MMD to N(0, sigma2 I) with the samples
generated inside the backend) on every backend that implements it, against the float64 oracle
run on the samples :func:`wae_fast.prior_samples` draws (the contract's Philox stream, in torch).

The reference draws exactly those samples, so it is held to the tolerances of
tests/test_backends.py in every dtype.  The kernel backends draw them with their own fp32
log/cos (an ulp apart on ~1.5% of the draws, tests/test_routing.py), which moves the fp32 value
by far less than its tolerance: they are checked here in fp32 (their other dtypes, on their own
draws, in tests/test_cpp_prior.py, tests/test_triton_prior.py, tests/test_cuda_backend.py).
"""
from __future__ import annotations

import pytest
import torch

import wae_fast
from wae_fast.prior import mmd_to_prior, prior_samples

from . import oracle

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0))}
VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2 * 2.0**-11,
            torch.bfloat16: 2 * 2.0**-8}
SEED = 2**40 + 77


def _check(prior_backend, n, m, d, kname, unbiased, dtype, sigma2=1.3):
    name, dev = prior_backend
    if name != "reference" and dtype != torch.float32:
        pytest.skip("kernel backends: other dtypes on their own draws in their own test files")
    g = torch.Generator().manual_seed(n + m + d)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2).to(device=dev, dtype=dtype)
    x.requires_grad_(True)
    val = mmd_to_prior(x, KERNELS[kname], sigma2=sigma2, estimator="sampled", unbiased=unbiased,
                       num_samples=m, seed=SEED, backend=name)
    assert val.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (-1.5 * val).backward()
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    y = prior_samples(m, d, sigma2=sigma2, seed=SEED, dtype=ct)
    kind, params = KERNELS[kname].lower(d)
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach().cpu(), y, kind, params, unbiased, -1.5)
    err = abs(val.item() - want.item())
    assert err <= VAL_TOL[dtype] * scale, f"value error {err:.3g} vs scale {scale:.3g}"
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    gerr = (x.grad.double().cpu() - gx).norm().item()
    assert gerr <= GRAD_TOL[dtype] * gx.norm().item(), f"grad error {gerr:.3g}"


@pytest.mark.parametrize("n,m,d", [(2, 3, 1), (37, 70, 5), (130, 67, 17), (33, 40, 64)])
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_fp32_against_oracle(prior_backend, n, m, d, kname, unbiased):
    _check(prior_backend, n, m, d, kname, unbiased, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,m,d", [(37, 23, 5), (40, 1100, 3)])
def test_dtypes_against_oracle(prior_backend, dtype, n, m, d):
    """(40, 1100, 3): more than one 1024-row block of generated samples in the reference."""
    _check(prior_backend, n, m, d, "imq7", True, dtype)


def test_opcheck(prior_backend):
    """Schema, fake and autograd registration of the prior ops agree with the implementation."""
    from wae_fast import contract

    name, dev = prior_backend
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 5, generator=g).to(dev)
    kind, params = wae_fast.IMQ().lower(5)
    args = (x.clone().requires_grad_(True), kind, params, 1.0, True, 17, 3, "ieee")
    torch.library.opcheck(contract.op(f"prior_fwd_{name}").default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_reference_op_checks_its_arguments():
    """Called directly (not through mmd_to_prior), the reference op refuses what the kernel
    backends' launchers refuse, naming the argument."""
    from wae_fast import contract

    x = torch.randn(10, 3)
    fwd = contract.op("prior_fwd_reference")
    with pytest.raises(ValueError, match="sigma2"):
        fwd(x, 0, [1.0], -1.0, True, 10, 3, "ieee")
    with pytest.raises(ValueError, match="num_samples"):
        fwd(x, 0, [1.0], 1.0, True, 0, 3, "ieee")
    with pytest.raises(ValueError, match="seed"):
        fwd(x, 0, [1.0], 1.0, True, 10, -1, "ieee")
