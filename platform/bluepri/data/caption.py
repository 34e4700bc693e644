"""BLIP captions for pictures that have none (or for all of them, on `--recaption`).

This module owns step 4 of the data stage. `caption_images` is the pure function: a loaded
`Captioner` and PIL pictures in, one clean caption per picture out, from ONE batched beam
search (no sampling, so the same pictures and model give the same captions on every run).
`CaptionBatch` wraps it for a Ray Data actor pool: its `__init__` loads the model once per
actor, its `__call__` fills the `caption` column of a numpy batch only where a caption is
missing, and records in `caption_source` where each caption came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from bluepri.data.columns import object_column
from bluepri.models.loading import Captioner, load_captioner

GIVEN = "given"

# BLIP's own captioning defaults (LAVIS `blip_caption.generate`): 3 beams, up to 30 tokens,
# at least ~5 words after the prompt. The minimum also keeps a random-weight tiny model from
# stopping at once and leaving an empty caption.
MAX_NEW_TOKENS = 30
MIN_NEW_TOKENS = 5
NUM_BEAMS = 3


def caption_images(
    captioner: Captioner,
    images: Sequence[Image.Image],
    *,
    prefix: str = "",
    suffix: str = "",
    max_new_tokens: int = MAX_NEW_TOKENS,
    min_new_tokens: int = MIN_NEW_TOKENS,
    num_beams: int = NUM_BEAMS,
) -> list[str]:
    """One caption per picture, `prefix caption suffix` joined by single spaces.

    Deterministic: beam search without sampling. Special tokens are skipped when decoding
    and also barred from being generated, so a caption is never empty after decoding.
    """
    if not images:
        return []
    model, processor = captioner.model, captioner.processor
    rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
    inputs = processor(images=rgb, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        tokens = model.generate(
            pixel_values=pixel_values,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min(min_new_tokens, max_new_tokens),
            num_beams=num_beams,
            do_sample=False,
            suppress_tokens=_non_eos_special_ids(processor.tokenizer, model),
        )
    texts = processor.batch_decode(tokens, skip_special_tokens=True)
    return [join_caption(prefix, text, suffix) for text in texts]


def _non_eos_special_ids(tokenizer: Any, model: Any) -> list[int]:
    """Special tokens ([PAD], [UNK], [DEC], ...) other than the one that ends a caption.

    Decoding drops them, so a caption made only of them would come out empty. BLIP's
    `generate` stops on `text_config.sep_token_id` ([SEP]), NOT on the generation config's
    eos id (2 in BLIP-large): that is the token that must stay allowed.
    """
    return sorted(set(tokenizer.all_special_ids) - {model.config.text_config.sep_token_id})


def join_caption(prefix: str, caption: str, suffix: str) -> str:
    """`prefix caption suffix` with all whitespace runs collapsed to single spaces."""
    return " ".join(f"{prefix} {caption} {suffix}".split())


def needs_caption(value: Any) -> bool:
    """Missing, empty or blank captions need one; so do NaNs (pandas' missing value)."""
    return not isinstance(value, str) or not value.strip()


def rows_to_images(images: Any) -> list[Image.Image]:
    """A batch's `image` column as PIL pictures.

    Ray Data gives a 4-D uint8 array when all pictures share one size, and an object array
    of 3-D arrays when they do not; both iterate row by row.
    """
    return [Image.fromarray(np.asarray(row, dtype=np.uint8)) for row in images]


class CaptionBatch:
    """Fills missing captions in a Ray Data numpy batch; load once, call per batch.

    Use with `Dataset.map_batches(CaptionBatch, fn_constructor_kwargs={...},
    compute=ActorPoolStrategy(...))`. Input columns: `image` (uint8 HxWx3 rows) and
    `caption` (str or None; an absent column means no row has one). Output: the same
    batch with `caption` filled and a `caption_source` column, "given" or the captioner's
    ref (e.g. "Salesforce/blip-image-captioning-large").
    """

    def __init__(
        self,
        captioner_ref: str,
        *,
        prefix: str = "",
        suffix: str = "",
        recaption: bool = False,
        device: str = "cpu",
        dtype: str = "float32",
        max_new_tokens: int = MAX_NEW_TOKENS,
        num_beams: int = NUM_BEAMS,
    ) -> None:
        self.captioner = load_captioner(captioner_ref, dtype=dtype, device=device)
        self.prefix = prefix
        self.suffix = suffix
        self.recaption = recaption
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.rows_captioned = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"]
        given = batch.get("caption")
        captions = [None] * len(images) if given is None else list(given)
        todo = [i for i, c in enumerate(captions) if self.recaption or needs_caption(c)]
        sources = [GIVEN] * len(captions)
        if todo:  # a fully captioned batch never touches the model
            made = caption_images(
                self.captioner,
                rows_to_images(images[i] for i in todo),
                prefix=self.prefix,
                suffix=self.suffix,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
            )
            for i, caption in zip(todo, made, strict=True):
                captions[i] = caption
                sources[i] = self.captioner.ref
            self.rows_captioned += len(todo)
        return {
            **batch,
            "caption": object_column(captions),
            "caption_source": object_column(sources),
        }
