"""Tiny random-weight models of the real SDXL base, SDXL refiner and BLIP architectures.

Our machines have no GPU and no model hub, so tests and the demo run on these. They are the
real classes (diffusers' UNet2DConditionModel/AutoencoderKL, transformers' CLIP and BLIP)
with small widths, saved with `save_pretrained` as ordinary model folders: the same
`from_pretrained` code path loads them and the real checkpoints. Everything is built from a
seed, so the same seed gives byte-identical weight files.

Shapes keep the rules that matter downstream: two text encoders whose penultimate hidden
states are concatenated (cross-attention width = sum of both), a pooled projection from the
second, `text_time` micro-conditioning (6 time ids for the base, 5 with the aesthetic score
for the refiner), and a VAE that downsamples by 8 with 4 latent channels.

The same architectures, trained (`bluepri.models.pretrain`), are the `tiny:drawing-base` and
`tiny:drawing-refiner` models shipped inside the package under `drawing/`: they draw plain
drawings on white paper, so a blueprint LoRA's effect shows. This module names them and the
digests their RECIPE.json records.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

TINY_NAMES = ("base", "refiner", "blip", "clip")
# Trained, not random: shipped in the package, made by `bluepri models pretrain-tiny`.
DRAWING_NAMES = ("drawing-base", "drawing-refiner")
DRAWING_ROOT = Path(__file__).parent / "drawing"
RECIPE_NAME = "RECIPE.json"
PRETRAIN_COMMAND = (
    "bluepri models pretrain-tiny --device cuda --out platform/bluepri/models/drawing"
)

# Widths: text encoder 1 (CLIP ViT-L role), text encoder 2 (OpenCLIP bigG role).
TE1_WIDTH = 32
TE2_WIDTH = 64
TIME_EMBED_DIM = 8
MAX_TOKENS = 77
CLIP_MERGES = 400

# Words the tiny tokenizers learn BPE merges from: the vocabulary of blueprint captions, so
# caption words tokenise into few pieces as they would with a real CLIP tokenizer.
CAPTION_WORDS = (
    "a drawing of the floor plan small large apartment house office with one two three four "
    "rooms room kitchen stove sink blender window windows door doors table chair chairs sofa "
    "bed bath bathroom mechanical part gear gears bracket bolt bolts shaft holes vehicle car "
    "truck motorcycle seat wheel wheels aircraft plane jet fighter propeller wing wings "
    "airplane star wars starfighter furniture blueprint blueprints detailed set show views "
    "different view side top front elevation section technical engineering line lines white "
    "blue paper grid title block dimension dimensions and in on for an is are at by"
).split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (the BPE base alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def learn_bpe_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on `words` (CLIP style: the last symbol of a word carries `</w>`).

    Ties break lexicographically so the merge list, and so the tokenizer, is deterministic.
    """
    corpus = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words)
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in corpus.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        corpus = Counter({merge_pair(symbols, best): f for symbols, f in corpus.items()})
    return merges


def merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace each adjacent occurrence of `pair` in `symbols` by the joined symbol."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-format vocabulary (byte alphabet, `</w>` variants, merges, specials)."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet]
    merges = learn_bpe_merges(CAPTION_WORDS, CLIP_MERGES)
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, [f"{a} {b}" for a, b in merges]


def write_clip_tokenizer(folder: Path) -> dict[str, int]:
    """Write vocab.json + merges.txt and save a CLIPTokenizer there; returns the vocab."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        model_max_length=MAX_TOKENS,
    )
    tokenizer.save_pretrained(folder)
    return vocab


def keep_clip_files(scratch: Path, tokenizer_folders: list[Path]) -> None:
    """Copy vocab.json + merges.txt beside each saved tokenizer, as real SDXL folders have.

    transformers 5 saves only tokenizer.json; the two classic files keep the folders
    loadable by older transformers and by tools that read CLIP's BPE files directly.
    """
    for target in tokenizer_folders:
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(scratch / name, target / name)
    shutil.rmtree(scratch)


def clip_text_config(vocab: dict[str, int], width: int, projection_dim: int):
    """A small CLIPTextConfig; 3 layers so the penultimate hidden state is a real one."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def tiny_vae():
    """AutoencoderKL with SDXL's layout: 4 blocks, so 3 downsamples (factor 8), 4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=128,
        scaling_factor=0.13025,  # SDXL's VAE scaling factor
        force_upcast=True,
    )


def tiny_scheduler():
    """EulerDiscreteScheduler with SDXL base 1.0's scheduler config."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


def tiny_base_unet():
    """SDXL base UNet layout (plain block, then two cross-attention blocks), narrowed."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,  # 128 px / 8
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=TE1_WIDTH + TE2_WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # 6 time ids (original size, crop top-left, target size) + pooled text embedding
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TE2_WIDTH,
        norm_num_groups=32,
    )


def tiny_refiner_unet():
    """SDXL refiner UNet layout: four blocks, conditioned on text encoder 2 only, 5 time ids."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4, 4, 4),
        transformer_layers_per_block=1,
        cross_attention_dim=TE2_WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # original size, crop top-left, aesthetic score = 5 ids + pooled text embedding
        projection_class_embeddings_input_dim=5 * TIME_EMBED_DIM + TE2_WIDTH,
        norm_num_groups=32,
    )


def save_tiny_base(folder: Path, seed: int) -> None:
    """Build and save an SDXL base pipeline folder."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    scratch = folder / "_tokenizer"
    vocab = write_clip_tokenizer(scratch)
    tokenizer = CLIPTokenizer.from_pretrained(scratch)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_text_config(vocab, TE1_WIDTH, TE1_WIDTH))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(vocab, TE2_WIDTH, TE2_WIDTH))
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    torch.manual_seed(seed + 2)
    unet = tiny_base_unet()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=tiny_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    keep_clip_files(scratch, [folder / "tokenizer", folder / "tokenizer_2"])


def save_tiny_refiner(folder: Path, seed: int) -> None:
    """Build and save an SDXL refiner folder sharing the base's VAE and text encoder 2.

    The real refiner reuses the base's OpenCLIP bigG encoder and VAE, so its latents are
    the base's; the same seeds here give the same weights for those two parts.
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    scratch = folder / "_tokenizer"
    vocab = write_clip_tokenizer(scratch)
    tokenizer = CLIPTokenizer.from_pretrained(scratch)
    torch.manual_seed(seed)
    CLIPTextModel(clip_text_config(vocab, TE1_WIDTH, TE1_WIDTH))  # keeps the RNG in step
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(vocab, TE2_WIDTH, TE2_WIDTH))
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    torch.manual_seed(seed + 3)
    unet = tiny_refiner_unet()
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=tiny_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    keep_clip_files(scratch, [folder / "tokenizer_2"])


def file_digests(root: Path, folders: Iterable[str]) -> dict[str, str]:
    """sha256 of every file under `root/folder` for each of `folders`, keyed by its path
    relative to `root` (with /), in sorted order."""
    digests = {}
    for folder in folders:
        for path in sorted(p for p in (Path(root) / folder).rglob("*") if p.is_file()):
            key = path.relative_to(root).as_posix()
            digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


# The vision tower of the tiny BLIP and CLIP: a ViT on 64 px images in 8 px patches.
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 8,
}
BLIP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_blip(folder: Path, seed: int) -> None:
    """Build and save a BlipForConditionalGeneration + BlipProcessor folder.

    Like the real BLIP checkpoint, the tokenizer is BERT word-piece with an extra `[DEC]`
    token that starts decoding; its vocabulary is the caption words.
    """
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = sorted(set(CAPTION_WORDS))
    tokens = BLIP_SPECIALS + words + [",", ".", "[DEC]"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file), bos_token="[DEC]", model_max_length=40)
    ids = {t: i for i, t in enumerate(tokens)}
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokens),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": ids["[DEC]"],
            "pad_token_id": ids["[PAD]"],
            "sep_token_id": ids["[SEP]"],
            "eos_token_id": ids["[SEP]"],
        },
        vision_config=dict(TINY_VISION),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(folder, safe_serialization=True)
    image_processor = BlipImageProcessor(size={"height": 64, "width": 64})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def save_tiny_clip(folder: Path, seed: int) -> None:
    """Build and save a CLIPModel + CLIPProcessor folder: the scorer of evaluations (CLIP
    score, and FID/KID features when Inception's weights are absent), in the layout of
    `openai/clip-vit-large-patch14` (tokenizer, image processor, model in one folder)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    scratch = folder / "tokenizer-files"
    vocab = write_clip_tokenizer(scratch)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(scratch)
    config = CLIPConfig(
        text_config=clip_text_config(vocab, TE1_WIDTH, projection_dim=32).to_dict(),
        vision_config={**TINY_VISION, "projection_dim": 32},
        projection_dim=32,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    keep_clip_files(scratch, [folder])


BUILDERS = {
    "base": save_tiny_base,
    "refiner": save_tiny_refiner,
    "blip": save_tiny_blip,
    "clip": save_tiny_clip,
}


def build_tiny(name: str, folder: Path, seed: int = 0) -> Path:
    """Build tiny model `name` into `folder` atomically; an existing folder is kept as is.

    Built in a sibling temp folder and renamed into place, so concurrent builders (several
    Ray workers on first use) never see a half-written model: the first rename wins.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; expected one of {', '.join(TINY_NAMES)}")
    folder = Path(folder)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        BUILDERS[name](scratch, seed)
        try:
            os.rename(scratch, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def save_random_adapter(folder: Path, seed: int, base: str = "tiny:base", rank: int = 4) -> Path:
    """A random LoRA (non-zero weights, so it changes images) for `base`'s UNet, saved as a
    complete adapter artifact (weights + adapter.json): what tests, benchmarks and the
    registry need when no training run should be paid for."""
    import hashlib

    from bluepri.artifacts import ADAPTER_JSON, WEIGHTS_NAME, AdapterInfo
    from bluepri.models.loading import load_base
    from bluepri.models.lora import attach_lora, save_lora_folder

    donor = load_base(base)
    torch.manual_seed(seed)
    attach_lora(donor.unet, rank=rank, init=False)
    save_lora_folder(folder, donor.unet)
    digest = hashlib.sha256((Path(folder) / WEIGHTS_NAME).read_bytes()).hexdigest()
    info = AdapterInfo(base=base, rank=rank, alpha=rank, weights={"sha256": digest})
    (Path(folder) / ADAPTER_JSON).write_text(info.to_json())
    return Path(folder)
