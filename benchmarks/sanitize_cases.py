"""Small-shape CUDA cases for compute-sanitizer (memcheck, racecheck): every GPU backend, awkward
shapes (not multiples of any tile), both estimators and kernels, fwd+bwd, bf16, the tensor-core
precisions ("tf32x3", "tf32"), MMD to the prior with in-kernel samples, reparameterize.
Each result is compared with the reference backend on the same device (errors judged against the
scale mean(Kxx) + mean(Kyy) + 2 mean(Kxy), DESIGN.md 5b). Exit status 1 when a case fails.

    python benchmarks/sanitize_cases.py            # on CUDA (CPU when no GPU: dry run)
    compute-sanitizer --tool memcheck python benchmarks/sanitize_cases.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import wae_fast  # noqa: E402
from wae_fast import IMQ, RBF  # noqa: E402

SHAPES = [(37, 53, 3), (64, 64, 16), (130, 70, 64), (5, 300, 257)]


def prior_cases(backend: str, dev: str, g: torch.Generator) -> int:
    """mmd_to_prior with the samples generated in the kernels vs the reference MMD on the same
    samples materialised (Triton's materialise_prior: the stream every backend draws)."""
    from wae_fast.kernels.prior import materialise_prior
    from wae_fast.prior import mmd_to_prior
    fails = 0
    for (n, m, d) in ((37, 53, 3), (130, 70, 64)):
        x = (torch.randn(n, d, generator=g) + 0.2).to(dev).requires_grad_(True)
        tag = f"{backend} prior N={n} M={m} d={d}"
        try:
            out = mmd_to_prior(x, estimator="sampled", num_samples=m, seed=2**40 + 7, backend=backend)
            out.backward()
            y = materialise_prior(m, d, 2**40 + 7, 1.0, torch.float32, dev)
            xr = x.detach().requires_grad_(True)
            terms = wae_fast.mmd_terms(xr, y, IMQ(), backend="reference")
            ref = terms[0] + terms[1] - 2 * terms[2]
            ref.backward()
            scale = float((terms[0] + terms[1] + 2 * terms[2]).detach())
            err = abs(float(out) - float(ref)) / scale
            gerr = float((x.grad - xr.grad).norm() / (xr.grad.norm() + 1e-30))
            ok = err < 1e-4 and gerr < 1e-3
            fails += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {tag}: value err/scale {err:.2e}, grad rel err {gerr:.2e}")
        except Exception as exc:  # report, keep going
            fails += 1
            print(f"FAIL {tag}: {type(exc).__name__}: {exc}")
    return fails


def kmm_cases(backend: str, dev: str, g: torch.Generator) -> int:
    """kernel_matmul K(x, y) @ v forward and backward (x, y, v) vs the reference backend."""
    from wae_fast.kernel_matmul import kernel_matmul
    fails = 0
    for (n, m, d, p) in ((37, 53, 3, 1), (130, 70, 64, 5), (5, 300, 257, 17)):
        for spec in (IMQ(), RBF(bandwidth=(0.5, 2.0))):
            tag = f"{backend} kernel_matmul N={n} M={m} d={d} P={p} {type(spec).__name__}"
            try:
                ins = [torch.randn(*s, generator=g).to(dev).requires_grad_(True) for s in ((n, d), (m, d), (m, p))]
                out = kernel_matmul(*ins, spec, backend=backend)
                w = torch.randn(n, p, generator=g).to(dev)
                grads = torch.autograd.grad((out * w).sum(), ins)
                refs = [t.detach().double().requires_grad_(True) for t in ins]
                ref = kernel_matmul(*refs, spec, backend="reference")
                rgrads = torch.autograd.grad((ref * w.double()).sum(), refs)
                err = float((out.double() - ref).norm() / ref.norm())
                gerr = max(float((a.double() - b).norm() / (b.norm() + 1e-30)) for a, b in zip(grads, rgrads))
                ok = err < 1e-4 and gerr < 1e-3
                fails += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {tag}: rel err {err:.2e}, grad rel err {gerr:.2e}")
            except Exception as exc:  # report, keep going
                fails += 1
                print(f"FAIL {tag}: {type(exc).__name__}: {exc}")
    return fails


def main() -> int:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    av = wae_fast.available_backends(dev)
    backends = [b for b in ("triton", "cuda") if av[b] is None]
    only = os.environ.get("WAE_FAST_SANITIZE_BACKENDS")  # e.g. "cuda": skip Triton's JIT under the sanitizer
    if only:
        backends = [b for b in backends if b in only.split(",")]
    for b in ("triton", "cuda"):
        if av[b] is not None:
            print(f"skip backend {b} on {dev}: {av[b]}")
    if dev == "cpu":
        print("no GPU found: running the cases on CPU with the reference backend only (dry run)")
        backends = ["reference"]
    fails = 0
    g = torch.Generator().manual_seed(0)
    for backend in backends:
        for (n, m, d) in SHAPES:
            for spec, est in ((IMQ(), "unbiased"), (RBF(), "biased")):
                for dtype, prec in ((torch.float32, "ieee"), (torch.float32, "tf32x3"),
                                    (torch.float32, "tf32"), (torch.bfloat16, "ieee")):
                    x = (torch.randn(n, d, generator=g) + 0.2).to(dev, dtype).requires_grad_(True)
                    y = torch.randn(m, d, generator=g).to(dev, dtype)
                    tag = f"{backend} N={n} M={m} d={d} {type(spec).__name__} {est} {str(dtype)[6:]} {prec}"
                    try:
                        out = wae_fast.mmd(x, y, spec, estimator=est, backend=backend, precision=prec)
                        out.backward()
                        gx = x.grad.detach().float().clone()
                        x.grad = None
                        xr = x.detach().float().requires_grad_(True)
                        terms = wae_fast.mmd_terms(xr, y.float(), spec, estimator=est, backend="reference")
                        ref = terms[0] + terms[1] - 2 * terms[2]
                        ref.backward()
                        scale = float(terms[0] + terms[1] + 2 * terms[2])
                        # bf16 inputs and plain tf32 dot products (10-bit mantissa) are loose
                        loose = dtype == torch.bfloat16 or prec == "tf32"
                        tol = 3e-2 if loose else 1e-4
                        err = abs(float(out) - float(ref)) / scale
                        gerr = float((gx - xr.grad.float()).norm() / (xr.grad.norm() + 1e-30))
                        ok = err < tol and gerr < (5e-2 if loose else 1e-3)
                        fails += not ok
                        print(f"{'ok  ' if ok else 'FAIL'} {tag}: value err/scale {err:.2e}, grad rel err {gerr:.2e}")
                    except Exception as exc:  # report, keep going
                        fails += 1
                        print(f"FAIL {tag}: {type(exc).__name__}: {exc}")
        if backend != "reference":
            fails += kmm_cases(backend, dev, g)
            fails += prior_cases(backend, dev, g)
        try:
            mu = torch.randn(33, 17, generator=g).to(dev).requires_grad_(True)
            lv = (torch.randn(33, 17, generator=g) * 0.3).to(dev).requires_grad_(True)
            z = wae_fast.reparameterize(mu, lv, generator=torch.Generator(dev).manual_seed(3), backend=backend)
            z.backward(torch.ones_like(z))
            ok = bool(torch.isfinite(z).all()) and bool(torch.allclose(mu.grad, torch.ones_like(mu)))
            fails += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {backend} reparameterize 33x17 fwd+bwd")
        except Exception as exc:
            fails += 1
            print(f"FAIL {backend} reparameterize: {type(exc).__name__}: {exc}")
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize cases: {fails} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
