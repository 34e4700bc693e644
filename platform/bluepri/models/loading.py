"""Model references and loading: hub ids, local folders and `tiny:` models, one code path.

A model reference is one of
  - a hub id (`stabilityai/stable-diffusion-xl-base-1.0`), loaded by `from_pretrained`;
  - a local diffusers/transformers folder;
  - `tiny:base`, `tiny:refiner`, `tiny:blip`: built offline on first use under
    `$BLUEPRI_HOME/tiny/` (default `~/.cache/bluepri`), then loaded like any folder;
  - `tiny:drawing-base`, `tiny:drawing-refiner`: the tiny architectures pretrained to draw
    plain drawings, shipped inside the package (`bluepri/models/drawing/`).
Whatever the form, the pipeline comes from the same `from_pretrained` call, so tests on tiny
models exercise the code that loads the real checkpoints.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from bluepri.errors import BluepriError
from bluepri.models.tiny import (
    DRAWING_NAMES,
    DRAWING_ROOT,
    PRETRAIN_COMMAND,
    RECIPE_NAME,
    TINY_NAMES,
    build_tiny,
    file_digests,
)

ModelKind = Literal["base", "refiner", "captioner", "vae", "clip"]
TINY_PREFIX = "tiny:"
TINY_SEED = 0
# A hub id: `owner/name` or a bare `name`, letters, digits and -_. only (no path tricks).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def bluepri_home() -> Path:
    """Where bluepri keeps built tiny models and other local state (`$BLUEPRI_HOME`)."""
    return Path(os.environ.get("BLUEPRI_HOME", Path.home() / ".cache" / "bluepri")).expanduser()


def tiny_folder(name: str) -> Path:
    """The folder of tiny model `name`, built there on first use."""
    return build_tiny(name, bluepri_home() / "tiny" / f"{name}-seed{TINY_SEED}", seed=TINY_SEED)


def drawing_folder(name: str, root: Path = DRAWING_ROOT) -> Path:
    """The shipped folder of trained tiny model `name` (drawing-base or drawing-refiner)."""
    folder = Path(root) / name
    if not (folder / "model_index.json").is_file():
        raise BluepriError(
            f"the weights of {TINY_PREFIX}{name} are missing (no {folder}); "
            f"make them with `{PRETRAIN_COMMAND}`"
        )
    return folder


def verify_drawing_weights(folder: Path = DRAWING_ROOT) -> list[str]:
    """Problems with the trained tiny models in `folder` (empty: every file there is the one
    its RECIPE.json names, byte for byte, and no file is missing or extra)."""
    recipe_path = Path(folder) / RECIPE_NAME
    try:
        recorded = json.loads(recipe_path.read_text())["files"]
    except FileNotFoundError:
        return [f"{recipe_path} is missing; make the weights with `{PRETRAIN_COMMAND}`"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{recipe_path} is unreadable: {type(err).__name__}: {err}".splitlines()[0]]
    found = file_digests(Path(folder), [n for n in DRAWING_NAMES if (Path(folder) / n).is_dir()])
    problems = [f"{name}: missing" for name in sorted(set(recorded) - set(found))]
    problems += [f"{name}: not in {RECIPE_NAME}" for name in sorted(set(found) - set(recorded))]
    problems += [
        f"{name}: sha256 {found[name][:12]}... differs from {RECIPE_NAME}'s {digest[:12]}..."
        for name, digest in sorted(recorded.items())
        if name in found and found[name] != digest
    ]
    return problems


@dataclass(frozen=True)
class ResolvedRef:
    """A model reference made concrete: what to hand to `from_pretrained`."""

    ref: str
    source: str  # a local folder path, or the hub id
    is_local: bool


def looks_like_path(ref: str) -> bool:
    """Paths start with / . ~, have more than one slash, or exist; hub ids have one slash."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or Path(ref).expanduser().exists()


def resolve_ref(ref: str, kind: ModelKind) -> ResolvedRef:
    """Turn `ref` into a folder or hub id, building tiny models when named; clear errors."""
    ref = ref.strip()
    if not ref:
        raise BluepriError(f"empty {kind} model reference")
    if ref.startswith(TINY_PREFIX):
        name = ref[len(TINY_PREFIX) :]
        if name in DRAWING_NAMES:
            return ResolvedRef(ref, str(drawing_folder(name)), True)
        if name not in TINY_NAMES:
            known = ", ".join(TINY_PREFIX + n for n in TINY_NAMES + DRAWING_NAMES)
            raise BluepriError(f"unknown model ref {ref!r}: tiny models are {known}")
        return ResolvedRef(ref, str(tiny_folder(name)), True)
    if looks_like_path(ref):
        folder = Path(ref).expanduser()
        check_local_folder(ref, folder, kind)
        return ResolvedRef(ref, str(folder), True)
    if not HUB_ID.match(ref):
        raise BluepriError(
            f"unknown model ref {ref!r}: expected a hub id (owner/name), a local folder, "
            f"or one of {', '.join(TINY_PREFIX + n for n in TINY_NAMES)}"
        )
    return ResolvedRef(ref, ref, False)


MARKER_FILES = {
    "base": "model_index.json",
    "refiner": "model_index.json",
    "captioner": "config.json",
    "vae": "config.json",
    "clip": "config.json",
}


def check_local_folder(ref: str, folder: Path, kind: ModelKind) -> None:
    """A local ref must be a folder of the right kind of saved model."""
    if not folder.exists():
        raise BluepriError(f"model folder {ref!r} does not exist")
    if not folder.is_dir():
        raise BluepriError(f"model ref {ref!r} is a file, not a model folder")
    marker = MARKER_FILES[kind]
    if not (folder / marker).is_file():
        what = "diffusers pipeline" if marker == "model_index.json" else f"saved {kind} model"
        raise BluepriError(f"{ref!r} is not a {what} folder (no {marker})")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BluepriError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def from_pretrained(loader: Any, resolved: ResolvedRef, kind: ModelKind, **kwargs: Any) -> Any:
    """Call `loader.from_pretrained`, turning an unreachable hub into one clear error."""
    try:
        return loader.from_pretrained(resolved.source, **kwargs)
    except (OSError, ValueError) as err:
        if resolved.is_local:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BluepriError(f"cannot load {kind} model from {resolved.ref!r}: {first}") from None
        raise BluepriError(
            f"cannot load {kind} model {resolved.ref!r}: not in the local hub cache and the hub "
            f"is unreachable; download it to a folder and pass that path, or use "
            f"{TINY_PREFIX}{'blip' if kind == 'captioner' else kind} offline"
        ) from None


def load_vae(ref: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """An AutoencoderKL from a folder/hub id (e.g. `madebyollin/sdxl-vae-fp16-fix`)."""
    from diffusers import AutoencoderKL

    resolved = resolve_ref(ref, "vae")
    if resolved.is_local and (Path(resolved.source) / "vae" / "config.json").is_file():
        return from_pretrained(
            AutoencoderKL, resolved, "vae", subfolder="vae", dtype=parse_dtype(dtype)
        ).to(device)
    return from_pretrained(AutoencoderKL, resolved, "vae", dtype=parse_dtype(dtype)).to(device)


def load_base(
    ref: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    vae_ref: str | None = None,
):
    """An SDXL base `StableDiffusionXLPipeline`; `vae_ref` swaps in another VAE."""
    from diffusers import StableDiffusionXLPipeline

    resolved = resolve_ref(ref, "base")
    kwargs: dict[str, Any] = {"dtype": parse_dtype(dtype)}
    if vae_ref:
        kwargs["vae"] = load_vae(vae_ref, dtype=dtype, device=device)
    pipe = from_pretrained(StableDiffusionXLPipeline, resolved, "base", **kwargs)
    require_sdxl_base(ref, pipe)
    return pipe.to(device)


def require_sdxl_base(ref: str, pipe: Any) -> None:
    """Refuse pipelines that lack what SDXL training and generation rely on."""
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
        raise BluepriError(f"{ref!r} is not an SDXL base: it lacks SDXL's two text encoders")
    if pipe.unet.config.addition_embed_type != "text_time":
        raise BluepriError(f"{ref!r} is not an SDXL base: its UNet has no text_time conditioning")


def load_refiner(
    ref: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    share_from: Any = None,
):
    """An SDXL refiner `StableDiffusionXLImg2ImgPipeline`.

    `share_from` (a loaded base) hands over its VAE and text encoder 2, as the real refiner
    uses the base's, so the pair holds one copy of each in memory.
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline

    resolved = resolve_ref(ref, "refiner")
    kwargs: dict[str, Any] = {"dtype": parse_dtype(dtype)}
    if share_from is not None:
        kwargs.update(vae=share_from.vae, text_encoder_2=share_from.text_encoder_2)
    pipe = from_pretrained(StableDiffusionXLImg2ImgPipeline, resolved, "refiner", **kwargs)
    if pipe.unet.config.addition_embed_type != "text_time":
        raise BluepriError(
            f"{ref!r} is not an SDXL refiner: its UNet has no text_time conditioning"
        )
    return pipe.to(device)


@dataclass
class Captioner:
    """A BLIP captioning model with its processor."""

    model: Any
    processor: Any
    ref: str


def load_captioner(
    ref: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu"
) -> Captioner:
    """A BLIP `BlipForConditionalGeneration` + `BlipProcessor`."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    resolved = resolve_ref(ref, "captioner")
    model = from_pretrained(
        BlipForConditionalGeneration, resolved, "captioner", dtype=parse_dtype(dtype)
    )
    processor = from_pretrained(BlipProcessor, resolved, "captioner")
    return Captioner(model=model.to(device).eval(), processor=processor, ref=ref)


def load_clip(ref: str, *, device: str = "cpu") -> tuple[Any, Any]:
    """A `CLIPModel` + `CLIPProcessor` (the scorer of evaluations), in float32, eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    quiet_progress_bars()
    resolved = resolve_ref(ref, "clip")
    model = from_pretrained(CLIPModel, resolved, "clip")
    processor = from_pretrained(CLIPProcessor, resolved, "clip")
    return model.to(device).eval(), processor


def quiet_progress_bars() -> None:
    """No per-file loading bars in worker logs (every worker would print its own)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
