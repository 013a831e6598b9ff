"""One routing: the import graph has no cycle and no private imports across modules, dispatch
is the only backend table and chooses by declared capabilities, asking never compiles, and the
reference's prior samples are the kernel backends' Philox samples."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import wae_fast
from wae_fast import contract, dispatch, philox
from wae_fast.prior import mmd_to_prior, prior_samples

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"wae_fast": ROOT / "wae_fast", "wae_fast.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg] + parts)] = path
    return mods


def _imports(name: str, path: Path, known) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import statement, at any depth (imports
    inside functions count: a lazy import is still an edge)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                mod = ".".join(anchor + ([mod] if mod else []))
            # "from pkg import sub" imports the submodule pkg.sub (an edge to it, not to pkg);
            # compiled extensions (_C, _C_cuda) are not Python modules of the graph
            names = [a.name for a in node.names if f"{mod}.{a.name}" not in known
                     and not a.name.startswith("_C")]
            out += [(f"{mod}.{a.name}", []) for a in node.names if f"{mod}.{a.name}" in known]
            if names:
                out.append((mod, names))
    return out


def _graph():
    mods = _modules()
    graph = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        for target, names in _imports(name, path, mods):
            if target in mods and target != name:
                graph[name].add(target)
                private += [f"{name} imports {n} from {target}" for n in names if n.startswith("_")]
    return graph, private


def test_import_graph_has_no_cycle():
    graph, _ = _graph()
    assert "wae_fast.dispatch" in graph and "wae_fast.kernels.backend" in graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_imports_across_modules():
    _, private = _graph()
    assert private == []


def test_dispatch_is_the_only_backend_table():
    for path in _modules().values():
        src = path.read_text()
        assert "PRIOR_BACKENDS" not in src, path
    assert wae_fast.BACKENDS == tuple(dispatch.BACKEND_TABLE)
    for name, entry in dispatch.BACKEND_TABLE.items():
        assert set(entry.caps.families) <= set(contract.FAMILIES), name


def _xy(d=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, d, generator=g), torch.randn(15, d, generator=g)


def test_auto_picks_a_backend_that_can_and_explicit_raises_naming_the_limit(monkeypatch):
    x, y = _xy()
    many = wae_fast.IMQ(scales=tuple(float(s) for s in range(1, 20)))  # 19 scales
    req = dispatch.Request("mmd", 0, 19, torch.float32, "unbiased", "ieee")
    assert dispatch.resolve_backend("auto", "cpu", request=req) == "reference"
    want = wae_fast.mmd(x, y, many, backend="reference")
    assert torch.equal(wae_fast.mmd(x, y, many), want)

    def no_work(name):
        raise AssertionError(f"op {name} called after a capability error")

    monkeypatch.setattr(contract, "op", no_work)
    for backend in ("cpp", "cuda"):
        with pytest.raises(ValueError, match="at most 16 kernel scales, the kernel has 19"):
            wae_fast.mmd(x, y, many, backend=backend)
    with pytest.raises(ValueError, match="estimator='closed_form'"):
        mmd_to_prior(x, backend="cpp")
    with pytest.raises(ValueError, match="estimator='linear'"):
        mmd_to_prior(x, estimator="linear", backend="cuda")


def test_asking_availability_never_compiles(monkeypatch):
    from wae_fast import build

    def boom(*a, **k):
        raise AssertionError("availability started a compiler")

    monkeypatch.setattr(build, "ensure", boom)
    monkeypatch.setattr(build, "_compile", boom)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for dev in ("cpu", "cuda"):
        for family in ("mmd", "prior", "reparam"):
            wae_fast.available_backends(dev, family)
            wae_fast.available_backends(dev, family, detail=True)
            dispatch.unavailable_reason("cuda", dev, family)
        wae_fast.which_backend(dev)


def test_jit_build_runs_on_the_first_real_call_only(monkeypatch):
    """A compiled backend's first-use build is its prepare() hook: run once, by a real call's
    resolution; a failed build makes "auto" move on and a named request raise with the reason."""
    from wae_fast import build

    calls = []

    def fake_ensure(backend):
        calls.append(backend)
        raise build.BuildError("wae_fast: compiling the cuda backend failed: boom")

    monkeypatch.setattr(build, "ensure", fake_ensure)
    monkeypatch.setattr(build, "unavailable_reason", lambda backend: None)  # buildable here
    monkeypatch.setattr(dispatch, "_prepared", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert wae_fast.which_backend("cuda") == "cuda" and calls == []  # asking: no build
    assert dispatch.resolve_backend("auto", "cuda", prepare=True) != "cuda"
    assert calls == ["cuda"]
    with pytest.raises(RuntimeError, match="boom"):
        dispatch.resolve_backend("cuda", "cuda", prepare=True)
    assert calls == ["cuda"]  # once


def test_draw_seed_range():
    g = torch.Generator().manual_seed(1)
    seeds = [philox.draw_seed(g) for _ in range(64)]
    assert all(0 <= s < 2**62 for s in seeds) and max(seeds) >= 2**40
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert philox.draw_seed(g1) == philox.draw_seed(g2)
    with pytest.raises(ValueError, match="seed must be an int in"):
        philox.check_seed(2**63)


_REASON = dispatch.unavailable_reason("cpp", "cpu", "prior")


@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
@pytest.mark.parametrize("seed", [0, 5, 2**33 + 1, 2**62 - 1, 2**63 - 1])
def test_reference_philox_is_the_kernels_stream(seed):
    """The torch Philox against the C++ one (tile_math.h): bit-identical except where the fp32
    log/cos of torch and libm round differently, and then within 3 ulps."""
    from wae_fast import _C

    off = torch.cat([torch.arange(20000), torch.tensor([2**32 - 1, 2**32, 2**40 + 3])])
    a, b = philox.randn(seed, off), _C.philox_randn_host(seed, off)
    ulp = torch.finfo(torch.float32).eps * b.abs().clamp(min=2.0**-10)
    assert (a == b).float().mean() > 0.95
    assert ((a - b).abs() <= 3 * ulp).all()


@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_prior_op_agrees_with_cpp(dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(70, 5, generator=g, dtype=torch.float64) * 1.2 + 0.3).to(dtype)
    kw = dict(estimator="sampled", num_samples=1100, seed=2**45 + 9, sigma2=1.3)
    vals, grads = [], []
    for backend in ("reference", "cpp"):
        xr = x.clone().requires_grad_(True)
        v = mmd_to_prior(xr, backend=backend, **kw)
        v.backward()
        vals.append(v.item())
        grads.append(xr.grad.double())
    y = prior_samples(1100, 5, seed=kw["seed"], sigma2=1.3, dtype=dtype)
    t = wae_fast.mmd_terms(x, y, backend="reference")
    scale = float(t[0] + t[1] + 2 * t[2])
    # the samples differ by an ulp of fp32 on a few percent of the draws
    tol = 1e-6 if dtype == torch.float32 else 1e-8
    assert abs(vals[0] - vals[1]) <= tol * scale
    assert (grads[0] - grads[1]).norm() <= 10 * tol * grads[1].norm()
