"""Linear CKA: the minibatch estimator's maths, the layer-by-layer run on tiny real models, and
`vitsplit-vlm analyze cka` writing its JSON and heat map."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitsplit_vlm.analysis.cka import (
    MinibatchCKA,
    linear_cka,
    linear_grams,
    minibatch_cka,
    unbiased_hsic,
)
from vitsplit_vlm.cli import main


def _related(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (n, D) feature sets with a non-linear relation plus noise (CKA strictly in (0, 1))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(8, 6, generator=g, dtype=torch.float64))
    return x, y + 0.3 * torch.randn(n, 6, generator=g, dtype=torch.float64)


def test_unbiased_hsic_equals_song_u_statistic():
    """Song et al. (2012): HSIC_1 is the U-statistic over distinct 4-tuples (i, j, q, r) of
    k_ij l_ij + k_ij l_qr - 2 k_ij l_iq; brute force over all 7*6*5*4 tuples."""
    x, y = _related(7)
    k, l_ = x @ x.T, y @ y.T
    total = sum(
        k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
        for i, j, q, r in itertools.permutations(range(7), 4)
    )
    expected = float(total) / (7 * 6 * 5 * 4)
    hsic = unbiased_hsic(linear_grams([x, y]))
    assert hsic[0, 1].item() == pytest.approx(expected, rel=1e-10)
    assert hsic[1, 0].item() == pytest.approx(expected, rel=1e-10)


def test_minibatch_estimate_converges_to_the_full_batch_cka():
    x, y = _related(4000)
    full = linear_cka(x, y)
    assert 0.2 < full < 0.9  # a relation that is neither none nor identity
    for batch in (50, 200, 1000):
        assert minibatch_cka(x, y, batch) == pytest.approx(full, abs=0.01)
    # independent features: near zero (the unbiased estimator has no positive floor)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(4000, 6, generator=g, dtype=torch.float64)
    assert abs(minibatch_cka(x, noise, 200)) < 0.01


@pytest.mark.parametrize("cka", [linear_cka, lambda x, y: minibatch_cka(x, y, 64)])
def test_known_properties(cka):
    x, y = _related(512, seed=2)
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    base = cka(x, y)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3),
                                       dtype=torch.float64))  # fmt: skip
    assert cka(x, y @ q) == pytest.approx(base, abs=1e-10)  # orthogonal transform
    assert cka(x * 7.5, y) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    # and it is not invariant to an anisotropic scaling (what the invariances above rule out)
    stretch = torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64)
    assert abs(cka(x, y * stretch) - base) > 0.01


def test_accumulator_matrix_is_every_pair_over_the_same_batches():
    x, y = _related(300, seed=4)
    z = x[:, :3] ** 2
    acc = MinibatchCKA(3)
    for start in range(0, 300, 60):
        acc.update([x[start : start + 60], y[start : start + 60], z[start : start + 60]])
    matrix = acc.compute()
    assert acc.batches == 5 and acc.examples == 300
    assert torch.allclose(matrix, matrix.T)
    assert torch.allclose(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    assert matrix[0, 1].item() == pytest.approx(minibatch_cka(x, y, 60), abs=1e-12)
    assert matrix[1, 2].item() == pytest.approx(minibatch_cka(y, z, 60), abs=1e-12)


def test_too_small_batches_are_refused():
    x, y = _related(3)
    with pytest.raises(ValueError, match="at least 4 examples"):
        unbiased_hsic(linear_grams([x, y]))
    with pytest.raises(ValueError, match="no minibatch"):
        MinibatchCKA(2).compute()


# ---- on tiny real models ---------------------------------------------------------------------


def photo_folder(folder, count: int = 5, size: tuple[int, int] = (96, 80)):
    """`count` small RGB images (smooth random blobs, seeded) written as PNG; also used by
    test_analysis_feature_maps."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def test_layer_cka_matches_transformers_hidden_states(tiny, tmp_path):
    """Every matrix entry equals the minibatch CKA of the patch tokens that transformers' own
    forward pass (`output_hidden_states`) gives, batch by batch."""
    from transformers import AutoModel

    from vitsplit_vlm.analysis.inputs import image_source, load_backbone
    from vitsplit_vlm.analysis.layer_cka import run_layer_cka

    folder = photo_folder(tmp_path / "imgs", 6)
    backbone = load_backbone(tiny.dinov2)
    result = run_layer_cka(backbone, image_source(folder), tokens="patch", batch_size=4)
    assert result.layers == list(range(1, 9)) and result.images == 6 and result.batches == 2
    assert result.examples == 6 * 64

    model = AutoModel.from_pretrained(tiny.dinov2).eval()
    images = [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())]
    acc = MinibatchCKA(2)
    for batch in (images[:4], images[4:]):
        with torch.no_grad():
            states = model(backbone.preprocess(batch), output_hidden_states=True).hidden_states
        acc.update([states[i][:, 1:].reshape(-1, 192) for i in (2, 8)])
    assert result.matrix[1, 7].item() == pytest.approx(acc.compute()[0, 1].item(), abs=1e-5)


def test_cls_and_mean_tokens_and_a_model_without_cls(tiny, tmp_path):
    from vitsplit_vlm.analysis.inputs import image_source, load_backbone
    from vitsplit_vlm.analysis.layer_cka import run_layer_cka

    folder = photo_folder(tmp_path / "imgs", 9)
    clip = load_backbone(tiny.clip)
    result = run_layer_cka(clip, image_source(folder), tokens="cls", batch_size=4)
    assert result.images == 8 and result.unused == 1  # a last batch of 1 image is too small
    assert result.examples == 8 and result.matrix.shape == (4, 4)
    siglip = load_backbone(tiny.siglip)
    mean = run_layer_cka(siglip, image_source(folder), tokens="mean", batch_size=4)
    assert torch.isfinite(mean.matrix).all()
    with pytest.raises(ValueError, match="no CLS token"):
        run_layer_cka(siglip, image_source(folder), tokens="cls", batch_size=4)


def test_cli_writes_json_and_heatmap(tiny, tmp_path, capsys):
    folder = photo_folder(tmp_path / "imgs", 5)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = main(["analyze", "cka", "--backbone", str(tiny.dinov2), "--images", str(folder),
                 "--out", str(out), "--batch-size", "4", "--tokens-per-image", "16",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "cka.json").read_text())
    assert record["layers"] == list(range(1, 9)) and record["tokens"] == "patch"
    assert record["num_images"] == 5 and record["num_examples"] == 5 * 16
    assert len(record["images_skipped"]) == 1 and "broken.jpg" in record["images_skipped"][0]
    matrix = np.array(record["matrix"])
    assert (
        matrix.shape == (8, 8) and np.allclose(np.diag(matrix), 1) and np.allclose(matrix, matrix.T)
    )
    with Image.open(out / "cka.png") as png:
        assert png.size[0] > 200 and png.size[1] > 200
    assert "skipped 1 unreadable image" in capsys.readouterr().out


def test_cli_default_images_are_scikit_image_photos(tiny, tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "out"
    assert main(["analyze", "cka", "--backbone", str(tiny.clip), "--out", str(out),
                 "--max-images", "4", "--batch-size", "4", "--no-progress"]) == 0  # fmt: skip
    record = json.loads((out / "cka.json").read_text())
    assert record["images"] == "scikit-image photos" and record["num_images"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "{tmp}/nope"], "--backbone {tmp}/nope: not a Hugging Face model folder"),
        (["--images", "{tmp}/missing"], "--images {tmp}/missing: no such file or folder"),
        (["--images", "{tmp}/empty"], "--images {tmp}/empty: no image files in it"),
    ],
)
def test_cli_bad_paths_are_one_line_errors(tiny, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    if "--backbone" not in args:
        args += ["--backbone", str(tiny.dinov2)]
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "cka", *args, "--out", str(tmp_path / "o"), "--no-progress"])
    text = str(exit_info.value.code)
    assert text.startswith("vitsplit-vlm analyze cka: error: ")
    assert message.format(tmp=tmp_path) in text and "\n" not in text


def test_any_automodel_with_hidden_states(tmp_path):
    """A family the ViT-Split trunk registry does not know (BEiT) goes through
    `output_hidden_states`; a folder without an image processor is resized to the config's size
    with ImageNet statistics."""
    from transformers import BeitConfig, BeitModel

    from vitsplit_vlm.analysis.inputs import image_source, load_backbone
    from vitsplit_vlm.analysis.layer_cka import run_layer_cka

    torch.manual_seed(0)
    config = BeitConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=64)  # fmt: skip
    BeitModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "beit")
    backbone = load_backbone(tmp_path / "beit")
    assert backbone.num_blocks == 3 and backbone.num_prefix_tokens == 1
    result = run_layer_cka(backbone, image_source(photo_folder(tmp_path / "imgs", 4)),
                           batch_size=4)  # fmt: skip
    assert result.examples == 4 * 16 and result.matrix.shape == (3, 3)
    assert torch.allclose(result.matrix.diagonal(), torch.ones(3, dtype=torch.float64))
