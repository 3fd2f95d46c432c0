"""`diffmem audit`: planted copies found at their positions in the per-sample table, the verdict and
exit status as a CI gate, the HTML report decoded by headless Chromium, a memory-mapped training set
giving the in-memory answer, chunked readers equal to the whole-set readers, and bad input as one
line with exit status 2."""

import contextlib
import csv
import io
import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import browser_dom, one_line
from diffmem.auditing.audit import audit
from diffmem.data import ImageSet, load_image_set, save_npz, write_dataset_zip, write_png_folder
from diffmem.data.stream import chunk_rows, open_streamed
from diffmem.metrics.copying import authenticity
from diffmem.metrics.memorization import memorization

PLANTED = {2: 7, 11: 40, 29: 99}  # generated position -> training image copied there


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory):
    """100 training digits (.npy and .zip), 40 generated = unseen digits with 3 planted copies, 60 held out."""
    root = tmp_path_factory.mktemp("audit")
    train = digits.images[:100]
    gen = digits.images[1000:1040].copy()
    for pos, src in PLANTED.items():
        gen[pos] = train[src]
    np.save(root / "train.npy", train)
    write_dataset_zip(root / "train.zip", train)
    save_npz(root / "gen.npz", gen)
    save_npz(root / "held.npz", digits.images[1200:1260])
    np.save(root / "held16.npy", np.zeros((4, 1, 16, 16), np.uint8))
    return root


def _csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def audited(files):
    """One audit through the command line, every criterion samples allow: (exit status, stdout, folder)."""
    from diffmem.cli import run

    folder, stdout = files / "a", io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run(["audit", str(files / "gen.npz"), "--train", str(files / "train.npy"), "--heldout",
                    str(files / "held.npz"), "--features", "pixels", "--out", str(folder), "--no-progress"])
    return code, stdout.getvalue(), folder


def test_planted_copies_are_found_in_the_per_sample_table(audited):
    code, out, folder = audited
    assert code == 0
    assert out.count("\n") == 1 and out.startswith("AUDIT: 3 of 40 generated samples flagged by pixel")
    table = _csv(folder / "per_sample.csv")
    npz = np.load(folder / "per_sample.npz")
    planted = np.array(sorted(PLANTED))
    for crit in ("pixel", "features", "extraction"):
        flagged = np.flatnonzero(npz[f"{crit}_flag"])
        if crit == "extraction":  # its δ is the extraction module's choice: the copies among those flagged
            assert set(planted) <= set(flagged) and (npz["extraction_score"][planted] == 0).all()
        else:
            assert flagged.tolist() == planted.tolist(), crit  # exactly the planted copies
        assert npz[f"{crit}_nn1"][planted].tolist() == [PLANTED[p] for p in planted]
        assert table[f"{crit}_flag"].astype(int).tolist() == npz[f"{crit}_flag"].astype(int).tolist()
    assert (npz["pixel_d1"][planted] == 0).all() and (npz["authenticity_flag"][planted]).all()
    assert (npz["replication_similarity"][planted] > 1 - 1e-6).all()
    # Known answers: pixel features are model-space pixels, so their d1 is the pixel d1; the DCR
    # similarity is the largest cosine between a sample and any training image.
    np.testing.assert_allclose(npz["features_d1"], npz["pixel_d1"], rtol=1e-5, atol=1e-5)
    g = load_image_set(folder.parent / "gen.npz").to_model().reshape(40, -1).astype(np.float64)
    t = np.load(folder.parent / "train.npy").reshape(100, -1) / 127.5 - 1.0
    cos = (g @ t.T) / np.linalg.norm(g, axis=1)[:, None] / np.linalg.norm(t, axis=1)[None]
    np.testing.assert_allclose(npz["replication_similarity"], cos.max(axis=1), atol=1e-5)
    np.testing.assert_array_equal(npz["replication_nn1"], cos.argmax(axis=1))
    summary = json.loads((folder / "audit.json").read_text())
    assert not list(folder.glob(".audit-cache*"))  # the cache of the zip/npz decoding is gone
    assert summary["criteria"]["copying"]["ran"] and summary["criteria"]["copying"]["c_t"] is not None
    assert not summary["criteria"]["membership"]["ran"] and "model" in summary["criteria"]["membership"]["explanation"]
    assert summary["criteria"]["pixel"]["rate"] == pytest.approx(3 / 40)


def test_pixel_criterion_equals_memorization_and_streaming_equals_memory(files, digits, tmp_path):
    train, gen = digits.images[:100], load_image_set(files / "gen.npz").images
    streamed = audit(files / "gen.npz", files / "train.npy", memory_limit=16 * 2**20)
    in_memory = audit(gen, ImageSet(train), memory_limit=2**30)
    direct = memorization(train, gen, bootstrap=0)
    for res in (streamed, in_memory):
        pixel = res.criterion("pixel")
        np.testing.assert_array_equal(pixel.columns["d1"], direct.d1)
        np.testing.assert_array_equal(pixel.columns["d2"], direct.d2)
        np.testing.assert_array_equal(pixel.columns["nn1"], direct.idx1)
        np.testing.assert_array_equal(pixel.flags, direct.memorized)
    alaa = authenticity(train, gen)  # over every training image, in memory
    for res in (streamed, in_memory):
        np.testing.assert_array_equal(res.criterion("authenticity").columns["d_train"], alaa.d_train)
        np.testing.assert_array_equal(res.criterion("authenticity").flags, ~alaa.authentic)
    a, b = streamed.table(), in_memory.table()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_verdict_is_a_ci_gate(files, run_cli, tmp_path):
    base = ["audit", files / "gen.npz", "--train", files / "train.zip"]
    code, out, err = run_cli(base + ["--fail-above", "0.05", "--out", tmp_path / "fail"])
    assert code == 1 and out.startswith("FAIL: 3 of 40") and "> fail-above 0.05" in out, (out, err)
    code, out, err = run_cli(base + ["--fail-above", "0.075", "--json", "--out", tmp_path / "pass"])
    summary = json.loads(out)
    assert code == 0 and summary["passed"] and summary["verdict"].startswith("PASS: 3 of 40")
    assert "<= fail-above 0.075" in summary["verdict"]
    res = audit(files / "gen.npz", files / "train.zip", fail_above=0.05, gate="extraction")
    assert not res.passed and res.summary()["gate"] == "extraction" and res.verdict.startswith("FAIL")
    assert (tmp_path / "fail" / "report" / "index.html").exists()
    code, out, err = run_cli(base + ["--out", tmp_path / "pass"])  # never overwrites a report
    one_line(code, out, err, "--out", "already exist")


def test_rate_is_checked_against_the_threshold_exactly():
    from diffmem.auditing.audit import AuditResult
    from diffmem.auditing.criteria import Criterion

    flags = np.array([True, False, False, False])
    crit = Criterion("pixel", True, "", 0.25, None, flags)
    assert AuditResult([crit], 4, 10, "pixel", 0.25, False).passed  # at the threshold: pass
    assert not AuditResult([crit], 4, 10, "pixel", 0.2499, False).passed
    assert AuditResult([crit], 4, 10, "pixel", None, False).verdict.startswith("AUDIT: 1 of 4")


def test_a_model_is_sampled_saved_and_audited(digits, tmp_path):
    from diffmem.denoisers.optimal import OptimalDenoiser

    train = ImageSet(digits.images[:20])
    res = audit(OptimalDenoiser(train), train, ImageSet(digits.images[500:520]), num=8, out=tmp_path / "m",
                fail_above=0.5)
    samples = load_image_set(tmp_path / "m" / "samples.npz").images
    assert samples.shape == (8, 1, 8, 8) and res.sampled
    assert res.criterion("pixel").rate == 1.0 and not res.passed  # the optimum returns training images
    assert res.criterion("membership").ran or "not installed" in res.criterion("membership").explanation


def test_tiled_extraction_and_secmi_membership_reach_their_criteria(digits, tmp_path):
    """--tiles and --membership-method are passed through: the audit's extraction scores equal the
    library's tiled extraction on the same samples, and membership runs SecMI's t-error."""
    from diffmem.denoisers.optimal import OptimalDenoiser
    from diffmem.metrics.extraction import extraction

    train, held = ImageSet(digits.images[:60]), ImageSet(digits.images[500:520])
    gen = digits.images[1000:1010].copy()
    gen[3] = train.images[5]
    res = audit(gen, train, tiles=2)
    direct = extraction(train, gen, tiles=2)
    assert res.criterion("extraction").summary["tiles"] == 2
    np.testing.assert_allclose(res.table()["extraction_score"], direct.score)
    assert not np.allclose(direct.score, extraction(train, gen).score)  # the tiles change the answer
    res = audit(OptimalDenoiser(train), train, held, num=4, steps=6, membership_method="secmi")
    assert res.criterion("membership").summary["method"] == "secmi"


@pytest.mark.parametrize("form", ["zip", "npz", "folder", "npy-nhwc-int16", "npy-float64"])
def test_chunked_readers_equal_the_whole_set_readers(digits, tmp_path, form):
    imgs, labels = digits.images[:50], digits.labels[:50]
    if form == "zip":
        path = write_dataset_zip(tmp_path / "t.zip", imgs, labels)
    elif form == "npz":
        path = save_npz(tmp_path / "t.npz", imgs, labels)
    elif form == "folder":
        path = write_png_folder(tmp_path / "t", imgs, labels)
    elif form == "npy-nhwc-int16":
        np.save(path := tmp_path / "t.npy", imgs.transpose(0, 2, 3, 1).astype(np.int16))
    else:
        np.save(path := tmp_path / "t.npy", imgs.astype(np.float64) / 127.5 - 1.0)
    limit = 16 * 64 * 4 * 4  # chunks of 16 images: 4 chunks
    assert chunk_rows((1, 8, 8), limit) == 16
    expected = (imgs.astype(np.float64) / 127.5 - 1.0).astype(np.float32) if form == "npy-float64" else imgs
    with open_streamed(path, memory_limit=limit, cache_dir=tmp_path / "cache") as s:
        assert isinstance(s.images, np.memmap) and s.images.dtype == expected.dtype
        np.testing.assert_array_equal(np.asarray(s.images), expected)
        if form in ("zip", "npz", "folder"):
            np.testing.assert_array_equal(s.labels, labels)
        cache = s.cache
    assert cache is None or not cache.exists()


def test_a_plain_npy_is_mapped_without_a_copy(digits, tmp_path):
    np.save(tmp_path / "t.npy", digits.images[:20])
    with open_streamed(tmp_path / "t.npy") as s:
        assert s.cache is None and os.path.samefile(s.images.filename, tmp_path / "t.npy")


def test_the_report_decodes_in_a_browser(audited):
    index = audited[2] / "report" / "index.html"
    page = index.read_text()
    verdict = json.loads((audited[2] / "audit.json").read_text())["verdict"]
    assert "data:image/png;base64," in page and "file:" not in page and verdict in page
    dom = browser_dom(index)
    total, decoded = (int(re.search(rf'data-{k}="(\d+)"', dom).group(1)) for k in ("figures", "figures-decoded"))
    assert total == decoded == page.count("<img") >= 3
    assert "The 20 samples closest to a training image" in dom and "<td>extraction</td>" in dom


class _Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("extractor exploded")


class _Flat(torch.nn.Module):
    def forward(self, x):
        return x.reshape(-1)  # (N·d,): not (N, k)


def test_bad_input_is_one_line_and_exit_2(files, run_cli, tmp_path):
    torch.jit.script(_Boom()).save(str(tmp_path / "boom.pt"))
    torch.jit.script(_Flat()).save(str(tmp_path / "flat.pt"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 8)
    np.save(tmp_path / "float.npy", np.full((4, 1, 8, 8), 1.5))
    np.save(tmp_path / "int.npy", np.full((4, 8, 8), 300, dtype=np.int16))
    base = ["--train", files / "train.npy", "--out", tmp_path / "o"]
    gen = files / "gen.npz"
    cases = [
        ([gen, *base, "--features", tmp_path / "boom.pt"], "--features", "extractor exploded"),
        ([gen, *base, "--features", tmp_path / "flat.pt"], "--features", "(N, k)"),
        ([gen, *base, "--heldout", files / "held16.npy"], "--heldout", "shape (1, 16, 16)"),
        ([tmp_path / "model", *base], "MODEL-or-SAMPLES", "config.json"),
        ([files / "held16.npy", *base], "MODEL-or-SAMPLES", "shape"),
        ([tmp_path / "nothing", *base], "MODEL-or-SAMPLES", "no such"),
        ([gen, *base, "--fail-above", "1.5"], "--fail-above", "<= 1"),
        ([gen, *base, "--gate", "vibes"], "--gate", "unknown criterion"),
        ([gen, *base, "--gate", "copying"], "--gate", "cannot run"),
        ([gen, *base, "--num", "0"], "--num", ">= 1"),
        ([gen, *base, "--memory-limit", "1KiB"], "--memory-limit", "16MiB"),
        ([gen, "--train", files / "missing.npy", "--out", tmp_path / "o"], "--train", "no such"),
        ([gen, "--train", tmp_path / "float.npy", "--out", tmp_path / "o"], "--train", "[-1, 1]"),
        ([gen, "--train", tmp_path / "int.npy", "--out", tmp_path / "o"], "--train", "0..255"),
        ([gen, *base, "--features", "classifier"], "--source", "built-in source"),
        ([gen, *base, "--tiles", "0"], "--tiles", ">= 1"),
        ([gen, *base, "--tiles", "3"], "--tiles", "3 x 3"),
        ([gen, *base, "--membership-method", "vibes"], "--membership-method", "loss or secmi"),
    ]
    for argv, flag, needle in cases:
        code, out, err = run_cli(["audit", *argv])
        one_line(code, out, err, flag, needle)
        assert not (tmp_path / "o").exists(), argv  # nothing left behind


def test_a_diffusers_folder_is_audited_end_to_end(files, run_cli, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "unet")
    code, out, err = run_cli(["audit", tmp_path / "unet", "--train", files / "train.zip", "--heldout",
                              files / "held.npz", "--num", "6", "--steps", "3", "--out", tmp_path / "o", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sampled_from_model"] and summary["n_generated"] == 6
    assert summary["criteria"]["membership"]["ran"], summary["criteria"]["membership"]
    assert 0 <= summary["criteria"]["membership"]["auc"] <= 1
    assert load_image_set(tmp_path / "o" / "samples.npz").images.shape == (6, 1, 8, 8)
