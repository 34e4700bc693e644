"""Captioning and encoding on the tiny models: SDXL-exact conditioning, NaN guard, alignment.

Unit tests, no Ray: `CaptionBatch` and `EncodeBatch` are called on hand-made numpy batches
shaped like the ones Ray Data hands an actor pool.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from bluepri.data.caption import (
    GIVEN,
    CaptionBatch,
    _non_eos_special_ids,
    caption_images,
    join_caption,
)
from bluepri.data.encode import (
    CPU_VAE_PIXELS_PER_CALL,
    EncodeBatch,
    Fp32Vae,
    encode_latent_dist,
    encode_latents,
    encode_pixel_rows,
    encode_prompts,
    load_text_encoders,
    load_vae_for,
    vae_pixels_per_call,
)
from bluepri.data.transforms import to_tensor_input
from bluepri.errors import BluepriError
from bluepri.models.loading import load_base, load_captioner

CAPTIONS = ["a blueprint of a small house with two rooms", "a drawing of a gear and bolts"]
CAPTIONS_2 = ["technical engineering lines on blue paper", "a detailed car side view"]


@pytest.fixture(scope="module")
def pipe():
    return load_base("tiny:base")


@pytest.fixture(scope="module")
def text():
    return load_text_encoders("tiny:base")


@pytest.fixture(scope="module")
def vae():
    return load_vae_for("tiny:base", vae_ref=None)


def pixels(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width, generator=generator) * 2 - 1


def picture(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def object_array(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


# --- prompts ---------------------------------------------------------------------------


@pytest.mark.parametrize("captions_2", [None, CAPTIONS_2])
def test_encode_prompts_matches_sdxl_pipeline(pipe, text, captions_2):
    with torch.inference_mode():
        ours, ours_pooled = encode_prompts(text.tokenizers, text.encoders, CAPTIONS, captions_2)
        theirs, _, theirs_pooled, _ = pipe.encode_prompt(
            CAPTIONS, prompt_2=captions_2, device="cpu", do_classifier_free_guidance=False
        )
    d1, d2 = (encoder.config.hidden_size for encoder in text.encoders)
    assert ours.shape == (2, 77, d1 + d2)
    assert ours_pooled.shape == (2, text.encoders[1].config.projection_dim)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_pooled, theirs_pooled, atol=1e-6, rtol=0)


def test_long_caption_is_truncated_to_77_tokens(text):
    long = " ".join(["a detailed blueprint of a large house with windows and doors"] * 20)
    with torch.inference_mode():
        embeds, pooled = encode_prompts(
            text.tokenizers, text.encoders, [long, long + " and a kitchen sink"]
        )
    assert embeds.shape[:2] == (2, 77)
    assert torch.isfinite(embeds).all() and torch.isfinite(pooled).all()
    # Words past token 77 are cut, so they cannot change anything.
    torch.testing.assert_close(embeds[0], embeds[1], atol=0, rtol=0)
    torch.testing.assert_close(pooled[0], pooled[1], atol=0, rtol=0)


# --- latents ---------------------------------------------------------------------------


def test_encode_latents_shapes_scaling_and_determinism(vae):
    x = pixels(2, 48, 80)
    mean, std, recomputed = encode_latents(vae, x)
    assert mean.shape == std.shape == (2, 4, 6, 10)
    assert mean.dtype == std.dtype == torch.float32
    assert recomputed == 0
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    scale = vae.config.scaling_factor
    torch.testing.assert_close(mean, dist.mean * scale, atol=1e-6, rtol=0)
    torch.testing.assert_close(std, dist.std * scale, atol=1e-6, rtol=0)
    again, again_std, _ = encode_latents(vae, x)
    assert torch.equal(mean, again) and torch.equal(std, again_std)


def overflowing_fp16_vae(vae):
    """A float16 copy whose first conv overflows fp16 on bright pictures but not dark ones.

    Like the real SDXL VAE in fp16, the activations exceed 65504 while the weights are
    finite; the same network in float32 handles them (the next GroupNorm rescales).
    """
    low = copy.deepcopy(vae).to(torch.float16)
    with torch.no_grad():
        low.encoder.conv_in.weight.fill_(1e4)
    return low


def test_nan_guard_recomputes_overflowing_samples_in_fp32(vae):
    low = overflowing_fp16_vae(vae)
    x = pixels(2, 32, 48)
    x[0] *= 1e-3  # dark: stays finite in fp16
    x[1] = 1.0  # white paper: 27 * 1e4 overflows fp16
    raw = encode_latent_dist(low, x, nan_guard=False)
    assert torch.isfinite(raw.mean[0]).all() and not torch.isfinite(raw.mean[1]).all()

    fallback = Fp32Vae(low)
    mean, std, recomputed = encode_latents(low, x, fp32_vae=fallback)
    assert recomputed == 1
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    assert torch.equal(mean[0], raw.mean[0])  # the fine sample keeps its fp16 result
    with torch.no_grad():
        fp32_dist = fallback.get().encode(x[1:]).latent_dist
    torch.testing.assert_close(mean[1:], fp32_dist.mean * low.config.scaling_factor)
    # The float32 copy is made once, kept on the fallback, and leaves the fp16 VAE alone.
    assert fallback.get() is fallback.get() and fallback.get().dtype == torch.float32
    assert low.dtype == torch.float16


def test_nan_guard_refuses_non_finite_float32_latents(vae):
    broken = copy.deepcopy(vae)
    with torch.no_grad():
        broken.encoder.conv_in.weight.fill_(float("inf"))
    with pytest.raises(BluepriError, match="non-finite latents in float32"):
        encode_latents(broken, pixels(1, 16, 16))


# --- captions --------------------------------------------------------------------------


def test_join_caption_collapses_whitespace():
    assert join_caption("a blueprint of", "  a  house\n ", "") == "a blueprint of a house"
    assert join_caption("", "gear", " , white ") == "gear , white"


def test_caption_images_is_deterministic_and_non_empty():
    captioner = load_captioner("tiny:blip")
    images = [Image.fromarray(picture(40, 70, seed)) for seed in range(3)]
    first = caption_images(captioner, images, prefix="a blueprint of")
    assert first == caption_images(captioner, images, prefix="a blueprint of")
    assert all(c.startswith("a blueprint of ") and len(c) > len("a blueprint of ") for c in first)
    assert all(c == " ".join(c.split()) for c in first)


def test_caption_end_token_is_never_suppressed():
    """BLIP-large ends captions on [SEP] (102) while its text config's eos id is 2."""
    captioner = load_captioner("tiny:blip")
    tokenizer = captioner.processor.tokenizer
    real_like = SimpleNamespace(
        config=SimpleNamespace(
            text_config=SimpleNamespace(sep_token_id=tokenizer.sep_token_id, eos_token_id=2)
        )
    )
    suppressed = _non_eos_special_ids(tokenizer, real_like)
    assert tokenizer.sep_token_id not in suppressed
    assert {tokenizer.pad_token_id, tokenizer.unk_token_id} <= set(suppressed)


def test_caption_batch_fills_only_missing_captions_on_mixed_sizes():
    captioner = CaptionBatch("tiny:blip", prefix="a blueprint of", suffix="white lines")
    batch = {
        "image": object_array([picture(32, 48, 0), picture(64, 40, 1), picture(50, 50, 2)]),
        "caption": object_array(["  a given caption  ", None, " \t "]),
        "sample_id": np.array(["a", "b", "c"]),
    }
    out = captioner(batch)
    assert out["caption"][0] == "  a given caption  "  # untouched, whitespace and all
    assert list(out["caption_source"]) == [GIVEN, "tiny:blip", "tiny:blip"]
    for made in out["caption"][1:]:
        assert made.startswith("a blueprint of ") and made.endswith(" white lines")
        assert made.strip() != "a blueprint of white lines"  # the model added words
    assert list(out["sample_id"]) == ["a", "b", "c"]
    assert captioner.rows_captioned == 2


def test_caption_batch_skips_the_model_when_all_rows_have_captions(monkeypatch):
    captioner = CaptionBatch("tiny:blip")

    def must_not_run(*args, **kwargs):
        raise AssertionError("generate ran on a fully captioned batch")

    monkeypatch.setattr(captioner.captioner.model, "generate", must_not_run)
    out = captioner(
        {
            "image": np.stack([picture(16, 16, s) for s in range(2)]),
            "caption": object_array(["one", "two"]),
        }
    )
    assert list(out["caption"]) == ["one", "two"]
    assert list(out["caption_source"]) == [GIVEN, GIVEN]


def test_caption_batch_recaption_replaces_every_caption():
    captioner = CaptionBatch("tiny:blip", recaption=True)
    images = np.stack([picture(24, 24, s) for s in range(2)])  # one size: a 4-D array
    out = captioner({"image": images, "caption": object_array(["keep me?", None])})
    assert list(out["caption_source"]) == ["tiny:blip", "tiny:blip"]
    assert "keep me?" not in list(out["caption"])
    assert all(c.strip() for c in out["caption"])


# --- the encode actor ------------------------------------------------------------------


def test_encode_batch_rows_are_encoded_alone(text, vae):
    encoder = EncodeBatch("tiny:base")
    x = pixels(2, 32, 48, seed=3)
    batch = {
        "pixels": x.numpy(),
        "caption": object_array(CAPTIONS),
        "sample_id": np.array(["s0", "s1"]),
    }
    out = encoder(batch)
    assert "pixels" not in out
    assert set(out) == {
        "caption", "sample_id", "latents", "latents_std", "nan_recomputed",
        "prompt_embeds", "pooled_prompt_embeds",
    }  # fmt: skip
    d1, d2 = (e.config.hidden_size for e in text.encoders)
    assert out["latents"].shape == out["latents_std"].shape == (2, 4, 4, 6)
    assert out["prompt_embeds"].shape == (2, 77, d1 + d2)
    assert out["pooled_prompt_embeds"].shape == (2, text.encoders[1].config.projection_dim)
    assert all(out[k].dtype == np.float32 for k in ("latents", "prompt_embeds"))
    assert list(out["nan_recomputed"]) == [0, 0]
    assert encoder.rows_encoded == 2

    for i in range(2):  # each row equals that row's own image and caption, encoded alone
        with torch.inference_mode():
            embeds, pooled = encode_prompts(text.tokenizers, text.encoders, [CAPTIONS[i]])
        mean, std, _ = encode_latents(vae, x[i : i + 1])
        np.testing.assert_allclose(out["prompt_embeds"][i], embeds[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(out["pooled_prompt_embeds"][i], pooled[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(out["latents"][i], mean[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["latents_std"][i], std[0].numpy(), atol=1e-5)


def test_encode_batch_latents_only_takes_object_array_pixels():
    encoder = EncodeBatch("tiny:base", encode_text=False)
    rows = object_array([pixels(1, 16, 24, seed=s)[0].numpy() for s in range(3)])
    out = encoder({"pixels": rows, "caption": object_array([None, None, None])})
    assert out["latents"].shape == (3, 4, 2, 3)
    assert "prompt_embeds" not in out and "pixels" not in out


def test_encode_batch_from_mixed_size_images_keeps_rows_in_place(vae):
    """Without a `pixels` column the uint8 `image` rows are used; sizes may differ."""
    encoder = EncodeBatch("tiny:base", encode_text=False)
    images = [picture(16, 24, 0), picture(24, 16, 1), picture(16, 24, 2)]
    out = encoder({"image": object_array(images), "caption": object_array(["a", "b", "c"])})
    assert [row.shape for row in out["latents"]] == [(4, 2, 3), (4, 3, 2), (4, 2, 3)]
    assert "image" in out  # left for the caller, who may still want it
    for row, image in zip(out["latents"], images, strict=True):
        alone = torch.from_numpy(to_tensor_input(Image.fromarray(image)))[None]
        np.testing.assert_allclose(row, encode_latents(vae, alone)[0][0].numpy(), atol=1e-5)
    assert encoder.rows_encoded == 3 and encoder.batches_encoded == 1


def test_vae_takes_large_pictures_in_pieces_and_rows_stay_in_place(vae, monkeypatch):
    rows = [pixels(1, 16, 24, seed=s)[0].numpy() for s in range(5)]
    rows.insert(2, pixels(1, 24, 16, seed=9)[0].numpy())
    sizes: list[int] = []
    encode = vae.encode

    def counting_encode(batch):
        sizes.append(len(batch))
        return encode(batch)

    monkeypatch.setattr(vae, "encode", counting_encode)
    means, stds, flags = encode_pixel_rows(vae, rows, pixels_per_call=2 * 16 * 24)
    assert sorted(sizes) == [1, 1, 2, 2]  # five 16x24 rows in twos, the 24x16 row alone
    monkeypatch.setattr(vae, "encode", encode)
    for row, mean, std in zip(rows, means, stds, strict=True):
        alone_mean, alone_std, _ = encode_latents(vae, torch.from_numpy(row)[None])
        np.testing.assert_allclose(mean, alone_mean[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(std, alone_std[0].numpy(), atol=1e-5)
    assert flags == [0] * 6


def test_vae_call_size_is_limited_on_cpu_only():
    assert vae_pixels_per_call("cpu") == CPU_VAE_PIXELS_PER_CALL
    assert vae_pixels_per_call("cuda:0") is None
    assert EncodeBatch("tiny:base", encode_text=False).pixels_per_call == CPU_VAE_PIXELS_PER_CALL
