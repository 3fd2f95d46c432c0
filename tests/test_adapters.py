"""Adapters: a diffusers UNet2DModel folder and a TorchScript file are denoisers equal to a direct call
of the underlying model on the mapped inputs; bad model files are refused in one line, exit 2."""

import json
import math
import re

import numpy as np
import pytest
import torch

from diffmem.denoisers.adapters import (
    DiffusersDenoiser, load_diffusers, load_torchscript, save_torchscript, timestep_for_sigma,
)
from diffmem.errors import InputError
from diffmem.runs import load_denoiser
from diffmem.sampling import sample
from tests.conftest import one_line

diffusers = pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")

# DDPMScheduler's default "linear" betas, recomputed here in float64: ᾱ_t = Π(1 - β_s),
# σ_t = √((1-ᾱ_t)/ᾱ_t). diffusers keeps ᾱ in float32, which moves 1 - ᾱ near t = 0 by up to 1e-4.
BETAS = np.linspace(1e-4, 0.02, 1000)
ALPHA_BAR = np.cumprod(1 - BETAS)
SIGMA_T = np.sqrt((1 - ALPHA_BAR) / ALPHA_BAR)


def _unet(num_classes=None, seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, num_class_embeds=num_classes,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))


def _save(folder, prediction_type, num_classes=None):
    unet = _unet(num_classes)
    unet.save_pretrained(folder)
    diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type).save_pretrained(folder)
    return unet.eval()


@pytest.fixture(scope="module")
def eps_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eps")
    return folder, _save(folder, "epsilon")


def _direct(unet, x, t):
    with torch.no_grad():
        return unet(x, torch.as_tensor(t, dtype=torch.float32)).sample


def test_sigma_table_and_timesteps_at_both_ends(eps_folder):
    D = load_diffusers(eps_folder[0])
    np.testing.assert_allclose(D.table, SIGMA_T, rtol=2e-4)
    assert (D.sigma_min, D.sigma_max) == (D.table[0], D.table[-1])
    k = np.array([0, 1, 500, 998])
    between = np.sqrt(SIGMA_T[k] * SIGMA_T[k + 1])  # the geometric mean: halfway in ln σ
    np.testing.assert_allclose(timestep_for_sigma(between, SIGMA_T, "interpolate"), k + 0.5, atol=1e-9)
    np.testing.assert_array_equal(timestep_for_sigma(between, SIGMA_T, "nearest"), k)  # nearer the lower σ
    for mode in ("interpolate", "nearest"):
        ends = timestep_for_sigma([1e-6, SIGMA_T[0], SIGMA_T[-1], 1e6], SIGMA_T, mode)
        np.testing.assert_allclose(ends, [0, 0, 999, 999], atol=1e-9)


@pytest.mark.parametrize("timestep", ["interpolate", "nearest"])
def test_epsilon_adapter_equals_the_unet_on_mapped_inputs(eps_folder, timestep):
    folder, unet = eps_folder
    D = load_diffusers(folder, timestep=timestep)
    assert (D.shape, D.num_classes, D.prediction_type) == ((1, 8, 8), 0, "epsilon")
    k, table = np.array([3, 400, 998]), D.table
    sigma = table[k] if timestep == "nearest" else np.sqrt(table[k] * table[k + 1])
    t = k if timestep == "nearest" else k + 0.5
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = torch.tensor(sigma).reshape(-1, 1, 1, 1)
    a = 1 / (1 + s**2)  # ᾱ at σ
    eps = _direct(unet, (x * a.sqrt()).float(), t).double()
    torch.testing.assert_close(D(x, torch.tensor(sigma)), x - s * eps, rtol=1e-5, atol=1e-5)


def test_v_prediction_adapter_converts_v_to_epsilon(tmp_path):
    unet = _save(tmp_path, "v_prediction")
    D = load_diffusers(tmp_path)
    k = np.array([0, 250, 999])
    sigma = torch.tensor(D.table[k]).reshape(-1, 1, 1, 1)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = torch.tensor(diffusers.DDPMScheduler().alphas_cumprod.double().numpy()[k]).reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x  # at a table entry, ᾱ_k = 1/(1 + σ_k²)
    v = _direct(unet, x_t.float(), k).double()
    eps = (1 - a).sqrt() * x_t + a.sqrt() * v  # ε̂ from v̂, the DDPM way; then D = x - σ·ε̂
    torch.testing.assert_close(D(x, sigma.flatten()), x - sigma * eps, rtol=1e-5, atol=1e-5)


def test_sample_prediction_is_the_output_itself(tmp_path):
    unet = _save(tmp_path, "sample")
    D = load_diffusers(tmp_path, timestep="nearest")
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor(D.table[[10, 700]])
    x_t = x / (1 + sigma.reshape(-1, 1, 1, 1).float() ** 2).sqrt()
    torch.testing.assert_close(D(x, sigma), _direct(unet, x_t, [10, 700]), rtol=1e-5, atol=1e-5)


def test_conditional_pipeline_folder_uses_labels_and_samples(tmp_path):
    # what DDPMPipeline.save_pretrained writes: model_index.json, unet/, scheduler/
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}))
    _unet(num_classes=3).save_pretrained(tmp_path / "pipe" / "unet")
    diffusers.DDPMScheduler(prediction_type="epsilon").save_pretrained(tmp_path / "pipe" / "scheduler")
    D = load_denoiser(tmp_path / "pipe")
    assert isinstance(D, DiffusersDenoiser) and D.num_classes == 3
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 1.0)
    assert not torch.allclose(D(x, sigma, torch.tensor([0, 0])), D(x, sigma, torch.tensor([2, 2])))
    images = sample(D, 4, labels=[0, 1, 2, 0], steps=3, seed=5)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


def test_sample_cli_takes_a_diffusers_folder(eps_folder, tmp_path, run_cli):
    code, out, err = run_cli(["sample", "--network", eps_folder[0], "--num", "4", "--steps", "3",
                              "--out", tmp_path / "g.npz"])
    assert code == 0, err
    assert np.load(tmp_path / "g.npz")["images"].shape == (4, 1, 8, 8)
    assert json.loads(out)["network"] == str(eps_folder[0])


class _Net(torch.nn.Module):
    def forward(self, x: torch.Tensor, sigma: torch.Tensor):
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


class _FlatNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, sigma: torch.Tensor):
        return x.flatten(1)


class _CondNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.shape = [1, 4, 4]
        self.num_classes = 2

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None):
        shift = torch.zeros_like(sigma) if labels is None else labels.to(x.dtype)
        return x * 0.5 + (sigma + shift).reshape(-1, 1, 1, 1)


def test_torchscript_adapter_equals_the_module(tmp_path):
    path = save_torchscript(_Net(), tmp_path / "d.pt", shape=(1, 4, 4), sigma_min=0.01, sigma_max=50)
    D = load_denoiser(path)
    assert (D.shape, D.num_classes, D.sigma_min, D.sigma_max) == ((1, 4, 4), 0, 0.01, 50.0)
    x, sigma = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0.1, 1.0, 7.0])
    torch.testing.assert_close(D(x, sigma), x / (1 + sigma.double().reshape(-1, 1, 1, 1) ** 2), rtol=1e-6, atol=1e-6)
    # Metadata from module attributes when there is no diffmem.json; labels reach a 3-argument forward.
    torch.jit.script(_CondNet()).save(str(tmp_path / "c.pt"))
    C = load_torchscript(tmp_path / "c.pt")
    assert (C.shape, C.num_classes, C.sigma_max) == ((1, 4, 4), 2, math.inf)
    y = C(x.float(), sigma, torch.tensor([0, 1, 1]))
    torch.testing.assert_close(y, x.float() * 0.5 + (sigma + torch.tensor([0., 1., 1.])).reshape(-1, 1, 1, 1))
    assert sample(C, 2, labels=[0, 1], steps=2).shape == (2, 1, 4, 4)


def _bad_models(root):
    """(path, needle in the error) for each kind of bad model."""
    (root / "empty").mkdir()
    (root / "other").mkdir()
    (root / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (root / "nosched").mkdir()
    _unet().save_pretrained(root / "nosched")
    (root / "pickled").mkdir()
    _unet().save_pretrained(root / "pickled", safe_serialization=False)
    diffusers.DDPMScheduler().save_pretrained(root / "pickled")
    (root / "text.pt").write_text("not a model")
    torch.jit.script(_Net()).save(str(root / "noshape.pt"))
    save_torchscript(torch.nn.Flatten(), root / "onearg.pt", shape=(1, 4, 4))
    save_torchscript(_FlatNet(), root / "flat.pt", shape=(1, 4, 4))
    return [(root / "missing", "no such"), (root / "empty", "without config.json"),
            (root / "other", "only UNet2DModel"), (root / "nosched", "scheduler_config.json"),
            (root / "pickled", "allow_pickle"), (root / "text.pt", "not a TorchScript"),
            (root / "noshape.pt", "shape"), (root / "onearg.pt", "fails on a test input"),
            (root / "flat.pt", "returns (3, 16)")]


def test_bad_models_are_refused_in_one_line(tmp_path, run_cli):
    for path, needle in _bad_models(tmp_path):
        with pytest.raises(InputError, match=re.escape(needle)) as info:
            load_denoiser(path)
        assert info.value.param == "model"
        one_line(*run_cli(["sample", "--network", path, "--num", "2", "--out", tmp_path / "g.npz"]),
                 "--network", needle)
    assert load_denoiser(tmp_path / "pickled", allow_pickle=True).shape == (1, 8, 8)


def test_load_denoiser_opens_a_diffmem_run_folder_and_snapshot(tmp_path, run_cli):
    from diffmem.runs import load_run

    assert run_cli(["data", "--source", "digits", "--size", "10", "--labels", "none", "--out", tmp_path / "d.zip"])[0] == 0
    code, _, err = run_cli(["train", "--data", tmp_path / "d.zip", "--out", tmp_path / "run", "--preset", "tiny",
                            "--channels", "16", "--steps", "2", "--batch", "5", "--device", "cpu", "--no-progress"])
    assert code == 0, err
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 0.7)
    expected = load_run(tmp_path / "run").denoiser(x, sigma)
    snapshot = load_run(tmp_path / "run").snapshot
    for path in (tmp_path / "run", snapshot):
        torch.testing.assert_close(load_denoiser(path)(x, sigma), expected, rtol=0, atol=0)


def test_table_ends_with_infinite_or_zero_sigma_keep_their_timesteps(eps_folder):
    """ᾱ = 1 (σ = 0) and a zero-SNR ᾱ = 0 (σ = ∞) are dropped; the others keep their own t."""
    unet = eps_folder[1]
    D = DiffusersDenoiser(unet, np.array([1.0, 0.9, 0.5, 0.1, 0.0]), "epsilon", timestep="nearest")
    assert (D.sigma_min, D.sigma_max) == pytest.approx((np.sqrt(0.1 / 0.9), 3.0))
    x, sigma = torch.randn(1, 1, 8, 8), torch.tensor([1.0])  # σ = 1 ⇔ ᾱ = 0.5, t = 2
    torch.testing.assert_close(D(x, sigma), x - _direct(unet, x / np.sqrt(2), [2]), rtol=1e-5, atol=1e-5)
