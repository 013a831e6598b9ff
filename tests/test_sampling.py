"""reparameterize and logvar_penalty, on every backend that implements sampling."""
from __future__ import annotations

import pytest
import torch

import wae_fast


def _gen(seed, device="cpu"):
    return torch.Generator(device="cpu").manual_seed(seed)


def test_deterministic_per_seed(reparam_backend):
    name, dev = reparam_backend
    mu = torch.randn(37, 5, device=dev)
    lv = torch.randn(37, 5, device=dev) * 0.3
    z1 = wae_fast.reparameterize(mu, lv, generator=_gen(3), backend=name)
    z2 = wae_fast.reparameterize(mu, lv, generator=_gen(3), backend=name)
    z3 = wae_fast.reparameterize(mu, lv, generator=_gen(4), backend=name)
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)


def test_statistics(reparam_backend):
    name, dev = reparam_backend
    n = 20000
    mu = torch.full((n, 2), 1.5, device=dev)
    lv = torch.log(torch.tensor([0.25, 4.0], device=dev)).expand(n, 2).contiguous()
    z = wae_fast.reparameterize(mu, lv, generator=_gen(0), backend=name).double().cpu()
    # mean error sd = sigma/sqrt(n) <= 2/141 = 0.014; 5 sd bounds
    assert torch.allclose(z.mean(0), torch.tensor([1.5, 1.5], dtype=torch.float64), atol=0.075)
    # variance relative sd = sqrt(2/n) = 0.01; 5 sd bounds
    assert torch.allclose(z.var(0) / torch.tensor([0.25, 4.0], dtype=torch.float64),
                          torch.ones(2, dtype=torch.float64), atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_gradients(reparam_backend, dtype):
    name, dev = reparam_backend
    mu = torch.randn(13, 7, device=dev, dtype=dtype, requires_grad=True)
    lv = (torch.randn(13, 7, device=dev) * 0.5).to(dtype).requires_grad_(True)
    z = wae_fast.reparameterize(mu, lv, generator=_gen(9), backend=name)
    assert z.dtype == dtype
    gz = torch.randn_like(z)
    (z * gz).sum().backward()
    # eps recovered from the output itself: eps = (z - mu) / exp(lv/2)
    ct = torch.float64
    eps = (z.to(ct) - mu.to(ct)) / torch.exp(lv.to(ct) / 2)
    assert torch.equal(mu.grad, gz)
    want = gz.to(ct) * eps * torch.exp(lv.to(ct) / 2) / 2
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    assert torch.allclose(lv.grad.to(ct), want, rtol=tol, atol=tol)


def test_only_logvar_or_mu_requires_grad(reparam_backend):
    name, dev = reparam_backend
    mu = torch.randn(4, 3, device=dev)
    lv = torch.randn(4, 3, device=dev, requires_grad=True)
    wae_fast.reparameterize(mu, lv, generator=_gen(1), backend=name).sum().backward()
    assert lv.grad is not None
    mu2 = mu.clone().requires_grad_(True)
    wae_fast.reparameterize(mu2, lv.detach(), generator=_gen(1), backend=name).sum().backward()
    assert torch.equal(mu2.grad, torch.ones_like(mu2))


def test_gradcheck_reference():
    mu = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: wae_fast.reparameterize(a, b, generator=_gen(2), backend="reference")
    assert torch.autograd.gradcheck(f, (mu, lv))


def test_bad_input():
    mu = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="logvar has shape"):
        wae_fast.reparameterize(mu, torch.zeros(3, 3))
    with pytest.raises(TypeError, match="mu has unsupported dtype"):
        wae_fast.reparameterize(mu.long(), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="generator must be"):
        wae_fast.reparameterize(mu, mu, generator=3)


def test_logvar_penalty():
    lv = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    assert wae_fast.logvar_penalty(lv, "l1").item() == pytest.approx((3.0 + 0.5) / 2)
    assert wae_fast.logvar_penalty(lv, "l2").item() == pytest.approx((5.0 + 0.25) / 2)
    wae_fast.logvar_penalty(lv).backward()
    assert torch.equal(lv.grad, torch.tensor([[0.5, -0.5], [0.5, 0.0]]))
    # multi-channel latents are flattened per point
    assert wae_fast.logvar_penalty(torch.ones(2, 3, 4)).item() == 12.0
    with pytest.raises(ValueError, match="kind: unknown penalty"):
        wae_fast.logvar_penalty(lv, "l3")


def test_kernel_backends_draw_the_same_eps():
    """cpp, triton and cuda draw eps from one Philox stream (tl.randn(seed, flat index)): the
    same generator state gives the same z on each (fp32 special functions may differ by an ulp),
    for a shape whose flat indices pass 2^16 (several Triton blocks, several C++ chunks)."""
    from wae_fast.dispatch import unavailable_reason
    devs = [("cpp", "cpu"), ("triton", "cpu"), ("triton", "cuda"), ("cuda", "cuda")]
    have = [(b, d) for b, d in devs if (d == "cpu" or torch.cuda.is_available())
            and unavailable_reason(b, d, "reparam") is None]
    if len(have) < 2:
        pytest.skip(f"needs two kernel backends with the Philox stream, have {have}")
    mu = torch.randn(300, 231)
    lv = torch.randn(300, 231) * 0.5
    zs = [wae_fast.reparameterize(mu.to(d), lv.to(d), generator=_gen(11), backend=b).cpu()
          for b, d in have]
    for (b, d), z in zip(have[1:], zs[1:]):
        torch.testing.assert_close(z, zs[0], rtol=4e-6, atol=1e-6, msg=f"{b}-{d} vs {have[0]}")
    # 64-bit seeds: the high word of the seed reaches the Philox key, identically everywhere
    from wae_fast import contract
    hi = [contract.reparam(b, mu[:4].to(d), lv[:4].to(d), 5 + 2**40).cpu() for b, d in have]
    assert not torch.equal(hi[0], contract.reparam(have[0][0], mu[:4].to(have[0][1]),
                                                   lv[:4].to(have[0][1]), 5).cpu())
    for z in hi[1:]:
        torch.testing.assert_close(z, hi[0], rtol=4e-6, atol=1e-6)


def test_reparam_opcheck(reparam_backend):
    """Schema, fake and autograd registration of the sampling ops of every backend."""
    from wae_fast import contract
    name, dev = reparam_backend
    mu = torch.randn(4, 5, device=dev, requires_grad=True)
    lv = (torch.randn(4, 5, device=dev) * 0.3).requires_grad_(True)
    torch.library.opcheck(contract.op(f"reparam_fwd_{name}").default, (mu, lv, 123))
    torch.library.opcheck(contract.op(f"reparam_bwd_{name}").default,
                          (torch.randn(4, 5, device=dev), lv.detach(), 123))
