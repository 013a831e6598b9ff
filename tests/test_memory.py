"""Memory stays O((N+M) d): forward+backward at N = M = 20000 in a fresh process.

The dense Gram matrices would need 1.6 GB each in fp32; the budget is 200 MB of peak-RSS growth.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from wae_fast.dispatch import unavailable_reason

SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch, wae_fast
    torch.manual_seed(0)
    x = torch.randn(20000, 16, requires_grad=True)
    y = torch.randn(20000, 16)
    wae_fast.mmd(x[:64], y[:64], backend=sys.argv[1]).backward()  # warm up lazy inits
    x.grad = None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    v = wae_fast.mmd(x, y, backend=sys.argv[1])
    v.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (after - before) / 1024, "value": v.item(),
                      "grad_finite": bool(torch.isfinite(x.grad).all())}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_peak_rss_growth_under_200mb(backend):
    reason = unavailable_reason(backend, "cpu")
    if reason:
        pytest.skip(reason)
    out = subprocess.run([sys.executable, "-c", SCRIPT, backend], capture_output=True, text=True,
                         timeout=600, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["grad_finite"]
    assert abs(res["value"]) < 1e-2  # same distribution: MMD^2 near 0
    assert res["growth_mb"] < 200, res
