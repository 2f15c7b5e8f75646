"""The denoising task: each piece against an independent reference (a plain loop, scikit-image,
forward hooks counting multiply-adds, a DnCNN written out as nn.Sequential), and bad inputs that
exit 2 before anything is written."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from stopwise.cli import main
from stopwise.contract import Job, JobContext, PlannedJob, RunDir
from stopwise.experiments import get_experiment, plan_jobs, resolve_config
from stopwise.inference import ScoreThreshold, hazard_trajectory, run_adaptive
from stopwise.policies import create_policy
from stopwise.tasks.denoising.config import DenoisingConfig
from stopwise.tasks.denoising.data import (
    CATALOGUE,
    center_crop,
    folder_files,
    from_png_base64,
    load_splits,
    noisy_set,
    png_base64,
    read_image,
    sample_patches,
    tiles,
)
from stopwise.tasks.denoising.experiment import (
    budget_oracle_score,
    grid_item,
    kept_exits,
    oracle_under_budget,
    validation_set,
)
from stopwise.tasks.denoising.experiment import jobs as denoising_jobs
from stopwise.tasks.denoising.methods import (
    PolicyData,
    ValidationSchedule,
    bm3d_denoise,
    gain_regression,
    near_best_exit,
    nlm_denoise,
    policy_data,
    validation_psnr,
)
from stopwise.tasks.denoising.metrics import by_sigma, estimate, exit_table, psnr, ssim
from stopwise.tasks.denoising.models import (
    DnCNN,
    ImagePolicy,
    TapConv2d,
    inference_copy,
    noise_losses,
)


def _reference_dncnn(model: DnCNN) -> nn.Sequential:
    """The DnCNN layers written out in order with the model's own weights (official layout)."""
    layers = [model.trunk[0][0], nn.ReLU()]
    for block in model.trunk[1:]:
        layers += [block[0], block[1], nn.ReLU()]
    layers.append(model.heads[str(model.max_steps - 1)])
    return nn.Sequential(*layers)


def _trained_looking(model: DnCNN) -> DnCNN:
    """Give BN non-trivial running statistics so eval mode is a real test."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_dncnn_full_depth_is_the_official_layer_stack():
    torch.manual_seed(0)
    model = _trained_looking(DnCNN(depth=5, width=6))
    x = torch.rand(3, 1, 12, 10)
    torch.testing.assert_close(model(x), _reference_dncnn(model)(x))
    assert model.max_steps == 4 and sorted(model.heads) == ["3"]


def test_linear_exit_heads_start_as_the_final_conv_on_each_module():
    torch.manual_seed(0)
    model = _trained_looking(DnCNN(depth=5, width=6)).add_exit_heads("linear").eval()
    x = torch.rand(2, 1, 9, 9)
    final = model.heads["3"]
    h = x
    state = model.start(x)
    for t in range(model.max_steps):
        h = model.trunk[t](h)
        state = model.advance(state, t)
        torch.testing.assert_close(model.predict(state, t), final(h))
    conv = DnCNN(depth=5, width=6).add_exit_heads("conv")
    assert isinstance(conv.heads["0"], nn.Sequential) and len(conv.heads) == 4


def _count_conv_macs(module: nn.Module, x: torch.Tensor, pixels: int) -> float:
    """Multiply-adds per input pixel of every Conv2d, counted with forward hooks."""
    total = []

    def hook(m, inputs, output):
        k = m.kernel_size[0] * m.kernel_size[1]
        total.append(output.numel() // output.shape[0] * k * m.in_channels // m.groups)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return sum(total) / pixels


def test_costs_match_multiply_adds_counted_by_hooks():
    torch.manual_seed(0)
    model = DnCNN(depth=6, width=8).add_exit_heads("conv").eval()
    x = torch.rand(1, 1, 16, 16)
    pixels = 16 * 16
    full = _count_conv_macs(_reference_dncnn(model), x, pixels)
    assert model.fixed_depth_macs()[-1].item() == pytest.approx(full)
    # Fixed depth t: modules 0..t and head t.
    for t in range(model.max_steps):
        state = model.start(x)
        hooks_total = 0.0
        h = x
        for k in range(t + 1):
            hooks_total += _count_conv_macs(model.trunk[k], h, pixels)
            state = model.advance(state, k)
            h = state["h"]
        hooks_total += _count_conv_macs(model.heads[str(t)], h, pixels)
        assert model.fixed_depth_macs()[t].item() == pytest.approx(hooks_total)
    policy = ImagePolicy(width=5, max_steps=model.max_steps)
    assert policy.macs() == pytest.approx(
        _count_conv_macs(policy.net, torch.rand(1, 3, 16, 16), pixels)
    )
    # Adaptive cost: a plain loop over exits.
    valid = torch.tensor([False, True, True, False, True])
    costs = model.adaptive_macs(valid, policy.macs())
    modules = model.module_macs()
    for t in range(model.max_steps):
        expected = float(modules[: t + 1].sum())
        for k in range(t + 1):
            if valid[k]:
                expected += model.head_macs(k) + (policy.macs() if k < 4 else 0.0)
        assert costs[t].item() == pytest.approx(expected)


def test_noise_losses_and_psnr_against_plain_references():
    torch.manual_seed(0)
    predicted = torch.rand(3, 4, 1, 5, 6)
    noise = torch.rand(3, 1, 5, 6)
    losses = noise_losses(predicted, noise)
    for b in range(3):
        for t in range(4):
            plain = sum(
                float(predicted[b, t, 0, i, j] - noise[b, 0, i, j]) ** 2
                for i in range(5)
                for j in range(6)
            )
            assert losses[b, t].item() == pytest.approx(plain, rel=1e-5)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    clean = torch.rand(2, 1, 20, 20)
    estimate = clean + 0.2 * torch.randn(2, 1, 20, 20)  # leaves [0, 1]: PSNR clamps it
    ours = psnr(estimate, clean)
    theirs = [
        peak_signal_noise_ratio(
            c[0].double().numpy(), e[0].double().clamp(0, 1).numpy(), data_range=1
        )
        for e, c in zip(estimate, clean, strict=True)
    ]
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5)
    s = ssim(estimate, clean)
    expected = structural_similarity(
        estimate[0, 0].double().clamp(0, 1).numpy(), clean[0, 0].double().numpy(), data_range=1
    )
    assert s[0].item() == pytest.approx(expected, rel=1e-5)


def test_the_estimate_is_the_noisy_image_less_the_predicted_noise_clamped():
    noisy = torch.tensor([0.75, 0.25, 0.875, 1.5, -0.5])
    predicted = torch.tensor([0.25, 0.5, -0.25, 0.25, -0.75])
    assert estimate(noisy, predicted).tolist() == [0.5, 0.0, 1.0, 1.0, 0.25]


def test_by_sigma_means_each_noise_levels_items_by_hand():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    sigma = torch.tensor([15.0, 25.0, 15.0, 50.0, 25.0], dtype=torch.float64)
    means = by_sigma(values, sigma, [15, 25, 35, 50])
    assert means[:2] == [2.0, 3.5] and math.isnan(means[2]) and means[3] == 4.0


def _camera_crop(side: int = 64) -> torch.Tensor:
    from skimage import data as skdata

    image = torch.from_numpy(skdata.camera()).float() / 255.0
    return center_crop(image, side)


def test_bm3d_and_nlm_are_the_packages_called_with_the_noise_level_in_0_1_units():
    """σ is given on the 0–255 scale; the packages take it on [0, 1]: σ/255 (and NLM's
    h = h_factor · σ/255, 7×7 patches, distance 11, fast mode), each beating the noisy image
    by > 5 dB on a 64×64 crop at σ = 25."""
    import bm3d
    from skimage.restoration import denoise_nl_means

    clean = _camera_crop()[None]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = clean + noise * (25.0 / 255.0)  # σ = 25 on the 0–255 scale
    image = noisy[0].double().numpy()
    noisy_psnr = psnr(noisy[None], clean[None]).item()
    ours = bm3d_denoise(noisy, 25.0)
    theirs = bm3d.bm3d(image, 25.0 / 255.0, profile="np")
    np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-5)
    assert psnr(ours[None], clean[None]).item() > noisy_psnr + 5.0
    ours = nlm_denoise(noisy, 25.0, 0.8)
    theirs = denoise_nl_means(image, h=0.8 * 25.0 / 255.0, sigma=25.0 / 255.0, patch_size=7,
                              patch_distance=11, fast_mode=True)  # fmt: skip
    np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-6)
    assert psnr(ours[None], clean[None]).item() > noisy_psnr + 5.0


def test_noisy_set_noise_has_the_standard_deviation_sigma_over_255():
    image = torch.full((256, 256), 0.5)
    sigmas = [15.0, 25.0, 50.0]
    data = noisy_set([image], ["flat"], sigmas, torch.Generator().manual_seed(1))
    for i, s in enumerate(sigmas):
        clean, noisy = data.item(i)
        std = float(((noisy - clean) * 255.0).double().std())
        assert abs(std - s) < 0.03 * s


def test_noise_standard_deviation_is_sigma_over_255_to_a_tenth_of_a_percent():
    """σ is on the 0–255 scale: the noise of the evaluation sets and of the training patches
    has standard deviation σ/255 (not σ/256: 0.4% off), measured on 4 M (evaluation) and
    1 M (training) pixels, where the sample deviation is within 0.04% and 0.07% (1 sd)."""
    image = torch.full((2048, 2048), 0.5)
    data = noisy_set([image], ["flat"], [25.0], torch.Generator().manual_seed(3))
    clean, noisy = data.item(0)
    std = float(((noisy - clean) * 255.0).double().std())
    assert std == pytest.approx(25.0, rel=2e-3)
    patches = sample_patches(
        [torch.rand(80, 80)], 256, 64, [25.0], torch.Generator().manual_seed(3)
    )
    assert float((patches[1] * 255.0).double().std()) == pytest.approx(25.0, rel=2e-3)


def test_validation_psnr_of_the_last_and_the_oracle_exit_by_a_loop_over_exits():
    torch.manual_seed(0)
    model = _trained_looking(DnCNN(depth=5, width=4).add_exit_heads("linear")).eval()
    with torch.no_grad():  # heads of their own, so the best exit varies by item
        for head in model.heads.values():
            head.weight.normal_(0.0, 0.2)
    images = [torch.rand(8, 8), torch.rand(8, 8), torch.rand(6, 7)]
    data = noisy_set(images, ["a", "b", "c"], [30.0, 60.0], torch.Generator().manual_seed(2))
    table = []
    with torch.no_grad():
        for i in range(data.size):
            clean, noisy = data.item(i)
            state, row = model.start(noisy[None]), []
            for t in range(model.max_steps):
                state = model.advance(state, t)
                raw = (noisy[None] - model.predict(state, t)).double().clamp(0, 1)
                mse = float(((raw - clean[None].double()) ** 2).mean())
                row.append(-10.0 * math.log10(mse))
            table.append(row)
    assert any(max(row) != row[-1] for row in table)  # some item is best before the last exit
    oracle = sum(max(row) for row in table) / len(table)
    last = sum(row[-1] for row in table) / len(table)
    got = validation_psnr(model, data, "oracle")
    assert got["oracle"] == pytest.approx(oracle, rel=1e-5)
    assert got["last"] == pytest.approx(last, rel=1e-5)
    assert got["score"] == got["oracle"]
    assert validation_psnr(model, data, "last")["score"] == got["last"]
    with pytest.raises(ValueError, match="criterion"):
        validation_psnr(model, data, "best")


def test_patches_are_windows_of_an_image_under_a_flip_or_rotation():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(30, 40), torch.rand(25, 25)]
    noisy, noise = sample_patches(images, 16, 8, [35.0], g)
    assert noisy.shape == noise.shape == (16, 1, 8, 8)
    clean = noisy - noise
    for patch in clean[:, 0]:
        found = False
        for image in images:
            for k in range(8):
                view = torch.rot90(patch.flip(1) if k >= 4 else patch, -(k % 4), dims=(0, 1))
                windows = image.unfold(0, 8, 1).unfold(1, 8, 1)
                if bool(((windows - view).abs().amax(dim=(-1, -2)) < 1e-6).any()):
                    found = True
        assert found
    big = sample_patches(images, 200, 24, [35.0, 55.0], g)[1]
    stds = big.flatten(1).std(dim=1) * 255  # 576 pixels: within ±10% of σ by > 3 sd
    near_35, near_55 = (stds - 35).abs() < 3.5, (stds - 55).abs() < 5.5
    assert bool((near_35 | near_55).all()) and 60 < int(near_35.sum()) < 140


def test_noise_is_drawn_per_image_and_sigma_and_reproducibly():
    images = [torch.full((6, 6), 0.5), torch.full((6, 6), 0.5), torch.full((4, 5), 0.2)]
    names = ["a", "b", "c"]
    data = noisy_set(images, names, [35.0, 65.0], torch.Generator().manual_seed(0))
    again = noisy_set(images, names, [35.0, 65.0], torch.Generator().manual_seed(0))
    assert data.size == 6 and data.sigma.tolist() == [35.0] * 3 + [65.0] * 3
    noise = [data.item(i)[1] - data.item(i)[0] for i in range(6)]
    assert not torch.allclose(noise[0], noise[1])  # same-size images, different noise
    assert not torch.allclose(noise[0] * 65 / 35, noise[3])  # another σ, another draw
    for i in range(6):
        torch.testing.assert_close(again.item(i)[1], data.item(i)[1])
    # map puts group results back in item order
    means = data.map(lambda noisy, clean: clean.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(means, torch.tensor([0.5, 0.5, 0.2] * 2))


def test_budget_curves_calibrate_on_validation_items_made_like_the_test_items(tmp_path):
    """The curves' validation items: the validation images cut to the test crops' side, under
    every test σ, from a noise stream of their own; the other choices keep the training-σ
    tiles."""
    config, _ = resolve_config(
        get_experiment("denoising"), "tiny", ["val_crop=32", "test_crop=48", "val_tiles=2"]
    )
    assert config.curve_validation == "like_test"
    planned = PlannedJob("dncnn-stop-s0", Job("dncnn-stop"), 0, {}, ())
    context = JobContext(RunDir(tmp_path), config, planned, progress=False)
    train = validation_set(config, context)
    test = validation_set(config, context, like_test=True)
    assert {tuple(clean.shape[-2:]) for _, clean, _ in train.groups} == {(32, 32)}
    assert {tuple(clean.shape[-2:]) for _, clean, _ in test.groups} == {(48, 48)}
    per_sigma = test.size // len(config.test_sigmas)
    assert test.sigma.tolist() == [s for s in config.test_sigmas for _ in range(per_sigma)]
    assert train.sigma.unique().tolist() == config.train_sigmas
    # Same crop sides: the same tiles, another draw of the noise.
    same = validation_set(
        resolve_config(get_experiment("denoising"), "tiny", ["val_crop=48", "test_crop=48",
                                                             "val_tiles=2"])[0],
        context,
    )  # fmt: skip
    k = config.test_sigmas.index(config.train_sigmas[0]) * per_sigma
    torch.testing.assert_close(test.item(k)[0], same.item(0)[0])
    assert not torch.allclose(test.item(k)[1], same.item(0)[1])


def test_crops_and_tiles():
    image = torch.arange(100.0).view(10, 10)
    torch.testing.assert_close(center_crop(image, 4), image[3:7, 3:7])
    assert center_crop(image, 40).shape == (10, 10)
    parts = tiles(image, 3, 4)
    assert len(parts) == 4 and all(p.shape == (3, 3) for p in parts)
    assert len({float(p[0, 0]) for p in parts}) == 4  # distinct tiles
    assert len(tiles(image, 5, 10)) == 4


def test_png_round_trip_is_8_bit_exact():
    image = torch.rand(7, 9)
    back = from_png_base64(png_base64(image))
    np.testing.assert_allclose(back, (image.numpy() * 255).round() / 255, atol=1e-9)


def test_sample_photos_split_by_image_with_duplicates_counted_once():
    splits = load_splits("")
    names = splits.train.names + splits.val.names + splits.test.names
    assert len(names) == len(set(names))
    assert "camera" in splits.test.names
    assert splits.skipped.get("camera_pywt") == "identical to camera"
    arrays = [im for s in (splits.train, splits.val, splits.test) for im in s.images]
    digests = {hash(a.numpy().tobytes()) for a in arrays}
    assert len(digests) == len(arrays)
    assert 10 <= len(splits.test.names) <= 12
    assert {e.split for e in CATALOGUE} == {"train", "val", "test"}
    for image in arrays:
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert min(image.shape) <= 512


def test_a_16_bit_png_reads_as_its_8_bit_original(tmp_path):
    pixels = np.arange(40 * 40).reshape(40, 40).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "8.png")
    Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 255 → 65535
    with Image.open(tmp_path / "16.png") as image:
        assert image.mode.startswith("I")
    assert np.array_equal(read_image(tmp_path / "16.png"), pixels)
    assert np.array_equal(read_image(tmp_path / "8.png"), pixels)


def test_a_noise_level_that_is_not_an_integer_finds_its_grid_item():
    config = resolve_config(
        get_experiment("denoising"), "tiny", ["test_sigmas=12.3,65", "grid_sigma=12.3"]
    )[0]
    data = noisy_set(
        [torch.rand(16, 16)], ["camera"], [12.3, 65.0], torch.Generator().manual_seed(0)
    )
    config.grid_image = "camera"
    assert grid_item(config, data) == 0
    assert data.sigma.tolist() == [12.3, 65.0]


def test_a_users_folder_is_read_by_split(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1), ("test", 2)):
        (tmp_path / split).mkdir()
        for k in range(count):
            pixels = rng.integers(0, 256, (48, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / f"{k}.png")
    (tmp_path / "test" / "more.png").mkdir()  # a folder named like an image is no image
    splits = load_splits(str(tmp_path))
    assert splits.test.names == ["0.png", "1.png"] and splits.train.images[0].shape == (48, 50)


def test_a_users_folder_under_home_is_found_through_a_tilde(tmp_path, monkeypatch):
    """``~`` in images_dir is the home folder for loading as for the digest (loading read
    it as a folder named ``~``)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _folder(tmp_path, 20)
    assert load_splits("~/images").test.images[0].shape == (20, 20)
    assert folder_files("~/images") == folder_files(str(tmp_path / "images"))


def _run_cli(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stopwise", "run", "denoising", "--preset", "tiny"]
    return subprocess.run(
        command + ["--out", str(tmp_path / "never"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _folder(tmp_path, size):
    root = tmp_path / "images"
    for k, split in enumerate(("train", "val", "test")):
        (root / split).mkdir(parents=True)
        Image.fromarray(np.full((size, size), k, dtype=np.uint8)).save(root / split / "a.png")
    return root


@pytest.mark.parametrize(
    "setting, named",
    [
        ("images_dir=/no/such/folder", "images_dir"),
        ("train_sigmas=0,35", "train_sigmas"),
        ("test_sigmas=35,256", "test_sigmas"),
        ("grid_sigma=300", "grid_sigma"),
        ("trained_depths=4", "trained_depths"),  # tiny's depth is 4: that model is DnCNN
        ("small", "train image a.png is 12×12, smaller than a patch or a policy crop (patch=16, "),
        ("unreadable", "cannot read image"),
        ("missing-split", "no val/ subfolder"),
        # (a test image's message named policy.crop, which crops training images only)
        (
            "small-test",
            "test image a.png is 14×14, smaller than a patch or BM3D's 16×16 (patch=8)\n",
        ),
        ("truncated", "cannot read image"),
        ("duplicate", "hold the same image"),
        ("resaved", "hold the same image"),
    ],
)
def test_bad_inputs_exit_2_before_anything_is_written(setting, named, tmp_path, capsys):
    """The CLI in this process (the same code path as ``stopwise run``, without starting Python
    again; an exception it does not turn into exit 2 fails the test)."""
    if setting == "small":
        setting = f"images_dir={_folder(tmp_path, 12)}"
    elif setting == "unreadable":
        root = _folder(tmp_path, 64)
        (root / "test" / "b.png").write_bytes(b"not an image")
        setting = f"images_dir={root}"
    elif setting == "missing-split":
        root = _folder(tmp_path, 64)
        for f in (root / "val").iterdir():
            f.unlink()
        (root / "val").rmdir()
        setting = f"images_dir={root}"
    elif setting == "small-test":  # a patch of 8 fits, but BM3D refuses a 14×14 image
        root = _folder(tmp_path, 64)
        Image.fromarray(np.full((14, 14), 9, dtype=np.uint8)).save(root / "test" / "a.png")
        setting = f"images_dir={root} --set patch=8 --set policy.crop=8"
    elif setting == "truncated":  # Pillow's verify() passes a truncated JPEG
        root = _folder(tmp_path, 64)
        Image.fromarray(np.arange(64 * 64).reshape(64, 64).astype(np.uint8)).save(root / "t.jpg")
        data = (root / "t.jpg").read_bytes()
        (root / "test" / "b.jpg").write_bytes(data[: len(data) // 2])
        setting = f"images_dir={root}"
    elif setting == "duplicate":  # the same photo in train/ and test/
        root = _folder(tmp_path, 64)
        shutil.copy(root / "test" / "a.png", root / "train" / "copy.png")
        setting = f"images_dir={root}"
    elif setting == "resaved":  # the test photo saved again (other bytes, same pixels)
        root = _folder(tmp_path, 64)
        with Image.open(root / "test" / "a.png") as image:
            image.save(root / "train" / "copy.png", compress_level=0)
        assert (root / "train" / "copy.png").read_bytes() != (root / "test" / "a.png").read_bytes()
        setting = f"images_dir={root}"
    args = ["run", "denoising", "--preset", "tiny", "--out", str(tmp_path / "never")]
    args += [arg for part in setting.split(" --set ") for arg in ("--set", part)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert named in err and "images_dir: images_dir=" not in err  # the key said once
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("module, named", [("bm3d", "bm3d"), ("skimage", "scikit-image")])
def test_a_missing_data_package_exits_2_before_anything_is_written(
    module, named, tmp_path, monkeypatch, capsys
):
    """Without the `data` extra's BM3D (or scikit-image) a run wrote its directory and then
    failed with a traceback in the classical job (ModuleNotFoundError: bm3d)."""
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec gives None
    out = tmp_path / "never"
    assert main(["run", "denoising", "--preset", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and "stopwise[data]" in err
    assert not out.exists()


def test_kept_exits_against_a_plain_count():
    losses = torch.tensor([[3.0, 1.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0], [5.0, 4.0, 0.5, 1.0]] * 10)
    valid, frequency = kept_exits(losses, 0.2)
    counts = [0, 0, 0, 0]
    for row in losses.tolist():
        counts[row.index(min(row))] += 1
    assert frequency == pytest.approx([c / 30 for c in counts])
    assert valid.tolist() == [True, True, True, True]  # the last exit is always kept
    valid, _ = kept_exits(losses, 0.4)
    assert valid.tolist() == [False, False, False, True]


def test_policy_features_in_training_match_inference():
    torch.manual_seed(0)
    model = _trained_looking(DnCNN(depth=4, width=5)).add_exit_heads("linear").eval()
    noisy, noise = torch.rand(4, 1, 8, 8), 0.1 * torch.randn(4, 1, 8, 8)
    data = policy_data(model, noisy, noise, chunk=3)
    state = model.start(noisy)
    for t in range(model.max_steps):
        state = model.advance(state, t)
        prediction, features = model.observe(state, t)
        torch.testing.assert_close(data.features(slice(None), t), features)
        torch.testing.assert_close(data.noise_hat[:, t], prediction)
    torch.testing.assert_close(data.losses, noise_losses(data.noise_hat, noise))
    assert isinstance(data, PolicyData)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_adaptive_modes_agree_and_shrink_stops_rows_early(precision):
    torch.manual_seed(0)
    model = DnCNN(depth=6, width=6, precision=precision, channels_last=True)
    model = _trained_looking(model.add_exit_heads("linear")).eval()
    policy = create_policy("denoising-cnn", width=4, max_steps=model.max_steps).eval()
    with torch.no_grad():
        policy.step_bias.copy_(torch.linspace(-1, 1, model.max_steps))
    x = torch.rand(6, 1, 12, 12) * torch.linspace(0.2, 1.0, 6).view(-1, 1, 1, 1)
    valid = torch.tensor([True, False, True, True, True])
    with torch.no_grad():
        hazards = hazard_trajectory(model, policy, x)
        rule = ScoreThreshold(float(hazards[:, 2].median()))  # some rows stop at exit 2
        results = {
            mode: run_adaptive(model, policy, x, rule, mode, valid)
            for mode in ("dense", "masked", "shrink")
        }
        for mode in ("masked", "shrink"):
            torch.testing.assert_close(results[mode].stop_index, results["dense"].stop_index)
            torch.testing.assert_close(results[mode].predictions, results["dense"].predictions)
        # a threshold below every score stops every row at the first valid exit
        first = run_adaptive(model, policy, x, ScoreThreshold(-math.inf), "shrink", valid)
    assert first.stop_index.tolist() == [0] * 6
    stops = results["shrink"].stop_index
    assert 0 < int((stops <= 2).sum()) < 6  # rows leave at different exits


def test_bfloat16_inference_is_close_to_float32():
    torch.manual_seed(0)
    model = _trained_looking(DnCNN(depth=8, width=16, precision="float32"))
    clean = torch.rand(2, 1, 32, 32)
    noisy = clean + 0.15 * torch.randn_like(clean)
    with torch.no_grad():
        full = model(noisy)
        model.precision = "bfloat16"
        half = model(noisy)
    relative = float((half - full).norm() / full.norm())
    assert relative < 0.02


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("out", "kernel", "bias"), [(1, 3, False), (2, 3, True), (1, 5, True)])
def test_tap_convolution_equals_conv2d(out, kernel, bias, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, out, kernel, padding=kernel // 2, bias=bias).double()
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=kernel // 2)
        got = TapConv2d(conv).double()(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv", [nn.Conv2d(2, 1, 3, stride=2, padding=1), nn.Conv2d(2, 1, 3)])
def test_tap_convolution_refuses_other_strides_and_paddings(conv):
    with pytest.raises(ValueError, match="stride-1, same-padded"):
        TapConv2d(conv)


@pytest.mark.parametrize("heads", ["none", "linear", "conv"])
def test_the_inference_copy_predicts_what_the_model_does_at_every_exit(heads):
    torch.manual_seed(0)
    model = DnCNN(depth=5, width=6, channels_last=True)
    if heads != "none":
        model.add_exit_heads(heads)
    model = _trained_looking(model)
    fast = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(3, 1, 10, 11)
    with torch.no_grad():
        state, quick = model.start(x), fast.start(x)
        for t in range(model.max_steps):
            state, quick = model.advance(state, t), fast.advance(quick, t)
            torch.testing.assert_close(quick["h"], state["h"], rtol=1e-5, atol=1e-5)
            if model.has_exit(t):
                torch.testing.assert_close(
                    fast.predict(quick, t), model.predict(state, t), rtol=1e-5, atol=1e-5
                )
    torch.testing.assert_close(
        fast.adaptive_macs(torch.ones(4, dtype=torch.bool), 3.0),
        model.adaptive_macs(torch.ones(4, dtype=torch.bool), 3.0),
    )
    torch.testing.assert_close(fast.step_costs(), model.step_costs())


def test_the_inference_copy_in_bfloat16_stops_where_the_model_does():
    torch.manual_seed(0)
    model = DnCNN(depth=6, width=8, precision="bfloat16", channels_last=True)
    model = _trained_looking(model.add_exit_heads("conv"))
    policy = create_policy("denoising-cnn", width=4, max_steps=model.max_steps).eval()
    x = torch.rand(40, 1, 12, 12) * torch.linspace(0.2, 1.0, 40).view(-1, 1, 1, 1)
    with torch.no_grad():
        policy.step_bias.copy_(torch.linspace(-1, 1, model.max_steps))
        rule = ScoreThreshold(float(hazard_trajectory(model, policy, x)[:, 1].median()))
        slow = run_adaptive(model, policy, x, rule, "shrink")
        fast = run_adaptive(inference_copy(model), policy, x, rule, "shrink")
    same = slow.stop_index == fast.stop_index
    assert same.double().mean() >= 0.9 and 0 < int((slow.stop_index <= 1).sum()) < 40
    error = (fast.predictions - slow.predictions)[same].norm() / slow.predictions[same].norm()
    assert float(error) < 0.02  # bfloat16 rounding


def test_exit_table_against_a_loop_over_exits():
    torch.manual_seed(0)
    model = _trained_looking(DnCNN(depth=4, width=4).add_exit_heads("linear")).eval()
    images = [torch.rand(8, 8), torch.rand(8, 8), torch.rand(6, 7)]
    data = noisy_set(images, ["a", "b", "c"], [50.0], torch.Generator().manual_seed(0))
    table = exit_table(model, data, keep_images=True)
    kept = torch.tensor([True, False, True])  # exit 1 pruned: the oracle cannot stop there
    pruned = exit_table(model, data, keep_images=True, valid=kept)
    leaves = []
    for i in range(data.size):
        clean, noisy = data.item(i)
        state = model.start(noisy[None])
        estimates = []
        for t in range(model.max_steps):
            state = model.advance(state, t)
            raw = noisy[None] - model.predict(state, t)
            estimates.append(raw[0].clamp(0, 1))
            assert table.psnr[i, t].item() == pytest.approx(psnr(raw, clean[None]).item(), rel=1e-5)
            # ℓ_t: the summed squared error of the estimate before it is clamped
            pairs = zip(raw.detach().flatten().tolist(), clean.flatten().tolist(), strict=True)
            plain = sum((r - c) ** 2 for r, c in pairs)
            assert table.loss[i, t].item() == pytest.approx(plain, rel=1e-5)
            leaves.append(bool(((raw < 0) | (raw > 1)).any()))
        best = int(table.psnr[i].argmax())
        assert table.best_index()[i].item() == best
        torch.testing.assert_close(table.best[i], estimates[best])
        torch.testing.assert_close(table.last[i], raw[0].clamp(0, 1))
        best_kept = max((t for t in range(3) if kept[t]), key=lambda t: table.psnr[i, t])
        assert pruned.best_index(kept)[i].item() == best_kept
        torch.testing.assert_close(pruned.best[i], estimates[best_kept])
    assert all(leaves)  # every estimate leaves [0, 1]: a clamped ℓ_t would differ


def test_validation_schedule_drops_the_rate_keeps_the_best_and_resumes():
    module = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    scores = iter([1.0, 2.0, 1.5, 1.4, 1.3, 3.0])

    def evaluate():
        return {"score": next(scores)}

    schedule = ValidationSchedule(module, optimizer, evaluate, 12, every=2, patience=2)
    for step in range(12):
        with torch.no_grad():
            module.weight.fill_(float(step))
        schedule.step()
        if step == 5:
            saved = schedule.state_dict()
    assert [h["step"] for h in schedule.history] == [2, 4, 6, 8, 10, 12]
    assert schedule.drops == [8]  # two evaluations (6, 8) without beating 2.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert schedule.best_step == 12 and schedule.best_score == 3.0
    schedule.restore_best()
    assert module.weight.item() == 11.0
    other = ValidationSchedule(module, optimizer, evaluate, 12, every=2, patience=2)
    other.load_state_dict(saved)
    assert other.best_step == 4 and other.steps_done == 6 and other.stale == 1


def test_policy_registers_and_sees_the_step():
    policy = create_policy("denoising-cnn", width=4, max_steps=3)
    features = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        policy.step_bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
        out = torch.stack([policy(features, t) for t in range(3)])
    torch.testing.assert_close(out[1] - out[0], torch.ones(2))
    without = ImagePolicy(width=4, max_steps=3, step_bias=False)
    assert without.step_bias is None


def test_near_best_exit_against_a_plain_loop():
    torch.manual_seed(0)
    losses = torch.rand(50, 6) + 0.5
    valid = torch.tensor([True, False, True, True, True, True])
    for tolerance in (0.0, 0.2, 1.0):
        target = near_best_exit(losses, valid, tolerance)
        for row, t in zip(losses.tolist(), target.tolist(), strict=True):
            allowed = [k for k in range(6) if valid[k]]
            best = min(row[k] for k in allowed)
            psnr_gap = [10 * math.log10(row[k] / best) for k in allowed]  # dB below the best
            expected = next(
                k for k, gap in zip(allowed, psnr_gap, strict=True) if gap <= tolerance + 1e-9
            )
            assert t == expected
    torch.testing.assert_close(near_best_exit(losses), losses.argmin(dim=1))


def test_oracle_under_budget_is_the_lagrangian_frontier():
    torch.manual_seed(0)
    psnr_table = 20 + torch.rand(40, 5).cumsum(dim=1)  # deeper is better, by varying amounts
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    valid = torch.ones(5, dtype=torch.bool)
    frontier = oracle_under_budget(psnr_table, valid, costs, points=4000)
    assert frontier[-1]["mean_cost"] == 5.0
    assert frontier[-1]["psnr"] == pytest.approx(float(psnr_table[:, -1].mean()))
    assert all(a["psnr"] < b["psnr"] for a, b in zip(frontier, frontier[1:], strict=False))
    # no fixed depth beats the frontier (a mix of neighbouring points) at its own cost
    xs, ys = [p["mean_cost"] for p in frontier], [p["psnr"] for p in frontier]
    for t in range(5):
        assert np.interp(float(costs[t]), xs, ys) >= float(psnr_table[:, t].mean()) - 1e-6


def test_oracle_under_budget_points_are_each_lambdas_per_item_argmax():
    """Each frontier point against a plain loop at its λ: every item stops at the valid exit of
    largest PSNR_t − λ·c_t/spread (spread = the valid costs' range); the best exit of two
    items is masked, so the valid mask matters too."""
    g = torch.Generator().manual_seed(5)
    psnr_table = 20 + torch.rand(12, 5, generator=g, dtype=torch.float64).cumsum(dim=1)
    psnr_table[:2, 3] = 40.0  # best exit of items 0 and 1, but not a valid one
    costs = torch.tensor([2.0, 3.0, 5.0, 6.0, 9.0], dtype=torch.float64)
    valid = torch.tensor([True, True, True, False, True])
    frontier = oracle_under_budget(psnr_table, valid, costs, points=60)
    spread = 9.0 - 2.0
    rows = psnr_table.tolist()

    def plain(lam):
        stops = [
            max(
                (t for t in range(5) if valid[t]), key=lambda t, r=r: r[t] - lam * costs[t] / spread
            )
            for r in rows
        ]
        return (
            sum(float(costs[t]) for t in stops) / len(rows),
            sum(r[t] for r, t in zip(rows, stops, strict=True)) / len(rows),
        )

    assert len(frontier) >= 3  # several λ give distinct points
    for point in frontier:
        cost, psnr_mean = plain(point["lambda"])
        assert point["mean_cost"] == pytest.approx(cost)
        assert point["psnr"] == pytest.approx(psnr_mean)
    # the ends: λ = 0 (every item at its best valid exit) and a large λ (every item at exit 0)
    assert (frontier[-1]["mean_cost"], frontier[-1]["psnr"]) == pytest.approx(plain(0.0))
    assert (frontier[0]["mean_cost"], frontier[0]["psnr"]) == pytest.approx(plain(1e3))
    assert frontier[0]["mean_cost"] == 2.0


def test_budget_oracle_score_of_a_hand_worked_table():
    """Two items, exits of cost 1, 2, 3 (spread 2). Item A (20, 26, 27) takes exit 3 for
    λ < 2, exit 2 for 2 < λ < 12, exit 1 beyond; item B (22, 23, 30) exit 3 for λ < 8, exit 1
    beyond. Frontier (cost, mean PSNR): (1, 21), (1.5, 24), (2.5, 28), (3, 28.5). Budgets
    1, 2, 3 read 21, 26 (halfway from 24 to 28) and 28.5; budgets 1, 1.5, …, 3 read 21, 24,
    26, 28, 28.5."""
    table = torch.tensor([[20.0, 26.0, 27.0], [22.0, 23.0, 30.0]])
    costs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    frontier = oracle_under_budget(table, torch.ones(3, dtype=torch.bool), costs)
    assert [p["mean_cost"] for p in frontier] == pytest.approx([1.0, 1.5, 2.5, 3.0])
    assert [p["psnr"] for p in frontier] == pytest.approx([21.0, 24.0, 28.0, 28.5])
    assert budget_oracle_score(table, costs, 3) == pytest.approx((21.0 + 26.0 + 28.5) / 3)
    assert budget_oracle_score(table, costs, 5) == pytest.approx(
        (21.0 + 24.0 + 26.0 + 28.0 + 28.5) / 5
    )


def test_curve_metric_reads_each_items_psnr_at_its_own_0_based_exit():
    """PSNR of stop indices (0-based) is the mean of the table at those exits, by hand."""
    from types import SimpleNamespace

    from stopwise.tasks.denoising.experiment import _curve_metric

    table = SimpleNamespace(psnr=torch.tensor([[20.0, 25.0, 30.0], [21.0, 26.0, 31.0]]))
    data = SimpleNamespace(sigma=torch.tensor([15.0, 25.0]))
    metric = _curve_metric(table, data, SimpleNamespace(test_sigmas=[15, 25]))
    out = metric(torch.tensor([2, 1]))  # exits 3 and 2: 30 and 26
    assert out["psnr"] == pytest.approx((30.0 + 26.0) / 2)
    assert out["psnr_by_sigma"] == pytest.approx([30.0, 26.0])


def test_budget_oracle_score_prefers_useful_early_exits():
    costs = torch.arange(1.0, 6.0, dtype=torch.float64)
    last_only = torch.tensor([[10.0, 10.0, 10.0, 10.0, 30.0]] * 4)
    gradual = torch.tensor([[26.0, 27.0, 28.0, 29.0, 29.9]] * 4)
    assert budget_oracle_score(gradual, costs, 8) > budget_oracle_score(last_only, costs, 8)
    flat = torch.full((3, 5), 25.0)
    assert budget_oracle_score(flat, costs, 8) == pytest.approx(25.0)


def test_spearman_over_seeds_skips_undefined_seeds():
    from stopwise.tasks.denoising.report import format_rho

    nan = float("nan")
    assert format_rho([nan, nan]).startswith("undefined in all 2 seed(s)")
    assert format_rho([0.5, nan]) == "0.500 (1 seed(s) undefined: one exit for all)"
    assert format_rho([0.25, 0.75]) == "0.500 ± 0.354"


def test_timed_rules_are_matched_by_position_across_seeds():
    from stopwise.tasks.denoising.report import _timed_rules_by_position

    records = [
        {"rules": {"stop": {"t": 1}, "budget_100": {"t": 2}, "budget_300": {"t": 3}}},
        {"rules": {"stop": {"t": 4}, "budget_120": {"t": 5}, "budget_300": {"t": 6}}},
    ]
    matched = _timed_rules_by_position(records)
    assert [name for name, _ in matched] == ["stop", "budget_point_1", "budget_300"]
    assert [[e["t"] for e in entries] for _, entries in matched] == [[1, 4], [2, 5], [3, 6]]
    # a seed whose two curve points fell on one budget holds one entry: it fills both positions
    records.append({"rules": {"stop": {"t": 7}, "budget_200": {"t": 8}}})
    matched = _timed_rules_by_position(records)
    assert [[e["t"] for e in entries] for _, entries in matched] == [
        [1, 4, 7],
        [2, 5, 8],
        [3, 6, 8],
    ]


def test_best_fixed_depth_at_a_cost_skips_depths_worse_than_a_cheaper_one():
    from stopwise.tasks.denoising.report import _interpolate

    xs, ys = [1.0, 2.0, 3.0, 3.0], [5.0, 4.0, 6.0, 7.0]  # depth 2 worse than 1; two at cost 3
    assert math.isnan(_interpolate(0.5, xs, ys))
    assert _interpolate(1.0, xs, ys) == 5.0
    assert _interpolate(2.0, xs, ys) == 6.0  # halfway between (1, 5) and (3, 7)
    assert _interpolate(4.0, xs, ys) == 7.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        costs = torch.rand(8, generator=generator).sort().values.tolist()
        psnr = torch.rand(8, generator=generator).tolist()
        x = costs[0] + (costs[-1] - costs[0]) * float(torch.rand(1, generator=generator))
        reachable = max(p for c, p in zip(costs, psnr, strict=True) if c <= x)
        assert reachable - 1e-12 <= _interpolate(x, costs, psnr) <= max(psnr) + 1e-12


def test_bm3d_refuses_images_it_cannot_denoise():
    # bm3d 4.x segfaults on an 11×11 image (found by the slow hypothesis test): refuse it first.
    with pytest.raises(ValueError, match="at least 16×16"):
        bm3d_denoise(torch.rand(1, 11, 11), 25.0)


def test_budget_curves_of_different_lengths_are_listed_per_seed():
    """Seed 0 kept one exit (a one-point curve), seed 1 three: no averaging by position across
    them; each point's gain is its PSNR minus the same model's fixed depth at that cost,
    interpolated by hand here (fixed depths at 10 / 20 / 30 MACs give 20 / 22 / 23 dB)."""
    from stopwise.tasks.denoising.report import _curve_table

    fixed = [{"mean_cost": c, "psnr": p} for c, p in ((10.0, 20.0), (20.0, 22.0), (30.0, 23.0))]

    def point(cost, psnr):
        return {"budget": cost, "mean_steps": cost / 10, "mean_cost": cost, "psnr": psnr,
                "spearman_exit_sigma": 0.5}  # fmt: skip

    def job(curve):
        return {"fixed_depth": fixed, "oracle_under_budget": fixed, "curve": curve}

    stop = {0: job([point(30.0, 23.0)]), 1: job([point(10.0, 20.0), point(15.0, 21.5),
                                                 point(25.0, 22.0)])}  # fmt: skip
    jobs = {"dncnn-stop": stop, "dncnn-ds": {s: {"fixed_depth": fixed} for s in stop}}
    out = _curve_table(jobs, [0, 1], DenoisingConfig())
    assert [e["seed"] for e in out["results"]] == [0, 1, 1, 1]
    gains = [e["gain_over_fixed_same_model"]["mean"] for e in out["results"]]
    assert gains == pytest.approx([0.0, 0.0, 21.5 - 21.0, 22.0 - 22.5])
    assert "| seed |" in out["table"] and "listed on its own" in out["table"]
    same = _curve_table({"dncnn-stop": {0: stop[1], 1: stop[1]}, "dncnn-ds": jobs["dncnn-ds"]},
                        [0, 1], DenoisingConfig())  # fmt: skip
    assert len(same["results"]) == 3 and "seed" not in same["results"][0]
    # A diverged seed's PSNR (NaN) shows in the mean, not averaged away.
    diverged = job([point(10.0, 20.0), point(15.0, math.nan), point(25.0, 22.0)])
    mixed = _curve_table({"dncnn-stop": {0: stop[1], 1: diverged}, "dncnn-ds": jobs["dncnn-ds"]},
                         [0, 1], DenoisingConfig())  # fmt: skip
    assert math.isnan(mixed["results"][1]["psnr"]) and mixed["results"][0]["psnr"] == 20.0


def test_the_room_for_a_policy_is_the_oracle_stop_minus_fixed_depth():
    """Seed 0's oracle stop at 15 MACs is 1 dB above fixed depth's mix there (21 dB, halfway
    between 10 → 20 dB and 20 → 22 dB) and on it at 30; seed 1's oracle is pruned to one exit
    whose 21 dB at 20 MACs is 1 dB below fixed depth 20 → 22 dB."""
    from stopwise.tasks.denoising.report import _oracle_room

    fixed = [{"mean_cost": c, "psnr": p} for c, p in ((10.0, 20.0), (20.0, 22.0), (30.0, 23.0))]
    jobs = {
        "dncnn-stop": {
            0: {"fixed_depth": fixed, "oracle_under_budget": [
                {"mean_cost": 15.0, "psnr": 22.0}, {"mean_cost": 30.0, "psnr": 23.0}]},
            1: {"fixed_depth": fixed, "oracle_under_budget": [{"mean_cost": 20.0, "psnr": 21.0}]},
        }
    }  # fmt: skip
    room = _oracle_room(jobs, [0, 1])
    assert room[0] == pytest.approx({"best_gain": 1.0, "worst_gain": 0.0})
    assert room[1] == pytest.approx({"best_gain": -1.0, "worst_gain": -1.0})


def test_budget_curve_compares_with_dncnns_trained_per_depth():
    """The trained-per-depth column: the best plain DnCNN at the point's cost, interpolated by
    hand here between a depth-3 DnCNN (10 MACs, 20 dB) and the DnCNN baseline (30 MACs, 23 dB);
    none below the cheapest (—)."""
    from stopwise.tasks.denoising.report import _curve_table

    fixed = [{"mean_cost": c, "psnr": p} for c, p in ((5.0, 18.0), (30.0, 23.0))]

    def point(cost, psnr):
        return {"budget": cost, "mean_steps": 1.0, "mean_cost": cost, "psnr": psnr,
                "spearman_exit_sigma": 0.5}  # fmt: skip

    stop = {"fixed_depth": fixed, "oracle_under_budget": fixed,
            "curve": [point(5.0, 18.0), point(20.0, 22.0)],
            "costs_per_pixel": {"fixed_depth": [5.0, 30.0]}}  # fmt: skip
    jobs = {
        "dncnn-stop": {0: stop},
        "dncnn-ds": {0: {"fixed_depth": fixed}},
        "dncnn": {0: {"test": {"psnr": [22.0, 24.0]}}},
        "dncnn-depth3": {0: {"macs_per_pixel": 10.0, "test": {"psnr": [19.0, 21.0]}}},
    }
    out = _curve_table(jobs, [0], DenoisingConfig())
    low, high = out["results"]
    assert math.isnan(low["trained_for_depth"]) and low["gain_over_trained_for_depth"] is None
    assert high["trained_for_depth"] == pytest.approx(21.5)
    assert high["gain_over_trained_for_depth"]["mean"] == pytest.approx(0.5)
    assert "DnCNNs trained per depth" in out["table"]


def test_a_dncnn_trained_for_a_shallower_depth_and_the_gain_head_run(tmp_path):
    """``trained_depths=3`` on tiny: a job that trains a plain 3-layer DnCNN; its cost is its
    convolution weights (multiply-adds per pixel of a 3×3, stride-1, same-padded stack). The
    tiny preset also fits the gain head: its budget curve spends no more on validation than
    each budget, more budget never costs less, and the report judges it against fixed depth."""
    done = _run_cli(["--set", "trained_depths=3", "--set", "progress=false"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "never" / "jobs" / "dncnn-depth3-s0.json").read_text())
    weights = sum(m.weight.numel() for m in DnCNN(3, 8).modules() if isinstance(m, nn.Conv2d))
    assert record["record"]["macs_per_pixel"] == weights
    assert len(record["record"]["test"]["psnr"]) == 2 * 2  # tiny: 2 images × 2 σ
    table = (tmp_path / "never" / "table.md").read_text()
    assert "DnCNNs trained per depth" in table
    cpu = table.split("### CPU time per seed (minutes)")[1]
    assert "| 0.0 |" not in cpu  # seconds of training were shown as 0.0 minutes
    stop = json.loads((tmp_path / "never" / "jobs" / "dncnn-stop-s0.json").read_text())["record"]
    curve = stop["gain_curve"]
    assert len(curve) == 3  # tiny: budget_points
    assert all(p["val_mean_cost"] <= p["budget"] + 1e-6 for p in curve)
    assert [p["val_mean_cost"] for p in curve] == sorted(p["val_mean_cost"] for p in curve)
    assert stop["gain_training"]["criterion"] == "minus validation gain-regression loss"
    assert "- DnCNN-stop model, gain head: no worse than fixed depth" in table
    # The stop rows' estimates (noisy − n̂ at the stop, run for real) score the dense table's
    # PSNR at their exit: per σ whose items all stopped at one exit, the mean PSNRs agree.
    sigmas = list(dict.fromkeys(stop["sigma"]))
    compared = 0
    for name in ("stop", "stop_official"):
        row = stop["rows"][name]
        for k, s in enumerate(sigmas):
            items = [i for i, v in enumerate(stop["sigma"]) if v == s]
            exits = {row["exit"][i] for i in items}
            if len(exits) == 1:
                dense = stop["exit_psnr_by_sigma"][int(exits.pop()) - 1][k]
                mean = sum(row["psnr"][i] for i in items) / len(items)
                assert mean == pytest.approx(dense, rel=1e-5)
                compared += 1
    assert compared > 0
    last = stop["rows"]["last_exit"]["psnr_by_sigma"]
    assert last == pytest.approx(stop["exit_psnr_by_sigma"][-1], rel=1e-5)
    # The timed curve points are costed as their curve costs them (no heads before a floor).
    points = {f"budget_{p['budget']:.0f}": p for p in stop["curve"]}
    full = stop["costs_per_pixel"]["fixed_depth"][-1]
    checked = [name for name in stop["timing"]["rules"] if name in points]
    assert checked
    for name in checked:
        ratio = stop["timing"]["rules"][name]["mac_ratio"]
        assert ratio == pytest.approx(points[name]["mean_cost"] / full)


def test_gain_regression_targets_psnr_gained_per_unit_of_cost():
    """At its minimum (zero) the gain head's logit is log(price / g_t), g_t written out here in
    PSNR: the best dB per unit cost that a later kept exit buys (exit 2 is not kept)."""
    psnr = torch.tensor([[20.0, 23.0, 30.0, 24.0], [25.0, 25.5, 22.0, 26.0]], dtype=torch.float64)
    losses = 10.0 ** (-psnr / 10)  # ℓ_t up to the crop's constant
    costs = torch.tensor([1.0, 2.5, 3.0, 5.0], dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    price = 0.3
    g = torch.zeros(2, 2, dtype=torch.float64)
    for b in range(2):
        for t in range(2):
            g[b, t] = max((psnr[b, u] - psnr[b, t]) / (costs[u] - costs[t]) for u in (1, 3)
                          if u > t)  # fmt: skip
    hazards = torch.zeros(2, 4, dtype=torch.float64)
    hazards[:, :2] = torch.log(price / g)
    zero = gain_regression(hazards, losses, costs, valid, price)
    assert float(zero) == pytest.approx(0.0, abs=1e-12)
    hazards[0, 1] += 1.0  # off the target by one log unit: Huber's ½·1² over the 4 targets
    assert float(gain_regression(hazards, losses, costs, valid, price)) == pytest.approx(0.125)


def test_a_curve_points_timing_costs_skip_heads_and_policy_before_its_floor():
    """Floor at exit 3 (0-based 2): exits 1 and 2 (valid) are passed without their heads and
    policy calls; written out from the head and policy costs, not from floored_costs."""
    from stopwise.tasks.denoising.experiment import point_costs

    model = DnCNN(depth=6, width=8).add_exit_heads("conv")
    policy = ImagePolicy(4, model.max_steps)
    valid = torch.tensor([True, True, False] + [True] * (model.max_steps - 3))
    costs = model.adaptive_macs(valid, policy.macs()).double()
    spent = point_costs(model, policy, valid, costs, {"floor_steps": 3})
    skipped = sum(model.head_macs(t) + policy.macs() for t in (0, 1))
    torch.testing.assert_close(spent, costs - skipped)
    torch.testing.assert_close(point_costs(model, policy, valid, costs, {"floor_steps": 1}), costs)


@pytest.fixture
def denoising_script(monkeypatch):
    """benchmarks/denoising.py as a module (its target verdicts, not its runs)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    yield importlib.import_module("denoising")
    sys.modules.pop("denoising", None)


def _benchmark_results(vs_dncnn, vs_bm3d, rho, stop_ms, full_ms):
    """The parts of a denoising report's results that the benchmark's targets read: per-seed
    paired differences (by σ), ρ(σ, exit) per seed, per-seed adaptive and full-depth times."""
    from stopwise.stats import paired_difference

    sigmas, unseen = [35.0, 65.0], [False, True]
    comparisons = []
    for b, per_sigma in (("dncnn", vs_dncnn), ("bm3d", vs_bm3d)):
        for sigma, diffs in zip(sigmas, per_sigma, strict=True):
            d = paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0.0))
            comparisons.append({"a": "stop", "b": b, "sigma": sigma, **d})
    ratios = [a / f for a, f in zip(stop_ms, full_ms, strict=True)]
    return {
        "sigmas": sigmas,
        "unseen": unseen,
        "comparisons": comparisons,
        "spearman_exit_sigma": {str(s): r for s, r in enumerate(rho)},
        "timing": {
            "full_ms_per_image": full_ms,
            "rules": {
                "stop": {
                    "ms_per_image": stop_ms,
                    "time_ratio": sum(ratios) / len(ratios),
                    "exit_ratio": 1.0,
                    "mac_ratio": 1.0,
                }
            },
        },
        "policy_cost": {"policy_fraction_of_step": 0.01},
        "budget_curve": [],
    }


def test_benchmark_targets_are_judged_by_the_interval_over_seeds(denoising_script):
    """An interval whose lower end is exactly 0 meets "≥ 0" (the old `lo or -1` made it −1);
    above BM3D and ρ(σ, exit) > 0 need their intervals, not the mean or every seed's sign; the
    adaptive time needs the interval of the per-seed time ratios within 1.25 × the exit ratio."""
    results = _benchmark_results(
        vs_dncnn=[[0.0, 0.0, 0.0], [0.6, 0.6, 0.6]],
        vs_bm3d=[[0.1, 0.2, 3.0], [0.1, 0.2, 3.0]],
        rho=[0.9, 0.1, 0.05],
        stop_ms=[137.4, 72.4, 67.5],
        full_ms=[207.9, 70.7, 47.1],  # ratios 0.66, 1.02, 1.43: mean 1.04 ≤ 1.25
    )
    t = denoising_script.targets(results, 60.0)
    assert t["stop_ge_dncnn_every_sigma"]["met_by_interval"] is True
    assert t["stop_minus_dncnn_unseen_ge_0.5"]["met_by_interval"] is True
    bm3d = t["stop_above_bm3d_seen_sigma"]
    assert bm3d["met_by_mean"] is True and bm3d["met_by_interval"] is False
    spearman = t["spearman_exit_sigma"]
    assert spearman["met"] is False and spearman["over_seeds"]["lo"] < 0
    time = t["adaptive_time_within_25_percent"]
    assert time["time_ratio"] <= 1.25 and time["met"] is False
    assert time["time_ratio_per_seed"] == pytest.approx([137.4 / 207.9, 72.4 / 70.7, 67.5 / 47.1])
    assert time["time_ratio_over_seeds"]["hi"] > 1.25


def test_benchmark_targets_of_one_seed_are_judged_by_its_value(denoising_script):
    """One seed has no interval: its value decides (the old `lo or -1` missed every target)."""
    results = _benchmark_results(
        vs_dncnn=[[0.2], [0.7]], vs_bm3d=[[0.3], [-1.0]], rho=[0.4], stop_ms=[50.0], full_ms=[60.0]
    )
    t = denoising_script.targets(results, 60.0)
    assert t["stop_ge_dncnn_every_sigma"]["met_by_interval"] is True
    assert t["stop_minus_dncnn_unseen_ge_0.5"]["met_by_interval"] is True
    assert t["stop_above_bm3d_seen_sigma"]["met_by_interval"] is True
    assert t["spearman_exit_sigma"]["met"] is True
    assert t["adaptive_time_within_25_percent"]["met"] is True
    undefined = _benchmark_results([[0.2], [0.7]], [[0.3], [-1.0]], [None], [50.0], [60.0])
    assert denoising_script.targets(undefined, 60.0)["spearman_exit_sigma"]["met"] is False
    # A run with no unseen σ (or no seen one) has not measured those targets: None, never met.
    all_seen = {**results, "unseen": [False, False]}
    assert (
        denoising_script.targets(all_seen, 60.0)["stop_minus_dncnn_unseen_ge_0.5"][
            "met_by_interval"
        ]
        is None
    )
    all_unseen = {**results, "unseen": [True, True]}
    assert (
        denoising_script.targets(all_unseen, 60.0)["stop_above_bm3d_seen_sigma"]["met_by_interval"]
        is None
    )


def test_a_curve_point_prints_undefined_references_as_a_dash_and_small_costs_whole():
    """A point below the oracle frontier's cheapest cost (a rule skipping the policy) has no
    oracle number: '—', never 'nan'; a cost of 27 MACs reads 27, not '0.0k'."""
    import math

    from stopwise.tasks.denoising.report import _curve_point

    point = {
        "psnr": 13.27,
        "mean_exit": 3.0,
        "mean_cost": 27.0,
        "fixed_same_model": 14.07,
        "fixed_uniform_ds": 14.07,
        "oracle_same_cost": math.nan,
        "spearman_exit_sigma": math.nan,
    }
    entry, row = _curve_point([0, 1], [point, dict(point)])
    assert math.isnan(entry["oracle_same_cost"])
    assert row["oracle"] == "—" and row["macs"] == "27" and row["same"] == "14.07"
    assert row["gain"] == "-0.80 [-0.80, -0.80]"


def test_every_job_carries_a_digest_of_a_users_images_that_changes_with_them(tmp_path):
    """A rerun with other or changed images is other settings (refused), never the old jobs;
    the built-in photos add nothing, so the committed runs' settings are as they were."""
    root = _folder(tmp_path, 64)
    experiment = get_experiment("denoising")
    config, _ = resolve_config(experiment, "tiny", [f"images_dir={root}"])
    before = {job.name: job.params.get("data") for job in denoising_jobs(config)}
    assert all(d is not None and d.startswith("sha256:") for d in before.values())
    Image.fromarray(np.full((64, 64), 200, dtype=np.uint8)).save(root / "test" / "a.png")
    after = {job.name: job.params.get("data") for job in denoising_jobs(config)}
    assert after.keys() == before.keys() and all(after[n] != before[n] for n in before)
    built_in, _ = resolve_config(experiment, "tiny", [])
    assert all("data" not in job.params for job in denoising_jobs(built_in))


def test_the_same_images_at_another_path_are_the_same_settings(tmp_path):
    """images_dir is where the images are, not what they are (their digest is in every job's
    settings): a copy elsewhere plans the same settings, so a rerun with it reuses the jobs
    (the path itself was a setting, and a moved folder was refused)."""
    root = _folder(tmp_path, 64)
    experiment = get_experiment("denoising")

    def settings(folder):
        config, _ = resolve_config(experiment, "tiny", [f"images_dir={folder}"])
        return {p.id: p.settings for p in plan_jobs(experiment, config)}

    copied = settings(shutil.copytree(root, tmp_path / "elsewhere"))
    assert copied == settings(root)
    Image.fromarray(np.full((64, 64), 200, dtype=np.uint8)).save(root / "test" / "a.png")
    assert copied != settings(root)


@pytest.mark.parametrize(
    ("sigmas", "train", "bands"),
    [
        ([15.0, 25.0, 45.0, 65.0, 75.0], [45.0], [(12.5, 27.5), (62.5, 77.5)]),
        ([35.0, 45.0, 55.0, 65.0, 75.0], [35.0, 45.0, 55.0], [(62.5, 77.5)]),
        ([45.0, 50.0, 55.0], [45.0, 55.0], [(47.5, 52.5)]),
        ([45.0], [45.0], []),
    ],
)
def test_the_psnr_figure_shades_only_the_unseen_sigmas(sigmas, train, bands):
    """The 'σ unseen in training' band covers the unseen σ and no training σ: one band from the
    lowest unseen σ to the highest σ shaded σ=45 (a training σ) when a test σ lay below it."""
    from stopwise.tasks.denoising.report import METHODS, _psnr_figure

    quality = {key: {"psnr": {0: [20.0] * len(sigmas)}} for key, _, _ in METHODS}
    unseen = [s not in train for s in sigmas]
    axes = _psnr_figure(quality, sigmas, unseen, [0], "test").axes[0]
    shaded = [(p.get_x(), p.get_x() + p.get_width()) for p in axes.patches]
    assert [pytest.approx(band) for band in bands] == shaded
    for lo, hi in shaded:
        assert not any(lo <= s <= hi for s in train)
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels.count("σ unseen in training") == (1 if bands else 0)


def test_the_per_exit_figure_ticks_whole_exits():
    """Exits are whole numbers: no tick at 'exit 1.25'."""
    from stopwise.tasks.denoising.report import _per_exit_figure

    table = [[16.0, 14.0], [15.5, 13.0], [12.5, 11.0]]  # (exits, σ)
    jobs = {key: {0: {"exit_psnr_by_sigma": table}} for key in ("dncnn-stop", "dncnn-ds")}
    axes = _per_exit_figure(jobs, [0], [45.0, 65.0], "test").axes[0]
    assert list(axes.get_xticks()) == [1, 2, 3]
