"""The evaluation stage's metrics and its refusals (issue 14), without Ray and in seconds.

Metric sanity on 96 synthetic drawings (128 px) and the offline `tiny:clip` (FID/KID on its
image embeddings, "CLIP-FID"): a set against itself scores about 0, and both distances grow
as the set is perturbed (Gaussian noise, blur). CLIP score is the same for the same inputs
and moves with the prompts. `EvalResult` keeps its documented shape through JSON.

Bad inputs go through the real CLI (`bluepri eval`): each is refused with exit code 2 and one
`bluepri: error:` line naming it, before anything is rendered (rendering and the held-out
loss are replaced by a tripwire) and without writing anything: not outside the evaluation
folder, and not even that folder. A cache here is a manifest only: every refusal tested
comes before the cache's rows would be read.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bluepri import artifacts
from bluepri.cli import main
from bluepri.config import EVAL_PROTOCOLS, EvalConfig, SynthConfig
from bluepri.data.synth import drawing
from bluepri.errors import BluepriError
from bluepri.eval.metrics import (
    FidKid,
    choose_features,
    clip_score,
    fid_kid,
    image_features,
    same_size,
)
from bluepri.eval.results import SCORES, EvalResult, ModelRun, ReferenceSet, Scores

# torchmetrics' note that KID keeps every feature in memory: 96 x 32 floats here.
pytestmark = pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`:UserWarning")

# `bluepri.eval.evaluate` is also the name of the function the package exports.
evaluate_module = importlib.import_module("bluepri.eval.evaluate")

NUM_IMAGES = 96
SIDE = 128
NOISE_SIGMAS = (10, 40, 80)  # Gaussian noise, in 8-bit levels
BLUR_RADII = (1, 3, 6)  # Gaussian blur, in pixels
KID_SUBSET = EvalConfig.model_fields["kid_subset_size"].default  # what evaluations use
EVAL_BASE = "tiny:drawing-base"  # what `bluepri eval --tiny` measures
OTHER_BASE = "tiny:base"


# -- metric sanity ------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The matrices here are tiny (96 x 32): on a busy 2-core machine torch's intra-op
    threads cost 20x the wall time of the work itself (KID's 100 subsets: 12 s against
    0.5 s). One thread for this module; the previous setting back afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def clip(bluepri_home: Path):
    from bluepri.models.loading import load_clip

    return load_clip("tiny:clip")


@pytest.fixture(scope="module")
def drawings() -> tuple[list[Image.Image], list[str]]:
    """96 synthetic blueprints, all 128 x 128, and a caption for each."""
    config = SynthConfig(
        out_dir="unused", num_images=NUM_IMAGES, seed=0, min_side=SIDE, max_side=SIDE
    )
    pairs = [drawing(i, config) for i in range(NUM_IMAGES)]
    images = [image.convert("RGB") for image, _ in pairs]
    captions = [caption or "a technical drawing" for _, caption in pairs]
    return images, captions


def noisy(images: list[Image.Image], sigma: float) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    out = []
    for image in images:
        pixels = np.asarray(image, np.float64)
        pixels = pixels + rng.normal(0.0, sigma, pixels.shape)
        out.append(Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)))
    return out


def blurred(images: list[Image.Image], radius: float) -> list[Image.Image]:
    return [image.filter(ImageFilter.GaussianBlur(radius)) for image in images]


@pytest.fixture(scope="module")
def features(clip, drawings) -> dict[str, torch.Tensor]:
    """CLIP-FID features of the set and of each perturbation of it."""
    extractor = choose_features("clip", clip, "tiny:clip")
    assert extractor.name == "clip:tiny:clip"
    images, _ = drawings
    found = {"self": image_features(images, extractor)}
    for sigma in NOISE_SIGMAS:
        found[f"noise{sigma}"] = image_features(noisy(images, sigma), extractor)
    for radius in BLUR_RADII:
        found[f"blur{radius}"] = image_features(blurred(images, radius), extractor)
    return found


@pytest.fixture(scope="module")
def measured(features) -> dict[str, FidKid]:
    """FID/KID of the set (as the real side) against itself and each perturbation."""
    real = features["self"]
    return {name: fid_kid(real, fake, KID_SUBSET) for name, fake in features.items()}


def test_features_are_one_vector_per_image(features) -> None:
    real = features["self"]
    assert real.shape == (NUM_IMAGES, 32)  # tiny:clip's projection width
    assert real.dtype == torch.float32 and torch.isfinite(real).all()
    assert not torch.equal(real, features["noise80"])


def test_fid_and_kid_of_a_set_against_itself_are_about_zero(measured) -> None:
    """FID: 0 up to rounding. KID (torchmetrics' unbiased MMD estimate) is slightly negative
    for the very same samples on both sides (see the next test), but small next to what a
    visible perturbation scores."""
    same = measured["self"]
    strongest = [measured[f"noise{NOISE_SIGMAS[-1]}"], measured[f"blur{BLUR_RADII[-1]}"]]
    assert abs(same.fid) < 1e-6 * min(m.fid for m in strongest)
    assert abs(same.kid_mean) < 0.25 * min(m.kid_mean for m in strongest)


def test_kid_of_identical_sets_is_the_unbiased_estimators_known_bias(features) -> None:
    """With every image in one subset, KID(X, X) is exactly -2/(m-1) x (mean k(x, x) - mean
    k(x, y)) for KID's kernel k(x, y) = (x.y / d + 1)^3: the unbiased MMD estimate leaves the
    diagonal out of the within-set terms but not of the cross term. Real and generated sets
    never share images, so an evaluation never sees this bias."""
    real = features["self"].double()
    m, d = real.shape
    kernel = (real @ real.T / d + 1) ** 3
    expected = -2 / (m - 1) * (kernel.diagonal().mean() - kernel.mean()).item()
    same = fid_kid(features["self"], features["self"], kid_subset_size=m)
    assert expected < 0
    assert same.kid_mean == pytest.approx(expected, rel=1e-9)
    assert same.kid_std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


@pytest.mark.parametrize(
    ("kind", "levels"),
    [("noise", NOISE_SIGMAS), ("blur", BLUR_RADII)],
)
def test_fid_and_kid_grow_with_the_perturbation(measured, kind: str, levels) -> None:
    runs = [measured["self"], *(measured[f"{kind}{level}"] for level in levels)]
    fids = [run.fid for run in runs]
    kids = [run.kid_mean for run in runs]
    assert fids == sorted(fids) and len(set(fids)) == len(fids), fids
    assert kids == sorted(kids) and len(set(kids)) == len(kids), kids
    # The strongest perturbation is far past KID's own spread over subsets.
    assert kids[-1] - kids[0] > 3 * runs[-1].kid_std


def test_fid_kid_is_reproducible_and_leaves_the_global_rng_alone(features, measured) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    again = fid_kid(features["self"], features["noise80"], KID_SUBSET)
    assert torch.equal(torch.rand(3), expected_draw)
    assert again == measured["noise80"]
    other_subsets = fid_kid(features["self"], features["noise80"], KID_SUBSET, seed=1)
    assert other_subsets.fid == again.fid and other_subsets.kid_mean != again.kid_mean


def test_fid_kid_needs_two_images_on_each_side(features) -> None:
    real = features["self"]
    with pytest.raises(BluepriError, match="at least 2 images on each side, got 96 real, 1 made"):
        fid_kid(real, real[:1], KID_SUBSET)


def test_clip_score_is_identical_for_identical_inputs(clip, drawings) -> None:
    images, captions = drawings
    first = clip_score(images, captions, clip)
    second = clip_score(list(images), list(captions), clip)
    assert isinstance(first, float) and 0.0 <= first <= 100.0
    assert first == second  # bitwise: the same images and prompts score the same


def test_clip_score_differs_for_mismatched_prompts(clip, drawings) -> None:
    images, captions = drawings
    matched = clip_score(images, captions, clip)
    shuffled = clip_score(images, captions[1:] + captions[:1], clip)
    cat = clip_score(images, ["a photo of a cat"] * len(images), clip)
    assert shuffled != matched
    assert cat != matched and cat != shuffled


def test_clip_score_needs_one_prompt_per_image(clip, drawings) -> None:
    images, captions = drawings
    with pytest.raises(BluepriError, match="one prompt per image, got 96 images and 95 prompts"):
        clip_score(images, captions[:-1], clip)
    with pytest.raises(BluepriError, match="got 0 images and 0 prompts"):
        clip_score([], [], clip)


def test_same_size_refuses_mixed_sizes_in_one_line(drawings) -> None:
    images, _ = drawings
    assert same_size(images, "generated images") == (SIDE, SIDE)
    wide = np.zeros((64, 96, 3), np.uint8)  # an array: height 64, width 96
    with pytest.raises(BluepriError) as refused:
        same_size([images[0], wide, images[1]], "generated images")
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        "generated images must share one size to be scored together, got 96x64, 128x128"
    )


# -- the documented shape of results --------------------------------------------------------

PROMPTS = ["a floor plan of a small house", "a gear with twelve teeth"]
ADAPTER_LABEL = "blueprints@v0002"


def handmade_result() -> EvalResult:
    """Base and one adapter, each without and with the refiner; one run without FID/KID."""
    runs = []
    for label, refine, palette, fid in [
        ("base", False, 0.10, 120.0),
        ("base", True, 0.12, 110.0),
        (ADAPTER_LABEL, False, 0.90, 60.0),
        (ADAPTER_LABEL, True, 0.95, None),
    ]:
        adapter = label != "base"
        runs.append(
            ModelRun(
                label=label,
                adapter="blueprints@champion" if adapter else None,
                sha256="ab" * 32 if adapter else None,
                folder="adapters/blueprints/v0002" if adapter else None,
                refine=refine,
                images=[f"renders/images/{label}-{refine}-{i}.png" for i in range(len(PROMPTS))],
                scores=Scores(
                    heldout_loss=0.2 - palette / 10,
                    blueprint_score=palette,
                    paper_score=1 - palette,
                    clip_score=20.0 + palette,
                    fid=fid,
                    kid_mean=None if fid is None else fid / 1000,
                    kid_std=None if fid is None else 0.001,
                ),
            )
        )
    evaluate_module.add_differences(runs)
    return EvalResult(
        out="/evals/night-1",
        label="night-1",
        created="2026-01-01T00:00:00+00:00",
        protocol=EVAL_PROTOCOLS["quick"].model_copy(update={"max_prompts": len(PROMPTS)}),
        models={
            "base": EVAL_BASE,
            "refiner": "tiny:drawing-refiner",
            "vae": None,
            "scheduler": "model",
            "dtype": "float32",
            "device": "cpu",
        },
        width=SIDE,
        height=SIDE,
        cache="/caches/drawings",
        cache_fingerprint="f" * 16,
        prompts=PROMPTS,
        seeds=[0, 1],
        reference=ReferenceSet(source="/data/drawings", count=24, skipped={"truncated": 1}),
        clip_model="tiny:clip",
        fid_features="clip:tiny:clip",
        runs=runs,
        notes=["FID/KID not measured with the refiner: a note people read"],
    )


def test_eval_result_round_trips_through_json() -> None:
    result = handmade_result()
    dumped = result.model_dump(mode="json")
    assert EvalResult.model_validate(json.loads(json.dumps(dumped))) == result
    assert set(dumped) >= {
        "out", "label", "created", "protocol", "models", "width", "height", "cache",
        "cache_fingerprint", "prompts", "seeds", "reference", "clip_model", "fid_features",
        "runs", "notes", "report", "summary_png", "seconds",
    }  # fmt: skip
    run = dumped["runs"][2]
    assert set(run) == {"label", "adapter", "sha256", "folder", "refine", "images", "scores",
                        "differences"}  # fmt: skip
    assert set(run["scores"]) == set(SCORES) | {"kid_std"}
    assert set(run["differences"]) == set(SCORES)
    assert dumped["protocol"]["name"] == "quick" and dumped["protocol"]["max_prompts"] == 2


def test_differences_are_to_the_base_at_the_same_refiner_setting() -> None:
    result = handmade_result()
    adapter = result.run(ADAPTER_LABEL, False).differences
    assert adapter["blueprint_score"] == pytest.approx(0.90 - 0.10)
    assert adapter["fid"] == pytest.approx(60.0 - 120.0)
    refined = result.run(ADAPTER_LABEL, True).differences
    assert refined["blueprint_score"] == pytest.approx(0.95 - 0.12)
    assert refined["fid"] is None  # not measured on one side
    assert all(value is None for value in result.run("base", True).differences.values())


def test_summary_lines_one_per_run_after_a_header() -> None:
    result = handmade_result()
    lines = result.summary_lines()
    header, table, notes = lines[0], lines[1 : 1 + len(result.runs)], lines[1 + len(result.runs) :]
    assert header.startswith("evaluation night-1: protocol quick, 2 prompts, 128x128")
    assert notes == [f"  note: {result.notes[0]}"]
    assert [line.split()[0] for line in table] == [run.label for run in result.runs]
    assert ["+refiner" in line for line in table] == [run.refine for run in result.runs]
    assert "fid 60 (-60)" in table[2] and "blueprint_score 0.9 (+0.8)" in table[2]
    assert "fid" not in table[3]  # not measured: left out, not printed as None
    result.report = "/evals/night-1/report.html"
    assert result.summary_lines()[-1] == "report: /evals/night-1/report.html"


def test_run_finds_a_measured_run_and_refuses_others() -> None:
    result = handmade_result()
    assert result.run(ADAPTER_LABEL, True) is result.runs[3]
    assert result.run("base", False) is result.runs[0]
    with pytest.raises(KeyError, match="missing@v0001"):
        result.run("missing@v0001", False)


# -- bad inputs through `bluepri eval` ----------------------------------------------------------


class ReachedRendering(Exception):
    """Raised where the evaluation would render (or measure held-out loss): the tripwire."""


class EvalInputs:
    """A cache (manifest only) per base, prompt sets, adapters and a user registry."""

    def __init__(self, root: Path, home: Path):
        from bluepri.models.tiny import save_random_adapter
        from bluepri.registry import AdapterRegistry

        self.root = root
        self.home = home  # BLUEPRI_HOME: the default registry, the tiny models
        self.cache = self.make_cache("cache", EVAL_BASE)
        self.other_cache = self.make_cache("cache-other", OTHER_BASE)
        self.not_a_cache = root / "not-a-cache"
        self.not_a_cache.mkdir()
        self.prompts = root / "prompts.csv"
        self.prompts.write_text("prompt,id\na floor plan of a house,1\na gear,2\n")
        self.prompt_set = f"prompts={self.prompts}"
        self.blank_csv = root / "blank.csv"
        self.blank_csv.write_text("prompt,id\n,1\n   ,2\n")
        self.blank_jsonl = root / "blank.jsonl"
        self.blank_jsonl.write_text('{"id": "1"}\n{"prompt": "  ", "id": "2"}\n')
        self.adapter = save_random_adapter(root / "adapter", 1, base=EVAL_BASE)
        self.other_adapter = save_random_adapter(root / "adapter-other", 0, base=OTHER_BASE)
        self.registry = root / "registry"
        registry = AdapterRegistry(self.registry)
        registry.put(self.other_adapter, "elsewhere")
        registry.promote("elsewhere", "v0001", "a champion trained for another base")
        self.outs = root.parent / f"{root.name}-outs"  # evaluation folders: not in `root`
        self.outs.mkdir()

    def make_cache(self, name: str, base: str) -> Path:
        folder = self.root / name
        folder.mkdir()
        manifest = artifacts.CacheManifest(
            fingerprint=f"{name}-fingerprint",
            config={"resolution": 64},
            models={"base": base, "vae": None},
            rows=4,
            splits={"train": 3, "val": 1},
        )
        artifacts.write_manifest(str(folder), manifest)
        return folder

    def out(self, name: str) -> Path:
        return self.outs / name

    def sha256(self, folder: Path) -> str:
        return artifacts.read_adapter_info(str(folder)).weights.sha256


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, bluepri_home: Path, clip) -> EvalInputs:
    """Built once; `clip` first, so tiny:clip is already in BLUEPRI_HOME when evals run."""
    return EvalInputs(tmp_path_factory.mktemp("eval-inputs"), bluepri_home)


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> list:
    """Rendering and held-out loss raise ReachedRendering (recording the plan) instead of
    starting Ray; no BLUEPRI_REGISTRY from the environment."""
    plans = []

    def render_runs(config, plan, out, log):
        plans.append(plan)
        raise ReachedRendering(f"rendering {len(plan.prompts)} prompts into {out}")

    def measure_heldout(config, adapters):
        raise ReachedRendering("held-out loss")

    monkeypatch.setattr(evaluate_module, "render_runs", render_runs)
    monkeypatch.setattr(evaluate_module, "measure_heldout", measure_heldout)
    monkeypatch.delenv("BLUEPRI_REGISTRY", raising=False)
    return plans


def tree(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots` with its kind, size and modification time."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.lstat()
            found[str(path)] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return found


def run_eval(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, list[str]]:
    """`bluepri eval ARGS` in this process: (exit code, its `bluepri: error:` lines), which
    must end stderr (loading a model may print progress bars to stderr before them)."""
    capsys.readouterr()
    code = main(["eval", *map(str, args)])
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("bluepri: error:")]
    assert err[-len(errors) :] == errors, err
    return code, errors


BAD_INPUTS = {
    # case: (arguments after --cache/--out/--tiny, the error's text after "bluepri: error: ")
    "unknown registry reference": (
        lambda i: ["--registry", i.registry, "--adapter", "nosuch", f"prompts={i.prompts}"],
        lambda i: f"no adapter named 'nosuch' in registry {i.registry}",
    ),
    "unknown version": (
        lambda i: ["--registry", i.registry, "--adapter", "elsewhere@v0007", i.prompt_set],
        lambda i: f"no version 'v0007' of adapter 'elsewhere' in {i.registry}",
    ),
    "unknown reference in the default registry": (
        lambda i: ["--adapter", "nosuch@champion", f"prompts={i.prompts}"],
        lambda i: f"no adapter named 'nosuch' in registry {i.home / 'registry'}",
    ),
    "neither a folder nor a reference": (
        lambda i: ["--adapter", i.root / "missing" / "adapter", f"prompts={i.prompts}"],
        lambda i: (
            f"unknown adapter '{i.root / 'missing' / 'adapter'}': neither an adapter folder "
            "nor a registry reference (name, name@version, name@champion)"
        ),
    ),
    "a folder that is no adapter": (
        lambda i: ["--adapter", i.not_a_cache, f"prompts={i.prompts}"],
        lambda i: f"adapter folder '{i.not_a_cache}' has no adapter.json",
    ),
    "empty prompt set (CSV)": (
        lambda i: [f"prompts={i.blank_csv}"],
        lambda i: f"prompt set {i.blank_csv}: no prompts to evaluate on",
    ),
    "empty prompt set (JSONL)": (
        lambda i: [f"prompts={i.blank_jsonl}"],
        lambda i: f"prompt set {i.blank_jsonl}: no prompts to evaluate on",
    ),
    "missing prompt set": (
        lambda i: [f"prompts={i.root / 'nowhere.csv'}"],
        lambda i: f"catalogue '{i.root / 'nowhere.csv'}' not found (or not a file)",
    ),
    "adapter folder for another base": (
        lambda i: ["--adapter", i.other_adapter, f"prompts={i.prompts}"],
        lambda i: f"adapter {i.other_adapter} was trained for base {OTHER_BASE}, not {EVAL_BASE}",
    ),
    "registry adapter for another base": (
        lambda i: ["--registry", i.registry, "--adapter", "elsewhere", f"prompts={i.prompts}"],
        lambda i: f"adapter elsewhere was trained for base {OTHER_BASE}, not {EVAL_BASE}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_error_before_rendering(
    inputs: EvalInputs, tripwire, capsys, case: str
) -> None:
    extra, message = BAD_INPUTS[case]
    out = inputs.out(case.replace(" ", "-").replace("(", "").replace(")", ""))
    before = tree(inputs.root, inputs.outs, inputs.home)
    code, err = run_eval(capsys, "--cache", inputs.cache, "--out", out, "--tiny", *extra(inputs))
    assert code == 2
    assert err == [f"bluepri: error: {message(inputs)}"]
    assert tripwire == []
    assert not out.exists()  # refused before writing anything, even the evaluation folder
    assert tree(inputs.root, inputs.outs, inputs.home) == before


@pytest.mark.parametrize("which", ["another base", "not a cache", "no held-out rows"])
def test_a_cache_that_cannot_be_evaluated_is_refused(
    inputs: EvalInputs, tripwire, capsys, which: str, tmp_path: Path
) -> None:
    cache = {"another base": inputs.other_cache, "not a cache": inputs.not_a_cache}.get(which)
    if cache is None:
        cache = tmp_path / "no-val"
        cache.mkdir()
        empty = artifacts.CacheManifest(
            fingerprint="x", models={"base": EVAL_BASE}, rows=3, splits={"train": 3}
        )
        artifacts.write_manifest(str(cache), empty)
    expected = {
        "another base": f"cache {cache} was prepared for base {OTHER_BASE}, not {EVAL_BASE}; "
        "evaluate on a cache prepared with the same base",
        "not a cache": f"'{cache}' is not a prepared cache (no manifest.json)",
        "no held-out rows": f"cache {cache} has no held-out (val) rows to evaluate on",
    }[which]
    out = tmp_path / "eval"
    before = tree(inputs.root, inputs.home, tmp_path)
    code, err = run_eval(
        capsys, "--cache", cache, "--out", out, "--tiny", "--adapter", inputs.adapter,
        f"prompts={inputs.prompts}",
    )  # fmt: skip
    assert (code, err) == (2, [f"bluepri: error: {expected}"])
    assert tripwire == [] and not out.exists()
    assert tree(inputs.root, inputs.home, tmp_path) == before


@pytest.mark.parametrize("which", ["adapter", "cache"])
def test_the_other_way_round_is_refused_too(
    inputs: EvalInputs, tripwire, capsys, which: str
) -> None:
    """Evaluating tiny:base: the drawing base's adapter, or its cache, is the other base."""
    if which == "adapter":
        cache, adapter = inputs.other_cache, inputs.adapter
        expected = f"adapter {adapter} was trained for base {EVAL_BASE}, not {OTHER_BASE}"
    else:
        cache, adapter = inputs.cache, inputs.other_adapter
        expected = (
            f"cache {cache} was prepared for base {EVAL_BASE}, not {OTHER_BASE}; "
            "evaluate on a cache prepared with the same base"
        )
    out = inputs.out(f"other-way-{which}")
    before = tree(inputs.root, inputs.outs, inputs.home)
    code, err = run_eval(
        capsys, "--cache", cache, "--out", out, "--adapter", adapter, f"models.base={OTHER_BASE}",
        "clip_model=tiny:clip", f"prompts={inputs.prompts}",
    )  # fmt: skip
    assert (code, err) == (2, [f"bluepri: error: {expected}"])
    assert tripwire == [] and not out.exists()
    assert tree(inputs.root, inputs.outs, inputs.home) == before


def test_a_refused_adapter_leaves_nothing_that_breaks_a_rerun(
    inputs: EvalInputs, tripwire, capsys
) -> None:
    """A good adapter named before a bad one: the bad one is refused; the rerun without it
    gets as far as rendering, with the good adapter's verified copy in the eval registry."""
    out = inputs.out("rerun")
    before = tree(inputs.root, inputs.home)
    code, err = run_eval(
        capsys, "--cache", inputs.cache, "--out", out, "--tiny", "--adapter", inputs.adapter,
        "--adapter", inputs.other_adapter, f"prompts={inputs.prompts}",
    )  # fmt: skip
    assert code == 2
    assert err == [
        f"bluepri: error: adapter {inputs.other_adapter} was trained for base {OTHER_BASE}, "
        f"not {EVAL_BASE}"
    ]
    assert tripwire == []
    assert tree(inputs.root, inputs.home) == before
    written = {p.relative_to(out).parts[0] for p in out.rglob("*")} if out.exists() else set()
    assert written <= {evaluate_module.ADAPTERS_DIR}  # no renders, no catalogue, no results

    for attempt in range(2):  # the rerun, and a rerun of that: each reuses the stored copy
        with pytest.raises(ReachedRendering):
            main(["eval", "--cache", str(inputs.cache), "--out", str(out), "--tiny",
                  "--adapter", str(inputs.adapter), f"prompts={inputs.prompts}"])  # fmt: skip
        plan = tripwire[attempt]
        sha = inputs.sha256(inputs.adapter)
        assert [a.label for a in plan.adapters] == [f"local-{sha[:12]}@v0001"]
        assert [a.sha256 for a in plan.adapters] == [sha]
        assert inputs.sha256(Path(plan.adapters[0].folder)) == sha
        assert Path(plan.adapters[0].folder).is_relative_to(out / evaluate_module.ADAPTERS_DIR)
        assert plan.prompts == ["a floor plan of a house", "a gear"]
        assert plan.seeds == [0, 1] and (plan.width, plan.height) == (64, 64)
    assert tree(inputs.root, inputs.home) == before


def test_a_copy_a_killed_run_left_half_written_is_replaced(inputs: EvalInputs, tripwire) -> None:
    """A run killed while copying an adapter into the evaluation's registry leaves a version
    folder without its adapter.json (put's own cleanup never ran): the rerun must not be
    blocked by it ("versions are immutable"), and gets a verified copy."""
    out = inputs.out("killed")
    sha = inputs.sha256(inputs.adapter)
    partial = out / evaluate_module.ADAPTERS_DIR / f"local-{sha[:12]}" / "v0001"
    partial.mkdir(parents=True)
    (partial / "pytorch_lora_weights.safetensors").write_bytes(b"half a file")
    with pytest.raises(ReachedRendering):
        main(["eval", "--cache", str(inputs.cache), "--out", str(out), "--tiny",
              "--adapter", str(inputs.adapter), f"prompts={inputs.prompts}"])  # fmt: skip
    copy = Path(tripwire[0].adapters[0].folder)
    assert copy == partial and inputs.sha256(copy) == sha
    assert (copy / "adapter.json").is_file()
