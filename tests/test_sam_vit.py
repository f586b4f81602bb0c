"""SAM ViT backbones: parity with segment_anything's own ``Sam``, strict loading, adapters.

The reference models are built with segment_anything (``build_sam_vit_b`` for the real
ViT-B, ``Sam(ImageEncoderViT(...))`` with hyper-parameters typed here for a small ViT), given
random weights (position embeddings and relative-position tables included, which SAM
initialises to zero), and saved in the official layout; our backbones load those files.
"""

from __future__ import annotations

import functools

import pytest
import torch
from segment_anything import build_sam_vit_b, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch.nn import functional as F

from instasam.config import AdapterConfig
from instasam.errors import InputError
from instasam.model import build_backbone
from instasam.model.adapters import count_trainable
from instasam.model.backbone import available_backbones, load_sam_layout_state
from instasam.model.instasam import InstaSAM, Prompts

TOL = 1e-4
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _tiny_encoder(img_size: int) -> ImageEncoderViT:
    # vit_tiny: depth 2, width 64, 2 heads, global attention at block 1, window 4.
    return ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=2,
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=4,
        global_attn_indexes=[1],
    )


def _vit_b_encoder(img_size: int) -> ImageEncoderViT:
    # The official ViT-B hyper-parameters at another input size (build_sam_vit_b fixes 1024).
    return ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
    )


def _reference_at(encoder: ImageEncoderViT, reference: ImageEncoderViT) -> ImageEncoderViT:
    """``reference`` (SAM built for a smaller input) holding ``encoder``'s weights, its
    position tables resized: bicubic for the absolute embedding, linear for the relative
    tables of the global blocks (what SAM's get_rel_pos does on the fly)."""
    state = encoder.state_dict()
    grid = reference.pos_embed.shape[1]
    pos = state["pos_embed"].permute(0, 3, 1, 2)
    state["pos_embed"] = F.interpolate(pos, size=(grid, grid), mode="bicubic").permute(0, 2, 3, 1)
    for i, block in enumerate(reference.blocks):
        if block.window_size == 0:
            for axis in "hw":
                key = f"blocks.{i}.attn.rel_pos_{axis}"
                length = getattr(block.attn, f"rel_pos_{axis}").shape[0]
                state[key] = F.interpolate(state[key].T[None], size=length, mode="linear")[0].T
    reference.load_state_dict(state)
    return reference.eval()


def _normalised(image: torch.Tensor) -> torch.Tensor:
    return (image - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _official_sam(encoder: ImageEncoderViT) -> Sam:
    grid = encoder.img_size // 16
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(encoder.img_size, encoder.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=MEAN,
        pixel_std=STD,
    )
    return _randomise_positions(sam.eval())


def _randomise_positions(sam: Sam, seed: int = 1) -> Sam:
    """SAM zero-initialises its position tables; give them values so parity covers them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return sam


def _image(size: int, seed: int = 0) -> torch.Tensor:
    """``(1, 3, size, size)`` 0..255: smooth colour blobs plus noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return ((smooth * 0.8 + torch.rand(1, 3, size, size, generator=gen) * 0.2) * 255).clamp(0, 255)


def _point_prompts(size: int, k: int = 3, seed: int = 0) -> Prompts:
    """K prompts: one positive point and two negatives each (input coordinates)."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(k, 3, 2, generator=gen) * (size - 1)
    labels = torch.tensor([[1, 0, 0]] * k)
    return Prompts(points=points, labels=labels)


def _official_outputs(sam: Sam, image: torch.Tensor, prompts: Prompts):
    """Sam's own forward: (image embedding, single-mask low-res logits (K, M, M), iou (K,))."""
    captured = {}
    hook = sam.image_encoder.register_forward_hook(lambda m, i, o: captured.update(emb=o))
    try:
        (out,) = sam(
            [
                {
                    "image": image[0],
                    "original_size": tuple(image.shape[-2:]),
                    "point_coords": prompts.points,
                    "point_labels": prompts.labels,
                }
            ],
            multimask_output=False,
        )
    finally:
        hook.remove()
    return captured["emb"], out["low_res_logits"][:, 0], out["iou_predictions"][:, 0]


def _our_outputs(backbone, image: torch.Tensor, prompts: Prompts, adapt: bool):
    model = InstaSAM(backbone).eval()
    with torch.no_grad():
        embedding = backbone.encoder(image, adapt=adapt).embedding
        logits, iou = model.prompted_masks(embedding, prompts, frozen=True)
    return embedding, logits, iou


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _perturb_adapters(backbone, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for adapter in backbone.encoder.adapters:
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=gen) * std)


@pytest.fixture(scope="module")
def tiny_sam():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _official_sam(_tiny_encoder(256))


@pytest.fixture()
def tiny_file(tmp_path, tiny_sam):
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam.state_dict(), path)
    return path


def test_registry_offers_the_vits_and_their_settings():
    names = set(available_backbones())
    assert {"vit_b", "vit_l", "vit_h", "vit_tiny"} <= names
    for arch in ("vit_b", "vit_l", "vit_h"):
        for setting in ("crop1024-in1024", "crop512-in1024", "crop224-in512"):
            assert f"{arch}-{setting}" in names


def test_tiny_matches_official_sam_without_adapters(tiny_sam, tiny_file):
    backbone = build_backbone(
        "vit_tiny", checkpoint=str(tiny_file), adapter=AdapterConfig(enabled=False)
    )
    assert backbone.pretrained  # weights came from a file (here: random ones, for the test)
    image, prompts = _image(256), _point_prompts(256)
    ref_emb, ref_logits, ref_iou = _official_outputs(tiny_sam, image, prompts)
    emb, logits, iou = _our_outputs(backbone, image, prompts, adapt=True)
    diffs = [_max_diff(emb, ref_emb), _max_diff(logits, ref_logits), _max_diff(iou, ref_iou)]
    print(f"vit_tiny vs Sam, max |diff| embedding/logits/iou: {diffs}")
    assert max(diffs) < TOL
    assert ref_logits.std() > 0.01  # the comparison is not between two constant maps


def test_tiny_unadapted_branch_ignores_nonzero_adapters(tiny_sam, tiny_file):
    backbone = build_backbone("vit_tiny", checkpoint=str(tiny_file))
    _perturb_adapters(backbone)
    image, prompts = _image(256, seed=1), _point_prompts(256, seed=1)
    ref_emb, ref_logits, _ = _official_outputs(tiny_sam, image, prompts)
    emb, logits, _ = _our_outputs(backbone, image, prompts, adapt=False)
    assert max(_max_diff(emb, ref_emb), _max_diff(logits, ref_logits)) < TOL
    adapted, adapted_logits, _ = _our_outputs(backbone, image, prompts, adapt=True)
    print(f"vit_tiny adapted vs unadapted, max |diff| embedding: {_max_diff(adapted, emb):.3g}")
    assert _max_diff(adapted, emb) > 1e-2
    assert _max_diff(adapted_logits, logits) > 1e-2


def test_tiny_early_features_are_the_first_global_block_output(tiny_sam, tiny_file):
    backbone = build_backbone("vit_tiny", checkpoint=str(tiny_file)).eval()
    captured = {}
    hook = tiny_sam.image_encoder.blocks[1].register_forward_hook(
        lambda m, i, o: captured.update(out=o)
    )
    image = _image(256, seed=2)
    with torch.no_grad():
        tiny_sam.image_encoder(tiny_sam.preprocess(image[0])[None])
        out = backbone.encoder(image, adapt=False, early=True)
    hook.remove()
    assert out.early.shape == (1, 64, 16, 16)  # channels first
    assert _max_diff(out.early, captured["out"].permute(0, 3, 1, 2)) < TOL


def test_reduced_input_equals_sam_built_at_that_size(tiny_sam, tiny_file):
    # Input 160: 10x10 tokens, so the 4-token windows pad to 12.
    backbone = build_backbone("vit_tiny", checkpoint=str(tiny_file), input_size=160)
    assert backbone.input_size == 160 and backbone.encoder.embedding_size == 10
    reference = _reference_at(tiny_sam.image_encoder, _tiny_encoder(160))
    image = _image(160, seed=4)
    with torch.no_grad():
        expected = reference(_normalised(image))
        got = backbone.encoder(image, adapt=False).embedding
    assert got.shape == (1, 256, 10, 10)
    assert _max_diff(got, expected) < TOL


def test_strict_loading_rejects_a_removed_or_renamed_key(tiny_sam, tmp_path):
    state = tiny_sam.state_dict()
    fresh = build_backbone("vit_tiny")
    load_sam_layout_state(fresh, state)  # the complete official layout: zero missing/unexpected
    removed = dict(state)
    removed.pop("image_encoder.blocks.0.attn.rel_pos_h")
    with pytest.raises(KeyError, match="1 missing keys"):
        load_sam_layout_state(fresh, removed)
    renamed = dict(state)
    key = "image_encoder.blocks.0.attn.rel_pos_h"
    renamed[key.replace("rel_pos_h", "rel_pos_x")] = renamed.pop(key)
    with pytest.raises(KeyError, match=r"1 missing keys.*1 unexpected keys"):
        load_sam_layout_state(fresh, renamed)
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(InputError, match=r"renamed\.pth: checkpoint does not match"):
        build_backbone("vit_tiny", checkpoint=str(path))


def test_missing_official_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTASAM_CACHE", str(tmp_path))
    with pytest.raises(InputError) as info:
        build_backbone("vit_h")
    message = str(info.value)
    assert str(tmp_path / "sam_vit_h_4b8939.pth") in message
    assert "instasam weights download vit_h" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message
    with pytest.raises(InputError, match=r"nowhere\.pth: SAM checkpoint not found"):
        build_backbone("vit_b", checkpoint=str(tmp_path / "nowhere.pth"))


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_architecture_equals_the_official_builder(name):
    # Built on the meta device: shapes without memory or initialisation time.
    with torch.device("meta"):
        official = sam_model_registry[name]()
        ours = build_backbone(name, pretrained=False)
    state = official.state_dict()
    ours_state = {f"image_encoder.{k}": v for k, v in ours.encoder.trunk.state_dict().items()}
    ours_state |= {f"prompt_encoder.{k}": v for k, v in ours.prompt_encoder.state_dict().items()}
    ours_state |= {f"mask_decoder.{k}": v for k, v in ours.mask_decoder.state_dict().items()}
    assert {k: v.shape for k, v in ours_state.items()} == {k: v.shape for k, v in state.items()}
    load_sam_layout_state(ours, state)  # zero missing / unexpected keys
    official_blocks, our_blocks = official.image_encoder.blocks, ours.encoder.trunk.blocks
    assert [b.window_size for b in our_blocks] == [b.window_size for b in official_blocks]
    assert all(b.norm1.eps == 1e-6 and b.attn.use_rel_pos for b in our_blocks)
    first_global = next(i for i, b in enumerate(official_blocks) if b.window_size == 0)
    assert ours.encoder.early_block == first_global


def test_vit_b_adapter_parameter_count_and_labels():
    backbone = build_backbone("vit_b", pretrained=False)
    assert not backbone.pretrained  # random weights are labelled
    assert (backbone.crop_size, backbone.input_size, backbone.mask_size) == (224, 1024, 256)
    assert backbone.encoder.early_channels == 768
    # ViT-B: width 768, 12 blocks, patch 16; hidden = 768 // 32 = 24.
    #   F_hfc  Conv2d(3, 24, 16, stride 16): 3*24*16*16 + 24 = 18_456
    #   F_pe   Linear(768, 24):               768*24 + 24    = 18_456
    #   tune   12 x Linear(24, 24):           12*(24*24 + 24) =  7_200
    #   up     Linear(24, 768), shared:       24*768 + 768   = 19_200
    #   total                                                  63_312
    expected = (3 * 24 * 16 * 16 + 24) + (768 * 24 + 24) + 12 * (24 * 24 + 24) + (24 * 768 + 768)
    trainable = count_trainable(backbone.encoder)
    print(f"ViT-B trainable adapter parameters: {trainable} (formula {expected})")
    assert trainable == expected == 63_312
    assert all(not p.requires_grad for p in backbone.encoder.trunk.parameters())


def test_crop_input_settings_are_named_and_validated():
    fast = build_backbone("vit_b-crop224-in512", pretrained=False)
    assert fast.name == "vit_b-crop224-in512"
    assert (fast.crop_size, fast.input_size, fast.encoder.embedding_size) == (224, 512, 32)
    same = build_backbone("vit_b", pretrained=False, crop_size=512)
    assert same.name == "vit_b-crop512-in1024"  # a checkpoint records the setting by name
    with pytest.raises(ValueError, match="multiple of 16"):
        build_backbone("vit_tiny", input_size=200)
    with pytest.raises(ValueError, match="pretrained=False"):
        build_backbone("vit_b", pretrained=False, checkpoint="x.pth")


def test_tiny_trains_adapters_only_and_runs_in_instasam():
    backbone = build_backbone("vit_tiny")
    _perturb_adapters(backbone, std=0.1)
    backbone.encoder.train()
    assert not backbone.encoder.trunk.training
    out = backbone.encoder(_image(256), adapt=True, early=True)
    (out.embedding.square().mean() + out.early.square().mean()).backward()
    assert all(p.grad is None for p in backbone.encoder.trunk.parameters())
    grads = [p.grad for p in backbone.encoder.adapters.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    model = InstaSAM(build_backbone("vit_tiny")).eval()
    with torch.no_grad():
        maps = model(_image(224))  # a 224 crop, resized to the 256 input and back
    assert maps.shape == (1, 3, 224, 224)


@pytest.fixture(scope="module")
def vit_b_cache(tmp_path_factory):
    """segment_anything's ViT-B SAM with random weights, saved as the official file."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = _randomise_positions(build_sam_vit_b())
    cache = tmp_path_factory.mktemp("cache")
    torch.save(sam.state_dict(), cache / "sam_vit_b_01ec64.pth")
    return sam, cache


@pytest.mark.slow
def test_vit_b_matches_official_sam_and_loads_from_the_cache(vit_b_cache, monkeypatch):
    # One ViT-B at 1024 (10-20 s a forward on 2 cores): Sam's own forward, ours with
    # non-zero adapters switched off (adapt=False), ours adapted.
    sam, cache = vit_b_cache
    monkeypatch.setenv("INSTASAM_CACHE", str(cache))
    backbone = build_backbone("vit_b")  # found in the cache, loaded strictly
    assert backbone.pretrained and backbone.input_size == 1024
    _perturb_adapters(backbone)
    image, prompts = _image(1024), _point_prompts(1024, k=4)
    ref_emb, ref_logits, ref_iou = _official_outputs(sam, image, prompts)
    emb, logits, iou = _our_outputs(backbone, image, prompts, adapt=False)
    diffs = [_max_diff(emb, ref_emb), _max_diff(logits, ref_logits), _max_diff(iou, ref_iou)]
    print(f"vit_b vs Sam, max |diff| embedding/logits/iou: {diffs}")
    assert max(diffs) < TOL
    adapted, adapted_logits, _ = _our_outputs(backbone, image, prompts, adapt=True)
    print(f"vit_b adapted vs unadapted, max |diff| embedding: {_max_diff(adapted, emb):.3g}")
    assert _max_diff(adapted, emb) > 1e-2
    assert _max_diff(adapted_logits, logits) > 1e-2


@pytest.mark.slow
def test_vit_b_at_input_512_equals_sam_built_at_512(vit_b_cache):
    # The faster setting: the official file loads unchanged and runs on 32x32 tokens (the
    # 14-token windows pad to 42); SAM built at 512 with resized tables gives the same.
    sam, cache = vit_b_cache
    file = str(cache / "sam_vit_b_01ec64.pth")
    backbone = build_backbone("vit_b-crop224-in512", checkpoint=file)
    assert (backbone.crop_size, backbone.input_size, backbone.mask_size) == (224, 512, 128)
    reference = _reference_at(sam.image_encoder, _vit_b_encoder(512))
    image = _image(512, seed=5)
    with torch.no_grad():
        expected = reference(_normalised(image))
        got = backbone.encoder(image, adapt=False).embedding
    print(f"vit_b at 512 vs SAM built at 512, max |diff|: {_max_diff(got, expected):.3g}")
    assert got.shape == (1, 256, 32, 32)
    assert _max_diff(got, expected) < TOL
