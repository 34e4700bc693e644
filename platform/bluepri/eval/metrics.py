"""Image metrics of evaluations, through torchmetrics: CLIP score, FID and KID.

- CLIP score: torchmetrics' `CLIPScore` (100 x the cosine of image and prompt embeddings,
  floored at 0, averaged) with a CLIP model loaded through bluepri's model references, so
  `openai/clip-vit-large-patch14`, a local folder and the offline `tiny:clip` load alike.
- FID and KID: torchmetrics' `FrechetInceptionDistance` and `KernelInceptionDistance` on
  features computed ONCE per image set and handed to both. The features are the standard
  Inception-v3 pool features (torch-fidelity's network, as torchmetrics uses it) when that
  package and its weights are present, else the CLIP model's image embeddings ("CLIP-FID");
  which one is recorded with every result, since the two scales do not compare.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bluepri.errors import BluepriError

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file
INCEPTION_ENV = "BLUEPRI_INCEPTION_WEIGHTS"
FEATURE_BATCH = 32
KID_SUBSETS = 100

ImageLike = Image.Image | np.ndarray


@dataclass
class FidKid:
    fid: float
    kid_mean: float
    kid_std: float


@dataclass
class Features:
    """How images become feature vectors for FID/KID, and the name results record."""

    name: str
    extract: Callable[[torch.Tensor], torch.Tensor]  # uint8 N x 3 x H x W -> N x D


def as_uint8_chw(image: ImageLike) -> torch.Tensor:
    """A 3 x H x W uint8 tensor of a PIL image (any mode) or an HxWx3 uint8 array."""
    array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise BluepriError(f"images must be HxWx3 uint8, got {array.dtype} {array.shape}")
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)


def same_size(images: Sequence[ImageLike], what: str) -> tuple[int, int]:
    """The (width, height) every image of a set shares; one line when they differ."""
    sizes = {
        (i.width, i.height) if isinstance(i, Image.Image) else (i.shape[1], i.shape[0])
        for i in images
    }
    if len(sizes) != 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise BluepriError(f"{what} must share one size to be scored together, got {listed}")
    return sizes.pop()


def clip_score(images: Sequence[ImageLike], prompts: Sequence[str], clip: tuple[Any, Any]) -> float:
    """Mean CLIP score of each image against its prompt (torchmetrics' `CLIPScore`)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(images) != len(prompts) or not images:
        raise BluepriError(f"CLIP score needs one prompt per image, got {len(images)} images "
                           f"and {len(prompts)} prompts")  # fmt: skip
    model, processor = clip
    metric = CLIPScore(model_name_or_path=lambda: (EmbeddingTensors(model), processor))
    for start in range(0, len(images), FEATURE_BATCH):
        chunk = slice(start, start + FEATURE_BATCH)
        metric.update([as_uint8_chw(i) for i in images[chunk]], list(prompts[chunk]))
    return float(metric.compute())


class EmbeddingTensors(torch.nn.Module):
    """A CLIPModel whose `get_*_features` return the projected embeddings as tensors.

    transformers 5 returns a model output (embeddings in `pooler_output`) where torchmetrics
    1.9's CLIPScore expects the tensor transformers 4 returned."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return embedding_tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return embedding_tensor(self.model.get_text_features(*args, **kwargs))


def embedding_tensor(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_image_features(clip: tuple[Any, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """CLIP's projected image embeddings of uint8 images (its processor resizes and crops)."""
    model, processor = clip

    def extract(images: torch.Tensor) -> torch.Tensor:
        inputs = processor(images=list(images), return_tensors="pt")
        with torch.no_grad():
            output = model.get_image_features(pixel_values=inputs["pixel_values"])
        return embedding_tensor(output).float()

    return extract


def inception_weights() -> Path | None:
    """torch-fidelity's Inception-v3 weights where present ($BLUEPRI_INCEPTION_WEIGHTS, or
    torch hub's cache where torch-fidelity downloads them), else None."""
    named = os.environ.get(INCEPTION_ENV)
    candidates = [Path(named)] if named else []
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS)
    return next((path for path in candidates if path.is_file()), None)


def inception_available() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("torch_fidelity") is not None and inception_weights() is not None
    )


def inception_features() -> Callable[[torch.Tensor], torch.Tensor]:
    """The standard FID features: Inception-v3's 2048 pool features of uint8 images."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    network = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048"],
        feature_extractor_weights_path=str(inception_weights()),
    )

    def extract(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return network(images).float()

    return extract


def choose_features(kind: str, clip: tuple[Any, Any] | None, clip_ref: str) -> Features:
    """`inception`, `clip` or `auto` (Inception when its package and weights are present)."""
    if kind == "inception" or (kind == "auto" and inception_available()):
        if not inception_available():
            raise BluepriError(
                "fid_features=inception needs torch-fidelity and its Inception weights "
                f"({INCEPTION_WEIGHTS} in torch hub's checkpoints, or ${INCEPTION_ENV}); "
                "use fid_features=clip or auto"
            )
        return Features("inception-v3-pool3-2048", inception_features())
    if clip is None:
        raise BluepriError("fid_features=clip needs the CLIP model")
    return Features(f"clip:{clip_ref}", clip_image_features(clip))


def image_features(images: Iterable[ImageLike], features: Features) -> torch.Tensor:
    """N x D features of `images` (a sequence or a stream), FEATURE_BATCH at a time, so only
    one batch of images is ever held here."""
    parts = [features.extract(torch.stack([as_uint8_chw(i) for i in chunk]))
             for chunk in batched(images, FEATURE_BATCH)]  # fmt: skip
    if not parts:
        raise BluepriError("no images to compute features of")
    return torch.cat(parts)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to `size` consecutive items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Precomputed(torch.nn.Module):
    """The identity, for torchmetrics' FID/KID "feature" network: features are computed
    once per image set (`image_features`) and shared by both metrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid(real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int, seed: int = 0) -> FidKid:
    """FID and KID (mean, std over subsets) between two sets of features (N x D each)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise BluepriError(
            f"FID/KID need at least 2 images on each side, got {len(real)} real, {len(fake)} made"
        )
    network = Precomputed(real.shape[1])
    fid = FrechetInceptionDistance(feature=network, normalize=True)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    subset = min(kid_subset_size, len(real), len(fake))
    kid = KernelInceptionDistance(feature=network, subsets=KID_SUBSETS, subset_size=subset)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng():  # KID draws its subsets from the global RNG
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return FidKid(float(fid.compute()), float(kid_mean), float(kid_std))
