"""WAE training layer: objectives, end-to-end runs, exact resume, checkpoint errors, plots."""
from __future__ import annotations

import math

import pytest
import torch

from wae_fast.train import CheckpointError, ImageData, Trainer, lr_factor, preset
from wae_fast.train.data import load_digits_data
from wae_fast.train.models import build_autoencoder
from wae_fast.train.objectives import recon_cost, sample_prior

PNG_SIG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_digits():
    d = load_digits_data()
    return ImageData("digits", d.train[:400], d.test[:150], d.train_labels[:400], d.test_labels[:150])


def tiny(**kw):
    base = dict(width=64, epochs=2, eval_samples=150, lr_schedule="constant", batch_size=32)
    base.update(kw)
    obj = base.pop("objective", "mmd")
    return preset("digits", obj, **base)


def same_metrics(a, b, tol=1e-6):
    keys = [k for k in a if k != "time_s"]
    assert keys == [k for k in b if k != "time_s"]
    for k in keys:
        assert math.isclose(a[k], b[k], rel_tol=tol, abs_tol=tol), (k, a[k], b[k])


def test_recon_cost_convention():
    x = torch.zeros(4, 1, 2, 2)
    y = torch.ones(4, 1, 2, 2)
    # 0.05 * (sum over 4 pixels of 1) averaged over the batch
    assert recon_cost(x, y) == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "sphere"])
def test_priors(kind):
    z = sample_prior(kind, 4000, 3, 2.0, torch.Generator().manual_seed(0), "cpu")
    assert z.shape == (4000, 3)
    assert float(z.var(0).mean()) == pytest.approx(2.0, rel=0.1)


def test_lr_schedule():
    assert lr_factor("manual", 0, 100) == 1.0 and lr_factor("manual", 30, 100) == 0.5
    assert lr_factor("manual", 50, 100) == pytest.approx(0.1) and lr_factor("manual", 100, 200) == pytest.approx(0.01)
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 9, 10) == pytest.approx(0.01)


def test_presets_and_validation():
    m = preset("mnist")
    assert (m.z_dim, m.lam, m.batch_size, m.lr, (m.beta1, m.beta2)) == (8, 10.0, 100, 1e-3, (0.5, 0.999))
    c = preset("celeba")
    assert (c.dataset, c.z_dim, c.lam, c.lr) == ("folder", 64, 100.0, 5e-4)
    assert preset("celeba", "gan").lr == 3e-4 and preset("mnist", "gan").lam == 1.0
    with pytest.raises(ValueError, match="--z-dim"):
        preset("digits", z_dim=0).validate()
    with pytest.raises(ValueError, match="--objective"):
        preset("digits", "wgan")
    with pytest.raises(ValueError, match="--batch-size"):
        preset("digits", batch_size=1).validate()
    with pytest.raises(ValueError, match="--data-path: required for --dataset mnist"):
        preset("mnist").validate()
    with pytest.raises(ValueError, match="--mmd-prior"):
        preset("digits", mmd_prior="exact").validate()
    with pytest.raises(ValueError, match="--mmd-prior closed_form: needs --objective mmd and --prior gaussian"):
        preset("digits", mmd_prior="closed_form", prior="uniform").validate()
    with pytest.raises(ValueError, match="--mmd-prior in_kernel: needs --objective mmd"):
        preset("digits", "gan", mmd_prior="in_kernel").validate()
    # the default is left out of the resume fingerprint (older checkpoints resume)
    assert "mmd_prior" not in preset("digits").fingerprint()
    assert preset("digits", mmd_prior="closed_form").fingerprint()["mmd_prior"] == "closed_form"


@pytest.mark.parametrize("size,c", [(28, 1), (64, 3)])
def test_conv_nets(size, c):
    enc, dec = build_autoencoder("conv", (c, size, size), 5, True, width=8)
    x = torch.rand(3, c, size, size)
    mu, lv = enc(x)
    assert mu.shape == (3, 5) and lv.shape == (3, 5)
    assert dec(mu).shape == (3, c, size, size)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    with pytest.raises(ValueError, match="28x28 and 64x64"):
        build_autoencoder("conv", (1, 8, 8), 5, False)


def test_logvar_clipping():
    enc, _ = build_autoencoder("mlp", (1, 8, 8), 2, True, width=8, logvar_min=-1.0, logvar_max=0.5)
    with torch.no_grad():
        enc.head.bias.fill_(100.0)
    _, lv = enc(torch.rand(4, 1, 8, 8))
    assert float(lv.detach().max()) == 0.5


def test_tiny_run_lowers_recon_and_mmd(small_digits):
    tr = Trainer(tiny(epochs=3), None, data=small_digits, progress=False)
    hist = tr.fit()
    first, last = hist[0], hist[-1]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert last["test_recon"] < 0.7 * first["test_recon"]
    assert last["train_recon"] < 0.7 * first["train_recon"]
    assert last["mmd_qz"] < 0.5 * first["mmd_qz"]
    assert last["sample_mmd"] < first["sample_mmd"]
    assert "WAE-MMD on digits" in tr.summary()


def test_gaussian_encoder_and_more_prior_samples(small_digits):
    tr = Trainer(tiny(encoder="gaussian", prior_samples=250, kernel="rbf", epochs=1), None,
                 data=small_digits, progress=False)
    last = tr.fit()[-1]
    for k in ("loss", "rec", "dz", "pen", "mmd_qz", "mean_logvar"):
        assert math.isfinite(last[k]), k
    assert last["pen"] > 0


@pytest.mark.parametrize("mode", ["closed_form", "in_kernel"])
def test_mmd_prior_without_sample_tensor(small_digits, mode):
    """--mmd-prior closed_form / in_kernel: WAE-MMD trains against the prior without a prior
    sample tensor in the loop (on CPU in_kernel takes the reference's regenerated blocks)."""
    tr = Trainer(tiny(epochs=3, mmd_prior=mode), None, data=small_digits, progress=False)
    hist = tr.fit()
    first, last = hist[0], hist[-1]
    assert all(math.isfinite(h[k]) for h in hist[1:] for k in ("loss", "rec", "dz"))
    assert last["test_recon"] < 0.7 * first["test_recon"]
    assert last["mmd_qz"] < 0.5 * first["mmd_qz"]


def test_mmd_prior_penalty_is_the_prior_estimator():
    import wae_fast
    from wae_fast.prior import mmd_to_prior
    from wae_fast.train.objectives import mmd_to_prior_loss
    z = torch.randn(40, 3) * 0.8 + 0.3
    cf = mmd_to_prior_loss(z, "imq", 2.0, "unbiased", "closed_form", 40, None)
    assert float(cf) == float(mmd_to_prior(z, wae_fast.IMQ(sigma2=2.0), sigma2=2.0))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = mmd_to_prior_loss(z, "rbf", 1.0, "biased", "in_kernel", 64, g1, backend="cpp")
    b = mmd_to_prior_loss(z, "rbf", 1.0, "biased", "in_kernel", 64, g2, backend="cpp")
    assert float(a) == float(b) and math.isfinite(float(a))


def test_wae_gan_takes_steps(small_digits):
    tr = Trainer(tiny(objective="gan", epochs=1), None, data=small_digits, progress=False)
    before = [p.detach().clone() for p in tr.disc.parameters()]
    enc_before = [p.detach().clone() for p in tr.encoder.parameters()]
    last = tr.fit()[-1]
    assert all(not torch.equal(a, b) for a, b in zip(before, tr.disc.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, tr.encoder.parameters()))
    for k in ("loss", "rec", "dz", "d_loss", "test_recon", "mmd_qz"):
        assert math.isfinite(last[k]), k
    assert tr.opt_d.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("kw", [dict(encoder="gaussian"), dict(objective="gan", encoder="gaussian")],
                         ids=["mmd-gaussian", "gan-gaussian"])
def test_resume_equals_uninterrupted(small_digits, tmp_path, kw):
    cfg = tiny(**kw)
    full = Trainer(cfg, tmp_path / "a", data=small_digits, progress=False).fit()
    part = Trainer(cfg, tmp_path / "b", data=small_digits, progress=False)
    part.fit(stop_after=1)
    part.close()  # unlocks the run directory for the next trainer
    assert part.epoch == 1 and (tmp_path / "b" / "checkpoint.pt").exists()
    torch.manual_seed(999)  # a fresh process would not share the global RNG state either
    resumed = Trainer(cfg, tmp_path / "b", data=small_digits, resume=True, progress=False, log=lambda s: None)
    assert resumed.epoch == 1
    hist = resumed.fit()
    assert len(hist) == len(full) == 3
    for a, b in zip(full, hist):
        same_metrics(a, b)


def test_checkpoint_errors(small_digits, tmp_path):
    cfg = tiny(epochs=1)
    Trainer(cfg, tmp_path, data=small_digits, progress=False).fit()
    ck = tmp_path / "checkpoint.pt"
    good = ck.read_bytes()
    # an existing run is never silently overwritten
    with pytest.raises(CheckpointError, match="already holds checkpoint.pt"):
        Trainer(cfg, tmp_path, data=small_digits, progress=False)
    # a different configuration
    with pytest.raises(CheckpointError, match=r"different configuration \(lam: 10.0 \(checkpoint\) vs 3.0"):
        Trainer(tiny(epochs=1, lam=3.0), tmp_path, data=small_digits, resume=True, progress=False)
    assert ck.read_bytes() == good
    # a corrupt file
    ck.write_bytes(good[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(cfg, tmp_path, data=small_digits, resume=True, progress=False)
    assert ck.read_bytes() == good[:100]
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(cfg, tmp_path / "empty", data=small_digits, resume=True, progress=False)


def test_plots_are_valid_pngs(small_digits, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wae_fast.train.plots import write_plots
    for z_dim in (1, 3):
        tr = Trainer(tiny(epochs=1, z_dim=z_dim), None, data=small_digits, progress=False)
        tr.fit()
        paths = write_plots(tr, tmp_path / f"z{z_dim}")
        names = {p.name for p in paths}
        assert names == {"loss_curves.png", "reconstructions.png", "samples.png", "interpolations.png",
                         "latent_pca.png"}
        for p in paths:
            assert p.read_bytes()[:8] == PNG_SIG
            img = plt.imread(p)
            assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_conv_wae_gan_on_28x28_smoke():
    g = torch.Generator().manual_seed(0)
    data = ImageData("mnist", (torch.rand(64, 1, 28, 28, generator=g) * 255).to(torch.uint8),
                     (torch.rand(16, 1, 28, 28, generator=g) * 255).to(torch.uint8))
    cfg = preset("mnist", "gan", data_path="unused", width=4, epochs=1, batch_size=32, eval_samples=16,
                 encoder="gaussian")
    assert cfg.resolved_arch() == "conv"
    last = Trainer(cfg, None, data=data, progress=False).fit()[-1]
    assert all(math.isfinite(last[k]) for k in ("loss", "d_loss", "test_recon", "mmd_qz", "sample_mmd"))
