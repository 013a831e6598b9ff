"""``torch.nn`` module wrappers."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .functional import mmd
from .kernel_specs import IMQ, KernelSpec, resolve_kernel
from .validation import ESTIMATORS


class MMDLoss(nn.Module):
    """Squared MMD between codes and prior samples as an ``nn.Module`` (see :func:`wae_fast.mmd`).

    Example::

        loss_fn = wae_fast.MMDLoss()                 # 7-scale IMQ, unbiased
        z = encoder(x); p = torch.randn_like(z)
        loss = recon + lam * loss_fn(z, p)
    """

    def __init__(self, kernel: Union[KernelSpec, str, None] = IMQ(), *, estimator: str = "unbiased",
                 backend: str = "auto", check_finite: bool = False, precision: str = "ieee") -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
        self.kernel = resolve_kernel(kernel)
        self.estimator = estimator
        self.backend = backend
        self.check_finite = check_finite
        self.precision = precision

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_weights: Optional[torch.Tensor] = None,
                y_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:func:`wae_fast.mmd` of x (N, d) and y (M, d), optionally weighted ((N,), (M,))."""
        return mmd(x, y, self.kernel, estimator=self.estimator, backend=self.backend,
                   check_finite=self.check_finite, precision=self.precision,
                   x_weights=x_weights, y_weights=y_weights)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, estimator={self.estimator!r}, backend={self.backend!r}"
