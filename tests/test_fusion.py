"""The fused design: the nuclei network plus SAM's whole-tile embedding (tiny backbone)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from instasam.augment import CropTransform
from instasam.cli import main
from instasam.config import NetConfig, NucleiNetConfig
from instasam.model.sam_embedding import CachedEmbedder, SamEmbedder, padded_side
from instasam.model.unet import NucleiUNet
from instasam.predict.tiles import NetPredictor, load_predictor, predict_net_maps
from instasam.training.crops import (
    LabelledTile,
    crop_embedding,
    crop_targets,
    sample_crop,
    training_batch,
)
from instasam.training.loop import batch_losses

FUSED = NucleiNetConfig(widths=(4, 8, 16), sam_backbone="litemedsam_tiny", centre_head=False)


def nuclei(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), (230, 190, 210), dtype=np.uint8)
    labels = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, 7):
        cy, cx = rng.integers(9, size - 9, size=2)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 49) & (labels == 0)
        labels[inside] = k
        image[inside] = (90, 60, 150)
    return image, labels


def test_embedding_covers_the_padded_square_in_cells_of_four_pixels():
    embedder = SamEmbedder("litemedsam_tiny")
    image, _ = nuclei(size=70)
    side = padded_side(70, 70)
    assert side == 80
    out = embedder(image)
    assert out.shape == (1, 256, side // 4, side // 4)
    assert torch.equal(out, out.half().float())  # rounded, so the cache is exact


def test_a_translation_by_whole_cells_copies_the_tiles_cells_and_a_flip_mirrors_them():
    embedding = np.random.default_rng(0).normal(size=(5, 20, 20)).astype(np.float32)
    shift = CropTransform(np.array([[1.0, 0.0, 8.0], [0.0, 1.0, 12.0]]), 32)
    assert np.allclose(crop_embedding(embedding, shift), embedding[:, 3:11, 2:10], atol=1e-5)
    # x -> 31 - u: the crop is the tile's left 32 px mirrored.
    mirror = CropTransform(np.array([[-1.0, 0.0, 31.0], [0.0, 1.0, 0.0]]), 32)
    assert np.allclose(crop_embedding(embedding, mirror), embedding[:, :8, 7::-1], atol=1e-5)
    # Half a cell over: the average of two neighbours (bilinear).
    half = CropTransform(np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]), 32)
    expected = (embedding[:, :8, :8] + embedding[:, :8, 1:9]) / 2
    assert np.allclose(crop_embedding(embedding, half), expected, atol=1e-5)


def test_training_from_the_cache_gives_the_loss_of_embeddings_made_on_the_fly(tmp_path):
    image, labels = nuclei()
    embedder = SamEmbedder("litemedsam_tiny")
    cached = CachedEmbedder(embedder, tmp_path / "cache")
    first = cached(image)  # computed and written
    assert cached.path(image).is_file()
    again = cached(image)  # read back
    fresh = embedder(image)
    assert torch.equal(again, fresh) and torch.equal(first, fresh)

    config = replace(NetConfig(net=FUSED), train=replace(NetConfig().train, crop_size=64))
    torch.manual_seed(0)
    net = NucleiUNet(FUSED)
    losses = []
    for embedding in (again, fresh):
        tile = LabelledTile("a", image, labels, embedding[0].numpy())
        rng = np.random.default_rng(3)
        crop, crop_labels, transform = sample_crop(tile, 64, config.augment, rng)
        sam = crop_embedding(tile.embedding, transform)[None]
        parts = batch_losses(net, crop[None], [crop_targets(crop_labels)], config, "fp32", sam)
        losses.append({k: v.item() for k, v in parts.items()})
    assert losses[0] == losses[1]


def test_a_batch_carries_each_crops_embedding():
    image, labels = nuclei()
    embedding = SamEmbedder("litemedsam_tiny")(image)[0].numpy()
    config = replace(NetConfig().train, batch_size=3, crop_size=64)
    tiles = [LabelledTile("a", image, labels, embedding)]
    images, _, sam = training_batch(
        tiles, config, NetConfig().augment, "hovernet", np.random.default_rng(0)
    )
    assert images.shape == (3, 64, 64, 3) and sam.shape == (3, 256, 16, 16)


def test_the_fused_network_needs_and_uses_the_embedding():
    torch.manual_seed(0)
    net = NucleiUNet(FUSED).eval()
    image, _ = nuclei(size=70)
    with pytest.raises(ValueError, match="fused"):
        predict_net_maps(net, image, "fp32")
    embedder = SamEmbedder("litemedsam_tiny")
    fg, hv = predict_net_maps(net, image, "fp32", embed=embedder)
    assert fg.shape == (70, 70) and hv.shape == (2, 70, 70)
    blank = predict_net_maps(net, image, "fp32", embed=lambda im: embedder(im) * 0)[0]
    assert not np.allclose(fg, blank, atol=1e-4)  # the embedding changes the maps
    fg_flips, _ = predict_net_maps(net, image, "fp32", flips=True, embed=embedder)
    assert fg_flips.shape == (70, 70)


def test_a_fused_network_predicts_large_images_window_by_window():
    torch.manual_seed(0)
    net = NucleiUNet(FUSED).eval()
    image, _ = nuclei(size=150, seed=2)
    calls = []
    embedder = SamEmbedder("litemedsam_tiny")

    def embed(window):
        calls.append(window.shape[:2])
        return embedder(window)

    fg, hv = predict_net_maps(net, image, "fp32", window=96, embed=embed)
    assert fg.shape == (150, 150) and hv.shape == (2, 150, 150)
    assert len(calls) > 1 and all(shape == (96, 96) for shape in calls)


def test_train_with_sam_fusion_then_predict_through_the_cli(prepared, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(NetConfig(net=NucleiNetConfig(widths=(4, 8, 16))).to_dict()))
    run = tmp_path / "run"
    argv = ["train", "--data", str(prepared / "train"), "--val", str(prepared / "test")]
    argv += ["--out", str(run), "--pseudo", "gt", "--steps", "2", "--batch-size", "1"]
    argv += ["--config", str(config), "--quiet", "--sam-fusion", "--backbone", "litemedsam_tiny"]
    assert main(argv) == 0
    assert list((run / "cache" / "embeddings").glob("*.npy"))
    predictor = load_predictor(run / "model.pt", precision="fp32")
    assert isinstance(predictor, NetPredictor) and predictor.net.fused
    image = np.asarray(Image.open(next((prepared / "test" / "images").iterdir())))
    assert predictor.predict_instances(image[..., :3]).shape == image.shape[:2]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arch", "instasam"], "--sam-fusion: applies to --arch net only"),
        (["--backbone", "sam_vit_b"], "--backbone: --sam-fusion takes litemedsam"),
    ],
)
def test_sam_fusion_refuses_what_it_cannot_do(prepared, tmp_path, capsys, extra, message):
    argv = ["train", "--data", str(prepared / "train"), "--out", str(tmp_path / "r")]
    assert main([*argv, "--sam-fusion", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("instasam: error: ") and message in err[0]
    assert not (tmp_path / "r" / "last.pt").exists()


def test_a_checkpoint_fused_with_an_unknown_backbone_is_refused(tmp_path):
    from instasam.errors import InputError
    from instasam.model.unet import net_from_payload, save_net

    save_net(tmp_path / "m.pt", NucleiUNet(FUSED), NetConfig(net=FUSED))
    payload = torch.load(tmp_path / "m.pt", weights_only=False)
    assert net_from_payload(payload, tmp_path / "m.pt")[0].fused
    payload["config"]["net"]["sam_backbone"] = "sam_vit_b"
    with pytest.raises(InputError, match="sam_backbone 'sam_vit_b'"):
        net_from_payload(payload, tmp_path / "m.pt")
