"""Procedural blueprint drawings with captions, written as a Hugging Face imagefolder.

This module owns the synthetic stand-in for the paper's "Sisigoks/Blueprints" set: floor
plans, mechanical parts, vehicles, aircraft, furniture and kitchens drawn in white line work
on blueprint-blue paper, each with a caption built from what was actually drawn. It needs
only PIL and numpy, so tests and demos get a realistic dataset offline, and the same config
always gives byte-identical files.

A second style, `paper`, draws the very same sheets (same seed, same geometry) in dark ink on
white or cream paper: the plain drawings the tiny drawing model is pretrained on, so that a
blueprint LoRA visibly changes its output. `drawing(i, config)` renders one sheet in memory.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel

from bluepri.config import BLUEPRINT_FAMILIES, SynthConfig
from bluepri.errors import BluepriError
from bluepri.storage import output_folder

METADATA_NAME = "metadata.jsonl"
CAPTION_MIN, CAPTION_MAX = 30, 110
SMALLEST_LAYOUT = 192  # px; smaller sheets are drawn at this size and scaled down
# A rerun deletes only names like these, so a stale metadata.jsonl can never point the
# cleanup at a user's own files or outside out_dir.
OUR_FILE_NAME = re.compile(r"bp_\d+_[a-z_]+\.png")
PADDING_CLAUSES = (" on blueprint paper", ", white lines on a blue grid", ", technical drawing")
PAPER_PADDING_CLAUSES = (" on white paper", ", dark lines on a faint grid", ", technical drawing")
PADDING = {"blueprint": PADDING_CLAUSES, "paper": PAPER_PADDING_CLAUSES}

RGB = tuple[int, int, int]
Point = tuple[float, float]
Box = tuple[float, float, float, float]


class SynthResult(BaseModel):
    """What `synthesize` wrote."""

    out_dir: str
    metadata_path: str
    num_images: int
    num_captioned: int
    families: dict[str, int]


@dataclass
class Content:
    """What a family drew, in words; the caption and the title block are built from it."""

    title: str
    subject: str  # "a floor plan of a small apartment"
    details: list[str]  # clauses, most important first, each with its own leading separator


# ---------------------------------------------------------------- words

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUMBER_WORDS += ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]
NUMBER_WORDS += ["seventeen", "eighteen", "nineteen"]
TENS_WORDS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty"]


def number_word(n: int) -> str:
    if n < 20:
        return NUMBER_WORDS[n]
    tens, ones = divmod(int(n), 10)
    return TENS_WORDS[tens] + (f"-{NUMBER_WORDS[ones]}" if ones else "")


def counted(n: int, noun: str, plural: str = "") -> str:
    return f"{number_word(n)} {noun if n == 1 else plural or noun + 's'}"


def with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeio" else "a ") + noun


def join_words(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def counted_list(nouns: Sequence[str]) -> str:
    """["bedroom", "kitchen", "bedroom"] -> "two bedrooms and a kitchen"."""
    counts = Counter(nouns)
    return join_words([with_article(n) if c == 1 else counted(c, n) for n, c in counts.items()])


def build_caption(
    content: Content, rng: np.random.Generator, padding: Iterable[str] = PADDING_CLAUSES
) -> str:
    """'a drawing of' + subject + some detail clauses, within the dataset's 30-110 characters.

    Clauses are added whole and in order, so a caption is never cut mid-word and never says
    more than the drawing shows; a short one gets a neutral clause about the paper (`padding`,
    which names the style's paper). The padding draws nothing from `rng`.
    """
    caption = f"a drawing of {content.subject}"
    wanted = int(rng.integers(1, len(content.details) + 1)) if content.details else 0
    for clause in content.details[:wanted]:
        if len(caption + clause) > CAPTION_MAX:
            break
        caption += clause
    for clause in padding:
        if len(caption) >= CAPTION_MIN:
            break
        caption += clause
    return caption


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------- geometry and the sheet


def fit_aspect(box: Box, aspect: float) -> Box:
    """The largest box of `aspect` (width / height) centred in `box`."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    w, h = (h * aspect, h) if w / h > aspect else (w, w / aspect)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def centre_of(box: Box) -> Point:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def shrink(box: Box, dx: float, dy: float | None = None) -> Box:
    dy = dx if dy is None else dy
    return (box[0] + dx, box[1] + dy, box[2] - dx, box[3] - dy)


def in_box(box: Box) -> Callable[[float, float], Point]:
    """Fractions of `box` (0..1, y down) to pixels, so small parts are drawn box-relative."""
    x0, y0, x1, y1 = box
    return lambda fx, fy: (x0 + (x1 - x0) * fx, y0 + (y1 - y0) * fy)


@dataclass
class Units:
    """Maps drawing units (x right, y up, origin bottom-left) into pixels, aspect kept."""

    left: float
    bottom: float
    scale: float

    def __call__(self, x: float, y: float) -> Point:
        return (self.left + x * self.scale, self.bottom - y * self.scale)

    def all(self, points: Sequence[Point]) -> list[Point]:
        return [self(x, y) for x, y in points]


def fit_units(box: Box, width: float, height: float, fill: float = 0.9) -> Units:
    x0, y0, x1, y1 = box
    scale = min((x1 - x0) / width, (y1 - y0) / height) * fill
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return Units(cx - width * scale / 2, cy + height * scale / 2, scale)


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, size))


@dataclass
class Sheet:
    """One drawing in progress: the canvas, the bare paper under it, inks and free area."""

    image: Image.Image
    paper: Image.Image  # ground + grid, pasted back to cut gaps (doors, windows) in walls
    rng: np.random.Generator
    ink: RGB
    soft_ink: RGB  # centre lines, hidden lines, dimensions
    lw: int
    area: Box = (0.0, 0.0, 0.0, 0.0)
    draw: ImageDraw.ImageDraw = field(init=False)

    def __post_init__(self) -> None:
        self.draw = ImageDraw.Draw(self.image)

    def line(self, points: Sequence[Point], width: int = 0, soft: bool = False) -> None:
        fill = self.soft_ink if soft else self.ink
        self.draw.line(list(points), fill=fill, width=width or self.lw, joint="curve")

    def closed(self, points: Sequence[Point], width: int = 0) -> None:
        self.line([*points, points[0]], width)

    def rect(self, box: Box, width: int = 0, radius: float = 0) -> None:
        box = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))
        if radius > 1:
            self.draw.rounded_rectangle(box, radius, outline=self.ink, width=width or self.lw)
        else:
            self.draw.rectangle(box, outline=self.ink, width=width or self.lw)

    def circle(self, centre: Point, r: float, width: int = 0) -> None:
        (cx, cy), w = centre, width or self.lw
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=self.ink, width=w)

    def dashed(self, p0: Point, p1: Point, pattern: Sequence[float] = ()) -> None:
        pattern = pattern or (3 * self.lw + 3, 2 * self.lw + 2)
        length = math.dist(p0, p1)
        ux, uy = (p1[0] - p0[0]) / max(length, 1e-9), (p1[1] - p0[1]) / max(length, 1e-9)
        pos, k = 0.0, 0
        while pos < length:
            end = min(pos + pattern[k % len(pattern)], length)
            if k % 2 == 0:
                a, b = (p0[0] + ux * pos, p0[1] + uy * pos), (p0[0] + ux * end, p0[1] + uy * end)
                self.draw.line([a, b], fill=self.soft_ink, width=1)
            pos, k = end, k + 1

    def centre_line(self, p0: Point, p1: Point) -> None:
        # Long dash, short dash: the drafting convention for axes of symmetry.
        self.dashed(p0, p1, (6 * self.lw + 6, 2 + self.lw, 2, 2 + self.lw))

    def dashed_circle(self, centre: Point, r: float, dashes: int = 36) -> None:
        box, step = (centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r), 360 / dashes
        for i in range(0, dashes, 2):
            self.draw.arc(box, i * step, (i + 1) * step, fill=self.soft_ink, width=1)

    def text(self, xy: Point, text: str, size: int, anchor: str = "mm") -> None:
        self.draw.text(xy, text, fill=self.ink, font=font(size), anchor=anchor)

    def text_fits(self, text: str, size: int, width: float) -> bool:
        return self.draw.textlength(text, font=font(size)) <= width

    def vertical_text(self, centre: Point, text: str, size: int) -> None:
        left, top, right, bottom = font(size).getbbox(text)
        mask = Image.new("L", (right - left + 2, bottom - top + 2))
        ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font(size))
        mask = mask.rotate(90, expand=True)
        corner = (round(centre[0] - mask.width / 2), round(centre[1] - mask.height / 2))
        self.image.paste(self.ink, corner, mask)

    def erase(self, box: Box) -> None:
        x0, y0 = math.floor(min(box[0], box[2])), math.floor(min(box[1], box[3]))
        x1, y1 = math.ceil(max(box[0], box[2])), math.ceil(max(box[1], box[3]))
        self.image.paste(self.paper.crop((x0, y0, x1, y1)), (x0, y0))


def dimension_chain(
    sheet: Sheet, stops: Sequence[float], at: float, edge: float, horizontal: bool, unit: float
) -> None:
    """Extension lines from the object at `edge` to a dimension line at `at`, slash ticks at
    each stop and each span's length (pixels * `unit`, printed with two decimals)."""
    tick, size = 2 + 2 * sheet.lw, 7 + sheet.lw
    sign = 1 if at > edge else -1

    def point(along: float, across: float) -> Point:
        return (along, across) if horizontal else (across, along)

    for s in stops:
        sheet.line([point(s, edge + 2 * sign), point(s, at + tick * sign)], 1, soft=True)
        sheet.line([point(s - tick / 2, at + tick / 2), point(s + tick / 2, at - tick / 2)], 1)
    sheet.line([point(stops[0] - tick, at), point(stops[-1] + tick, at)], 1, soft=True)
    for a, b in pairwise(stops):
        label = f"{(b - a) * unit:.2f}"
        if not sheet.text_fits(label, size, b - a - 4):
            continue
        if horizontal:
            sheet.text(((a + b) / 2, at - 2), label, size, anchor="mb")
        else:
            sheet.vertical_text((at - size * 0.7, (a + b) / 2), label, size)


# ---------------------------------------------------------------- paper, frame, title block


def blue_ground(draws: np.ndarray) -> np.ndarray:
    return draws


def white_ground(draws: np.ndarray) -> np.ndarray:
    """The blue ground's draws mapped onto white..cream paper: the bluer the blueprint would
    have been, the less yellow the paper, so a style is a pure recolouring of the same draws."""
    r, g, b = (draws - (8, 50, 130)) / (32, 50, 66)
    return np.array([244 + 8 * r, 240 + 10 * g, 220 + 26 * b])


@dataclass(frozen=True)
class PaperStyle:
    """How a style colours the sheet; the random draws behind it are the same in every style."""

    ground: Callable[[np.ndarray], np.ndarray]  # from draws R 8-39, G 50-99, B 130-195
    inks: tuple[RGB, RGB, RGB, RGB]  # one is picked, by the same draw in every style
    shade: float  # strength of the blotchy exposure
    grid: tuple[float, float]  # fine and coarse grid lines' blend towards the ink


STYLES: dict[str, PaperStyle] = {
    "blueprint": PaperStyle(
        blue_ground,
        inks=((245, 248, 255), (232, 244, 255), (200, 236, 255), (215, 240, 250)),
        shade=0.06,
        grid=(0.09, 0.2),
    ),
    # Near-black, dark grey, dark sepia and warm black pens on a faint grey grid.
    "paper": PaperStyle(
        white_ground,
        inks=((24, 24, 28), (58, 58, 62), (66, 46, 30), (44, 38, 34)),
        shade=0.015,
        grid=(0.04, 0.08),
    ),
}


def make_paper(
    width: int, height: int, rng: np.random.Generator, style: str = "blueprint"
) -> tuple[Image.Image, RGB]:
    """The style's ground with a fine and a coarse grid; returns it and the ink colour.

    Every style makes the same draws from `rng`, so what is drawn on the paper afterwards
    (the geometry) is the same whatever the style.
    """
    look = STYLES[style]
    draws = np.array([rng.integers(8, 40), rng.integers(50, 100), rng.integers(130, 196)], float)
    ground = look.ground(draws)
    ink = pick(rng, look.inks)
    # Real prints are unevenly exposed: a soft blotchy shade reads as paper, a flat fill doesn't.
    blotches = rng.normal(0.0, 1.0, (3, 4)).astype(np.float32)
    shade = np.asarray(Image.fromarray(blotches).resize((width, height), Image.Resampling.BILINEAR))
    pixels = ground * (1.0 + look.shade * np.clip(shade, -2, 2))[..., None]
    fine = int(rng.integers(8, 15))
    offset = int(rng.integers(0, fine))
    for step, strength in ((fine, look.grid[0]), (fine * int(rng.integers(4, 6)), look.grid[1])):
        for grid in (pixels[offset::step, :], pixels[:, offset::step]):
            grid *= 1 - strength
            grid += strength * np.asarray(ink, float)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), ink


def draw_frame(sheet: Sheet) -> Box:
    """A thin trim line, a heavy border inside it and zone ticks between; returns the inside."""
    width, height = sheet.image.size
    margin = round(min(width, height) * 0.025) + 3
    gap = max(4, round(min(width, height) * 0.022))
    trim = (margin, margin, width - 1 - margin, height - 1 - margin)
    inner = shrink(trim, gap)
    sheet.rect(trim, 1)
    sheet.rect(inner, sheet.lw + 1)
    zones = int(sheet.rng.integers(4, 8))
    for i in range(1, zones):
        x = inner[0] + (inner[2] - inner[0]) * i / zones
        y = inner[1] + (inner[3] - inner[1]) * i / zones
        for edge, inward in ((trim[1], gap), (trim[3], -gap)):
            sheet.line([(x, edge), (x, edge + inward)], 1)
        for edge, inward in ((trim[0], gap), (trim[2], -gap)):
            sheet.line([(edge, y), (edge + inward, y)], 1)
    return inner


def title_block_box(inner: Box, rng: np.random.Generator) -> Box:
    x0, y0, x1, y1 = inner
    width = (x1 - x0) * rng.uniform(0.36, 0.48)
    height = max(27.0, (y1 - y0) * rng.uniform(0.11, 0.16))
    return (x1 - width, y1 - height, x1, y1)


def draw_title_block(sheet: Sheet, box: Box, title: str) -> None:
    """Rows: title; drawing number | scale; drawn by | revision. Text where it fits, pen
    strokes where it doesn't, as on a reduced print."""
    rng, at = sheet.rng, in_box(box)
    sheet.rect(box, sheet.lw)
    for fy in (1 / 3, 2 / 3):
        sheet.line([at(0, fy), at(1, fy)], 1)
    sheet.line([at(0.56, 1 / 3), at(0.56, 1)], 1)
    cells = [
        ((0, 0, 1, 1 / 3), title),
        ((0, 1 / 3, 0.56, 2 / 3), f"DWG NO. BP-{int(rng.integers(1000, 9999))}"),
        ((0.56, 1 / 3, 1, 2 / 3), f"SCALE 1:{pick(rng, [5, 10, 20, 25, 50, 100])}"),
        ((0, 2 / 3, 0.56, 1), f"DRAWN {pick(rng, ['JK', 'AM', 'RS', 'TL', 'PB'])}"),
        ((0.56, 2 / 3, 1, 1), f"REV {pick(rng, 'ABCD')}"),
    ]
    for (fx0, fy0, fx1, fy1), label in cells:
        (x0, y0), (x1, y1) = at(fx0, fy0), at(fx1, fy1)
        size = min(12, int((y1 - y0) * 0.7))
        while size > 7 and not sheet.text_fits(label, size, x1 - x0 - 6):
            size -= 1
        if size >= 7 and sheet.text_fits(label, size, x1 - x0 - 6):
            sheet.text((x0 + 3, (y0 + y1) / 2), label, size, anchor="lm")
        else:
            stroke = (x1 - x0) * rng.uniform(0.4, 0.8)
            sheet.line([(x0 + 3, (y0 + y1) / 2), (x0 + 3 + stroke, (y0 + y1) / 2)], 1)


# ---------------------------------------------------------------- floor plans

# kind -> (room count range, room names, largest room first)
ROOM_SETS: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {
    "small apartment": ((3, 4), ("living room", "bedroom", "kitchen", "bathroom")),
    "house": ((4, 6), ("living room", "kitchen", "bedroom", "bedroom", "bathroom", "garage")),
    "office": ((3, 6), ("open office", "meeting room", "office", "reception", "storage", "office")),
    "studio apartment": ((2, 3), ("studio", "bathroom", "kitchen")),
}


def box_area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def split_rooms(plot: Box, count: int, rng: np.random.Generator) -> list[Box]:
    """Partition the plot by cutting the largest room across its longer side, largest first."""
    rooms = [plot]
    while len(rooms) < count:
        x0, y0, x1, y1 = rooms.pop(max(range(len(rooms)), key=lambda i: box_area(rooms[i])))
        t = rng.uniform(0.35, 0.65)
        if x1 - x0 >= y1 - y0:
            cut = x0 + (x1 - x0) * t
            rooms += [(x0, y0, cut, y1), (cut, y0, x1, y1)]
        else:
            cut = y0 + (y1 - y0) * t
            rooms += [(x0, y0, x1, cut), (x0, cut, x1, y1)]
    return sorted(rooms, key=box_area, reverse=True)


def shared_wall(a: Box, b: Box, min_length: float) -> tuple[Point, Point] | None:
    for lo, hi in ((a, b), (b, a)):
        if lo[2] == hi[0]:  # a cut copies the same float into both rooms, so == is exact
            y0, y1 = max(a[1], b[1]), min(a[3], b[3])
            if y1 - y0 >= min_length:
                return (lo[2], y0), (lo[2], y1)
        if lo[3] == hi[1]:
            x0, x1 = max(a[0], b[0]), min(a[2], b[2])
            if x1 - x0 >= min_length:
                return (x0, lo[3]), (x1, lo[3])
    return None


def door_walls(rooms: list[Box], door: float, rng: np.random.Generator) -> list[tuple]:
    """Walls for interior doors along a random spanning tree, so every room can be reached."""
    linked, walls = {0}, []
    while len(linked) < len(rooms):
        options = [
            (j, wall)
            for i in sorted(linked)
            for j in range(len(rooms))
            if j not in linked and (wall := shared_wall(rooms[i], rooms[j], door * 1.8))
        ]
        if not options:
            break
        j, wall = pick(rng, options)
        linked.add(j)
        walls.append(wall)
    return walls


def cut_door(sheet: Sheet, wall: tuple, door: float, thick: int, inside: Point | None) -> None:
    """A gap in the wall, the leaf square to it and the swing arc (into `inside` if given)."""
    (ax, ay), (bx, by) = wall
    length = math.dist(wall[0], wall[1])
    ux, uy = (bx - ax) / length, (by - ay) / length
    nx, ny = -uy, ux
    start = sheet.rng.uniform(door * 0.4, max(door * 0.4, length - door * 1.4))
    hinge = (ax + ux * start, ay + uy * start)
    jamb = (hinge[0] + ux * door, hinge[1] + uy * door)
    if inside is None:
        side = pick(sheet.rng, [-1, 1])
    else:
        side = 1 if (inside[0] - hinge[0]) * nx + (inside[1] - hinge[1]) * ny > 0 else -1
    half = thick / 2 + 1
    gap = (hinge[0] - abs(nx) * half, hinge[1] - abs(ny) * half)
    sheet.erase((*gap, jamb[0] + abs(nx) * half, jamb[1] + abs(ny) * half))
    leaf = (hinge[0] + nx * side * door, hinge[1] + ny * side * door)
    sheet.line([hinge, leaf], max(1, sheet.lw - 1))
    a_leaf = math.degrees(math.atan2(leaf[1] - hinge[1], leaf[0] - hinge[0]))
    a_jamb = math.degrees(math.atan2(jamb[1] - hinge[1], jamb[0] - hinge[0]))
    start_angle = a_leaf if round((a_jamb - a_leaf) % 360) == 90 else a_jamb
    swing = (hinge[0] - door, hinge[1] - door, hinge[0] + door, hinge[1] + door)
    sheet.draw.arc(swing, start_angle, start_angle + 90, fill=sheet.soft_ink, width=1)


def cut_window(sheet: Sheet, wall: tuple, thick: int) -> None:
    """Three thin lines across a gap in an outside wall: the glazing symbol."""
    (ax, ay), (bx, by) = wall
    t = sheet.rng.uniform(0.25, 0.4)
    p0 = (ax + (bx - ax) * t, ay + (by - ay) * t)
    p1 = (ax + (bx - ax) * (1 - t), ay + (by - ay) * (1 - t))
    dx, dy = (0.0, thick / 2) if ay == by else (thick / 2, 0.0)
    sheet.erase((p0[0] - dx, p0[1] - dy, p1[0] + dx, p1[1] + dy))
    for k in (-1, 0, 1):
        sheet.line([(p0[0] + dx * k, p0[1] + dy * k), (p1[0] + dx * k, p1[1] + dy * k)], 1)
    for x, y in (p0, p1):
        sheet.line([(x - dx, y - dy), (x + dx, y + dy)], 1)


def outside_walls(room: Box, plot: Box) -> list[tuple[Point, Point]]:
    x0, y0, x1, y1 = room
    sides = [
        (y0 == plot[1], ((x0, y0), (x1, y0))),
        (y1 == plot[3], ((x0, y1), (x1, y1))),
        (x0 == plot[0], ((x0, y0), (x0, y1))),
        (x1 == plot[2], ((x1, y0), (x1, y1))),
    ]
    return [wall for on_edge, wall in sides if on_edge]


def label_rooms(sheet: Sheet, rooms: list[Box], names: Sequence[str], size: int) -> None:
    """Room names at the centres; a shorter form, or nothing, where the name won't fit."""
    for (x0, y0, x1, y1), name in zip(rooms, names, strict=True):
        short = name.split()[0] if name.endswith(" room") else name.split()[-1]
        for label in (name.upper(), short.upper()):
            if sheet.text_fits(label, size, (x1 - x0) * 0.85) and y1 - y0 > size * 3:
                sheet.text(((x0 + x1) / 2, (y0 + y1) / 2), label, size)
                break


def draw_floor_plan(sheet: Sheet) -> Content:
    """Rooms partitioning a plot: thick walls, door swings, windows, chained dimensions."""
    rng = sheet.rng
    kind = pick(rng, list(ROOM_SETS))
    (low, high), names = ROOM_SETS[kind]
    count = int(rng.integers(low, high + 1))
    x0, y0, x1, y1 = sheet.area
    gap = max(16.0, min(x1 - x0, y1 - y0) * 0.1)  # room for the dimension chains
    plot = fit_aspect((x0 + gap, y0 + gap, x1 - 4, y1 - 4), rng.uniform(0.75, 1.6))
    rooms = split_rooms(plot, count, rng)
    outer, inner = max(3, 3 * sheet.lw), max(2, 2 * sheet.lw)
    for rx0, ry0, rx1, ry1 in rooms:
        sheet.closed([(rx0, ry0), (rx1, ry0), (rx1, ry1), (rx0, ry1)], inner)
    sheet.rect(shrink(plot, -outer / 2), outer)

    door = min(plot[2] - plot[0], plot[3] - plot[1]) * rng.uniform(0.08, 0.11)
    walls = door_walls(rooms, door, rng)
    for wall in walls:
        cut_door(sheet, wall, door, inner, inside=None)
    exterior = [
        w for room in rooms for w in outside_walls(room, plot) if math.dist(*w) > door * 2.2
    ]
    entrance = pick(rng, exterior) if exterior else None
    if entrance:
        cut_door(sheet, entrance, door, outer, inside=centre_of(plot))
    windows = [w for w in exterior if w is not entrance and rng.random() < 0.75]
    for wall in windows:
        cut_window(sheet, wall, outer)

    metres = rng.uniform(7, 16) / (plot[2] - plot[0])
    top = sorted({v for r in rooms if r[1] == plot[1] for v in (r[0], r[2])})
    left = sorted({v for r in rooms if r[0] == plot[0] for v in (r[1], r[3])})
    dimension_chain(sheet, top, plot[1] - outer - gap * 0.45, plot[1] - outer, True, metres)
    dimension_chain(sheet, left, plot[0] - outer - gap * 0.45, plot[0] - outer, False, metres)
    used = names[:count]
    label_rooms(sheet, rooms, used, size=int(np.clip((plot[2] - plot[0]) / 28, 7, 12)))
    doors = len(walls) + (1 if entrance else 0)
    return Content(
        f"FLOOR PLAN - {kind.upper()}",
        f"a floor plan of {with_article(kind)}",
        [
            f" with {counted(count, 'room')}",
            f" including {counted_list(used)}",
            f", {counted(doors, 'door')} and {counted(len(windows), 'window')}",
        ],
    )


# ---------------------------------------------------------------- mechanical parts


def gear_outline(centre: Point, pitch_r: float, teeth: int, phase: float) -> list[Point]:
    """Trapezoid teeth on a root circle; module = pitch diameter / teeth, as for spur gears."""
    module = 2 * pitch_r / teeth
    tip, root = pitch_r + module, pitch_r - 1.25 * module
    points = []
    for i in range(teeth):
        for r, offset in ((root, -0.28), (tip, -0.15), (tip, 0.15), (root, 0.28)):
            a = phase + (i + offset) * 2 * math.pi / teeth
            points.append((centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)))
    return points


def draw_gear(sheet: Sheet, centre: Point, pitch_r: float, teeth: int, phase: float) -> int:
    """A spur gear with hub, keyed bore, lightening holes, centre lines; returns the holes."""
    (cx, cy), bore, key = centre, pitch_r * 0.14, pitch_r * 0.05
    sheet.closed(gear_outline(centre, pitch_r, teeth, phase))
    sheet.dashed_circle(centre, pitch_r)
    sheet.circle(centre, pitch_r * 0.32, 1)
    sheet.circle(centre, bore)
    sheet.rect((cx - key, cy - bore - key, cx + key, cy - bore * 0.8), 1)
    holes = 0 if teeth < 16 or pitch_r < 40 else int(sheet.rng.integers(4, 7))
    for k in range(holes):
        a = 2 * math.pi * (k + 0.5) / holes
        hole = (cx + pitch_r * 0.58 * math.cos(a), cy + pitch_r * 0.58 * math.sin(a))
        sheet.circle(hole, pitch_r * 0.13, 1)
    reach = pitch_r * 1.25
    sheet.centre_line((cx - reach, cy), (cx + reach, cy))
    sheet.centre_line((cx, cy - reach), (cx, cy + reach))
    return holes


def draw_gears(sheet: Sheet) -> Content:
    rng, (x0, y0, x1, y1) = sheet.rng, sheet.area
    teeth = int(rng.integers(14, 33))
    if x1 - x0 > (y1 - y0) * 1.3 and rng.random() < 0.6:
        pinion = int(rng.integers(8, teeth))
        ratio = pinion / teeth
        pitch = min((x1 - x0) * 0.9 / (2 * (1 + ratio) + 0.2), (y1 - y0) * 0.42)
        cx, cy = (x0 + x1) / 2 - pitch * ratio, (y0 + y1) / 2
        draw_gear(sheet, (cx, cy), pitch, teeth, 0.0)
        # Half a tooth of phase puts the pinion's teeth into the wheel's gaps.
        phase = math.pi + math.pi / pinion
        draw_gear(sheet, (cx + pitch * (1 + ratio), cy), pitch * ratio, pinion, phase)
        teeth_words = f" with {number_word(teeth)} and {number_word(pinion)} teeth"
        details = [teeth_words, " and keyed center bores", ", center lines shown"]
        return Content("SPUR GEAR PAIR", "two meshing spur gears", details)
    pitch = min(x1 - x0, y1 - y0) * 0.4
    holes = draw_gear(sheet, centre_of(sheet.area), pitch, teeth, rng.uniform(0, 1))
    details = [f" with {counted(teeth, 'tooth', 'teeth')}", " and a keyed bore"]
    if holes:
        details.append(f", {counted(holes, 'lightening hole')}")
    return Content("SPUR GEAR", "a spur gear", details)


def draw_bracket(sheet: Sheet) -> Content:
    """An L-bracket: front view with the hole pattern, side view with the bend."""
    rng, (x0, y0, x1, y1) = sheet.rng, sheet.area
    split = x0 + (x1 - x0) * 0.68
    plate = shrink(fit_aspect((x0, y0, split, y1), rng.uniform(0.8, 1.7)), 8)
    px0, py0, px1, py1 = plate
    sheet.rect(plate, sheet.lw + 1, radius=min(px1 - px0, py1 - py0) * 0.08)
    rows, cols = int(rng.integers(1, 3)), int(rng.integers(2, 4))
    hole_r = min((px1 - px0) / cols, (py1 - py0) / rows) * 0.14
    hole_ys = [py0 + (py1 - py0) * (r + 0.5) / rows for r in range(rows)]
    for hy in hole_ys:
        for c in range(cols):
            hx = px0 + (px1 - px0) * (c + 0.5) / cols
            sheet.circle((hx, hy), hole_r)
            sheet.line([(hx - hole_r * 1.5, hy), (hx + hole_r * 1.5, hy)], 1, soft=True)
            sheet.line([(hx, hy - hole_r * 1.5), (hx, hy + hole_r * 1.5)], 1, soft=True)
    t, sx, foot = max(4.0, (px1 - px0) * 0.05), split + (x1 - split) * 0.15, (x1 - split) * 0.7
    profile = [(sx, py0), (sx + t, py0), (sx + t, py1 - t), (sx + foot, py1 - t), (sx + foot, py1)]
    sheet.closed([*profile, (sx, py1)], sheet.lw + 1)
    for hy in hole_ys:  # the holes seen edge-on: hidden lines through the plate
        for y in (hy - hole_r, hy + hole_r):
            sheet.dashed((sx - 3, y), (sx + t + 3, y), (3, 2))
    details = [f" with {counted(rows * cols, 'mounting hole')}", ", front and side views"]
    return Content("L-BRACKET", "an L-shaped metal bracket", details)


def draw_bolt(sheet: Sheet) -> Content:
    """A hex bolt side view with thread marks, maybe a nut, and its end view."""
    rng, (x0, y0, x1, y1) = sheet.rng, sheet.area
    length = rng.uniform(4, 8)
    units = fit_units((x0, y0, x0 + (x1 - x0) * 0.7, y1), length + 0.8, 2.0)
    u, cy = units.scale, (y0 + y1) / 2
    head, tail = units.left + 0.7 * u, units.left + (0.7 + length) * u
    threads = tail - rng.uniform(0.5, 0.8) * length * u
    sheet.rect((units.left, cy - 0.9 * u, head, cy + 0.9 * u), sheet.lw + 1)
    for s in (-1, 1):
        sheet.line([(units.left, cy + s * 0.45 * u), (head, cy + s * 0.45 * u)], 1)
        sheet.line(
            [(head, cy + s * u / 2), (tail - 0.1 * u, cy + s * u / 2), (tail, cy + s * 0.4 * u)]
        )
        sheet.line([(threads, cy + s * 0.4 * u), (tail, cy + s * 0.4 * u)], 1, soft=True)
    sheet.line([(tail, cy - 0.4 * u), (tail, cy + 0.4 * u)])
    for x in np.arange(threads, tail - 0.1 * u, 0.18 * u):
        sheet.line([(x, cy - 0.5 * u), (x + 0.08 * u, cy + 0.5 * u)], 1)
    has_nut = rng.random() < 0.5
    if has_nut:
        nut = (threads + 0.3 * (tail - threads), cy - 0.85 * u)
        sheet.rect((*nut, nut[0] + 0.55 * u, cy + 0.85 * u), sheet.lw)
        for s in (-1, 1):
            sheet.line([(nut[0], cy + s * 0.42 * u), (nut[0] + 0.55 * u, cy + s * 0.42 * u)], 1)
    sheet.centre_line((units.left - 0.3 * u, cy), (tail + 0.3 * u, cy))
    ex, r = x0 + (x1 - x0) * 0.86, min(0.9 * u, (x1 - x0) * 0.12)
    corners = [math.pi / 6 + k * math.pi / 3 for k in range(6)]
    sheet.closed([(ex + r * math.cos(a), cy + r * math.sin(a)) for a in corners], sheet.lw + 1)
    sheet.circle((ex, cy), r * 0.85, 1)
    sheet.centre_line((ex - r * 1.3, cy), (ex + r * 1.3, cy))
    sheet.centre_line((ex, cy - r * 1.3), (ex, cy + r * 1.3))
    subject = "a hex bolt and nut" if has_nut else "a hex bolt"
    return Content("HEX BOLT", subject, [" with a threaded shank", ", side and end views"])


def draw_shaft(sheet: Sheet) -> Content:
    """A stepped shaft: sections of different diameters on one axis, a keyway, lengths."""
    rng, (x0, y0, x1, y1) = sheet.rng, sheet.area
    sections = int(rng.integers(3, 7))
    diameters, lengths = rng.uniform(0.45, 1.0, sections), rng.uniform(0.6, 1.8, sections)
    units = fit_units((x0, y0, x1, y1 - 20), float(lengths.sum()), 1.3)
    u, cy = units.scale, (y0 + y1 - 20) / 2
    stops = [units.left + float(s) * u for s in np.concatenate([[0], np.cumsum(lengths)])]
    for i, d in enumerate(diameters):
        for y in (cy - d * u / 2, cy + d * u / 2):
            sheet.line([(stops[i], y), (stops[i + 1], y)], sheet.lw + 1)
    for i, x in enumerate(stops):
        half = max(diameters[max(i - 1, 0)], diameters[min(i, sections - 1)]) * u / 2
        sheet.line([(x, cy - half), (x, cy + half)], sheet.lw + 1)
    keyed = int(np.argmax(diameters * lengths))  # the keyway goes where there's most room
    key_len, key_w = (stops[keyed + 1] - stops[keyed]) * 0.6, diameters[keyed] * u * 0.25
    kx = (stops[keyed] + stops[keyed + 1] - key_len) / 2
    sheet.rect((kx, cy - key_w / 2, kx + key_len, cy + key_w / 2), 1, radius=key_w / 2)
    sheet.centre_line((stops[0] - 0.3 * u, cy), (stops[-1] + 0.3 * u, cy))
    bottom = cy + float(diameters.max()) * u / 2
    dimension_chain(sheet, stops, bottom + 14, bottom + 2, True, 0.1 / u)
    details = [f" with {counted(sections, 'section')}", " and a keyway", ", length dimensions"]
    return Content("STEPPED SHAFT", "a stepped shaft", details)


def draw_mechanical_part(sheet: Sheet) -> Content:
    return pick(sheet.rng, [draw_gears, draw_bracket, draw_bolt, draw_shaft])(sheet)


# ---------------------------------------------------------------- vehicles

# Side profiles in metres, nose to the right: length, rear deck height, rear pillar base x,
# roof start x, roof end x, windscreen base x, roof height, belt line, bonnet height.
CAR_SHAPES = {
    "sedan": (4.6, 0.95, 0.8, 1.35, 2.75, 3.4, 1.42, 0.95, 0.85),
    "sports car": (4.4, 0.85, 0.6, 1.55, 2.45, 3.3, 1.15, 0.78, 0.66),
    "hatchback": (4.0, 1.05, 0.06, 0.3, 2.2, 2.9, 1.5, 0.98, 0.86),
    "pickup truck": (5.3, 1.0, 2.15, 2.2, 3.2, 3.65, 1.8, 1.0, 1.0),
}


def draw_wheel(sheet: Sheet, centre: Point, r: float, spokes: int = 0) -> None:
    sheet.circle(centre, r, sheet.lw + 1)
    sheet.circle(centre, r * (0.82 if spokes else 0.62), 1)
    sheet.circle(centre, r * 0.15, 1)
    for a in np.linspace(0, 2 * math.pi, spokes, endpoint=False):
        ray = (math.cos(a) * r, math.sin(a) * r)
        hub, rim = [(centre[0] + ray[0] * f, centre[1] + ray[1] * f) for f in (0.15, 0.82)]
        sheet.line([hub, rim], 1)


def wheel_arches(wheels: Sequence[float], r: float, sill: float) -> list[Point]:
    """The body's lower edge, front to back, bowing up over each wheel."""
    arch = r * 1.2
    a0 = math.asin((sill - r) / arch)  # where the arch meets the sill line
    angles = np.linspace(a0, math.pi - a0, 14)
    return [(x + arch * math.cos(a), r + arch * math.sin(a)) for x in wheels for a in angles]


def finish_vehicle(sheet: Sheet, units: Units, length: float, wheels: Sequence[float]) -> None:
    """Ground line and the wheelbase dimension under it."""
    ground = units(0, 0)[1]
    sheet.line([units(-0.3, 0), units(length + 0.3, 0)], 1, soft=True)
    stops = sorted(units(x, 0)[0] for x in (wheels[0], wheels[-1]))
    dimension_chain(sheet, stops, ground + 12, ground + 2, True, 1 / units.scale)


def draw_car(sheet: Sheet, kind: str) -> Content:
    length, deck, c_base, c_top, a_top, a_base, roof, belt, bonnet = CAR_SHAPES[kind]
    roof *= sheet.rng.uniform(0.95, 1.05)
    r, sill = (0.4 if kind == "pickup truck" else 0.34), 0.3
    wheels = (length - 0.9, 1.0 if kind == "pickup truck" else 0.85)
    units = fit_units(sheet.area, length, roof + 0.6)
    # fmt: off
    body = [(0.05, 0.35), (0.0, 0.55), (0.03, deck), (c_base, belt + 0.05), (c_top, roof),
            (a_top, roof), (a_base, belt + 0.03), (length - 0.1, bonnet), (length, 0.55),
            (length - 0.05, 0.35)]
    glass = [(c_base + 0.14, belt + 0.06), (c_top + 0.1, roof - 0.08),
             (a_top - 0.06, roof - 0.08), (a_base - 0.16, belt + 0.06)]
    lamp = [(length - 0.35, bonnet - 0.08), (length - 0.14, bonnet - 0.1),
            (length - 0.14, bonnet - 0.2), (length - 0.35, bonnet - 0.18)]
    # fmt: on
    sheet.closed(units.all(body + wheel_arches(wheels, r, sill)), sheet.lw + 1)
    sheet.closed(units.all(glass), sheet.lw)
    sheet.closed(units.all(lamp), 1)
    doors = 2 if kind in ("sports car", "pickup truck") else 4
    pillar = (c_top + a_top) / 2
    if doors == 4:
        sheet.line(units.all([(pillar, roof - 0.08), (pillar - 0.04, belt + 0.06)]), sheet.lw + 1)
    door_edges = [a_base - 0.1, pillar - 0.05, c_base + 0.1] if doors == 4 else [a_base - 0.1]
    for x in door_edges + ([] if doors == 4 else [c_base + 0.15]):
        sheet.line(units.all([(x, belt), (x, sill + 0.08)]), 1)
    for x in wheels:
        draw_wheel(sheet, units(x, r), r * units.scale)
    finish_vehicle(sheet, units, length, wheels)
    windows = counted(2 if doors == 4 else 1, "side window")
    details = [f" with {counted(doors, 'door')}", f" and {windows}", ", with a wheelbase dimension"]
    return Content(kind.upper(), f"a side view of {with_article(kind)}", details)


def draw_motorcycle(sheet: Sheet) -> Content:
    r, rear, front = 0.32, 0.35, 1.8
    units = fit_units(sheet.area, 2.2, 1.3)
    spokes = int(sheet.rng.integers(6, 13)) * 2
    for x in (rear, front):
        draw_wheel(sheet, units(x, r), r * units.scale, spokes)
    # fmt: off
    parts = {  # polyline, closed?
        "swing arm": ([(rear, r), (0.9, 0.45)], False),
        "shock": ([(0.55, 0.42), (0.72, 0.8)], False),
        "frame": ([(0.4, 0.82), (0.95, 0.8), (1.5, 0.98), (1.36, 0.45)], False),
        "engine": ([(0.85, 0.22), (1.3, 0.22), (1.36, 0.5), (0.95, 0.56)], True),
        "tank": ([(1.0, 0.82), (1.08, 0.98), (1.38, 1.0), (1.5, 0.94), (1.4, 0.88)], True),
        "seat": ([(0.42, 0.84), (1.0, 0.84), (1.02, 0.9), (0.55, 0.94), (0.4, 0.9)], True),
        "fork and bars": ([(front, r), (1.55, 1.05), (1.45, 1.16), (1.36, 1.16)], False),
        "exhaust": ([(1.0, 0.26), (0.55, 0.3), (0.2, 0.44)], False),
    }
    # fmt: on
    for points, closed in parts.values():
        (sheet.closed if closed else sheet.line)(units.all(points), sheet.lw + 1)
    sheet.circle(units(1.66, 0.98), 0.065 * units.scale, 1)  # headlight
    for x, start in ((rear, 200), (front, 230)):  # mudguards
        (cx, cy), fr = units(x, r), r * 1.15 * units.scale
        sheet.draw.arc((cx - fr, cy - fr, cx + fr, cy + fr), start, start + 100, sheet.ink, 1)
    finish_vehicle(sheet, units, 2.2, (rear, front))
    details = [f" with {number_word(spokes)}-spoke wheels", " and a fuel tank", ", ground line"]
    return Content("MOTORCYCLE", "a side view of a motorcycle", details)


def draw_truck(sheet: Sheet) -> Content:
    axles, r = int(sheet.rng.integers(2, 4)), 0.48
    units = fit_units(sheet.area, 7.0, 3.5)
    sheet.rect((*units(0, 3.2), *units(5.15, 0.95)), sheet.lw + 1)  # cargo box
    for x in np.linspace(0.2, 4.95, 6)[1:-1]:
        sheet.line(units.all([(x, 3.1), (x, 1.05)]), 1, soft=True)
    cab = [(5.3, 0.55), (5.3, 2.7), (6.3, 2.7), (6.9, 1.6), (7.0, 1.5), (7.0, 0.55)]
    sheet.line(units.all(cab), sheet.lw + 1)
    sheet.closed(units.all([(5.9, 2.55), (6.25, 2.55), (6.75, 1.7), (5.9, 1.7)]), 1)
    sheet.line(units.all([(5.8, 2.6), (5.8, 0.75)]), 1)  # cab door
    sheet.line(units.all([(0.1, 0.8), (7.0, 0.8)]), sheet.lw)  # chassis
    wheels = [1.1 + 1.05 * k for k in range(axles - 1)] + [6.1]
    for x in wheels:
        draw_wheel(sheet, units(x, r), r * units.scale)
    finish_vehicle(sheet, units, 7.0, wheels)
    details = [f" with {counted(axles, 'axle')}", " and a cargo box", ", ground line and wheelbase"]
    return Content("BOX TRUCK", "a side view of a box truck", details)


def draw_vehicle(sheet: Sheet) -> Content:
    kind = pick(sheet.rng, [*CAR_SHAPES, "motorcycle", "motorcycle", "box truck"])
    if kind == "motorcycle":
        return draw_motorcycle(sheet)
    return draw_truck(sheet) if kind == "box truck" else draw_car(sheet, kind)


# ---------------------------------------------------------------- aircraft

AIRCRAFT = ["jet fighter", "propeller plane", "twin-engine propeller plane", "airliner"]
AIRCRAFT_FEATURES = {
    "jet fighter": " with swept wings and a bubble canopy",
    "propeller plane": " with straight wings and a nose propeller",
    "twin-engine propeller plane": " with two wing-mounted propellers",
    "airliner": " with swept wings and underwing engines",
}


def plane_outline(kind: str, rng: np.random.Generator) -> tuple[list[Point], list[Point]]:
    """Top view, nose at y = 1: the right half of the planform and its engine positions."""
    if kind == "jet fighter":
        span, sweep, tail = rng.uniform(0.3, 0.45), rng.uniform(0.25, 0.42), rng.uniform(0.14, 0.22)
        # fmt: off
        half = [(0, 1.0), (0.03, 0.9), (0.06, 0.72), (0.07, 0.62), (span, sweep),
                (span, sweep - 0.07), (0.09, 0.24), (0.09, 0.16), (tail, 0.03), (tail, -0.01),
                (0.06, 0.02), (0.045, -0.03), (0, -0.03)]
        # fmt: on
        return half, []
    if kind == "airliner":
        span = rng.uniform(0.42, 0.52)
        # fmt: off
        half = [(0, 1.0), (0.03, 0.97), (0.045, 0.9), (0.045, 0.62), (span, 0.36), (span, 0.33),
                (0.045, 0.48), (0.04, 0.15), (0.17, 0.04), (0.17, 0.01), (0.02, 0.04), (0, -0.01)]
        # fmt: on
        return half, [(0.17, 0.55)] + ([(0.33, 0.45)] if rng.random() < 0.4 else [])
    span = rng.uniform(0.5, 0.65)
    # fmt: off
    half = [(0, 1.0), (0.05, 0.98), (0.06, 0.85), (0.06, 0.74), (span, 0.72), (span, 0.62),
            (0.06, 0.6), (0.04, 0.22), (0.2, 0.17), (0.2, 0.07), (0.02, 0.06), (0, 0.04)]
    # fmt: on
    return half, ([(0.2, 0.8)] if kind == "twin-engine propeller plane" else [])


def draw_plane(sheet: Sheet, kind: str, box: Box) -> None:
    half, engines = plane_outline(kind, sheet.rng)
    span = max(x for x, _ in half) * 2 + 0.1
    units = fit_units(box, span, 1.2)

    def at(x: float, y: float) -> Point:  # x from the centre line, y from the tail
        return units(x + span / 2, y + 0.1)

    sheet.closed([at(x, y) for x, y in half] + [at(-x, y) for x, y in reversed(half)], sheet.lw + 1)
    sheet.centre_line(at(0, 1.08), at(0, -0.08))
    cx, cy = at(0, 0.78 if kind == "jet fighter" else 0.82)
    rx, ry = 0.025 * units.scale, 0.07 * units.scale
    sheet.draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=sheet.ink)  # canopy
    propeller = "propeller" in kind
    for x, y in [(side * ex, ey) for ex, ey in engines for side in (-1, 1)]:
        (nx0, ny0), (nx1, ny1) = at(x - 0.03, y + 0.12), at(x + 0.03, y - 0.06)
        sheet.rect((nx0, ny0, nx1, ny1), 1, radius=(nx1 - nx0) / 3)
        if propeller:
            sheet.line([at(x - 0.12, y + 0.13), at(x + 0.12, y + 0.13)], 1)
    if propeller:
        sheet.line([at(-0.13, 1.01), at(0.13, 1.01)], sheet.lw)
        sheet.circle(at(0, 1.0), 0.018 * units.scale, 1)


def draw_aircraft(sheet: Sheet) -> Content:
    """One aircraft in top view; on wide sheets sometimes smaller other types beside it."""
    rng, (x0, y0, x1, y1) = sheet.rng, sheet.area
    kind = pick(rng, AIRCRAFT)
    noun = with_article(f"{kind} plane" if kind == "jet fighter" else kind)
    if x1 - x0 < (y1 - y0) * 1.2 or rng.random() < 0.4:
        draw_plane(sheet, kind, sheet.area)
        return Content(kind.upper(), noun, [AIRCRAFT_FEATURES[kind], ", top view"])
    split = x0 + (x1 - x0) * 0.62
    draw_plane(sheet, kind, (x0, y0, split, y1))
    extras = int(rng.integers(1, 3))
    for k in range(extras):
        box = (split, y0 + (y1 - y0) * k / extras, x1, y0 + (y1 - y0) * (k + 1) / extras)
        draw_plane(sheet, pick(rng, [other for other in AIRCRAFT if other != kind]), shrink(box, 4))
    others = "another aircraft" if extras == 1 else f"{number_word(extras)} other aircraft"
    return Content(kind.upper(), f"{noun} and {others}", [", top views"])


# ---------------------------------------------------------------- furniture

# item -> (width / height of its view, the view)
FURNITURE = {
    "chair": (0.6, "front elevation"),
    "table": (1.6, "front elevation"),
    "sofa": (2.2, "plan"),
    "bed": (0.7, "plan"),
    "bookshelf": (0.62, "front elevation"),
}


def draw_furniture_item(sheet: Sheet, item: str, box: Box) -> str:
    """Draws one item filling `box`; returns what it has ("four back slats")."""
    rng, lw, at = sheet.rng, sheet.lw, in_box(box)
    if item == "chair":
        for fx in (0.06, 0.94):  # back posts run down into the legs
            sheet.line([at(fx, 0), at(fx, 1)], lw + 1)
        sheet.rect((*at(0, 0.52), *at(1, 0.58)), lw)  # seat
        sheet.line([at(0.06, 0.04), at(0.94, 0.04)], lw + 1)  # top rail
        sheet.line([at(0.06, 0.85), at(0.94, 0.85)], 1)  # stretcher
        slats = int(rng.integers(2, 5))
        for fx in np.linspace(0.06, 0.94, slats + 2)[1:-1]:
            sheet.line([at(fx, 0.04), at(fx, 0.52)], 1)
        return counted(slats, "back slat")
    if item == "table":
        sheet.rect((*at(0, 0), *at(1, 0.08)), lw + 1)  # top
        sheet.rect((*at(0.06, 0.08), *at(0.94, 0.2)), 1)  # apron
        for fx in (0.07, 0.89):
            sheet.rect((*at(fx, 0.08), *at(fx + 0.04, 1)), lw)
        return "an apron rail"
    if item == "sofa":
        sheet.rect(box, lw + 1, radius=min(box[2] - box[0], box[3] - box[1]) * 0.08)
        sheet.line([at(0, 0.25), at(1, 0.25)], lw)  # back
        for fx in (0.1, 0.9):  # arms
            sheet.line([at(fx, 0.25), at(fx, 1)], lw)
        cushions = int(rng.integers(2, 5))
        for fx in np.linspace(0.1, 0.9, cushions + 1)[1:-1]:
            sheet.line([at(fx, 0.25), at(fx, 0.96)], 1)
        return counted(cushions, "seat cushion")
    if item == "bed":
        sheet.rect(box, lw + 1)
        sheet.rect((*at(0, 0), *at(1, 0.06)), lw)  # headboard
        pillows = 2 if box[2] - box[0] > (box[3] - box[1]) * 0.6 else 1
        for k in range(pillows):
            left = 0.08 + 0.84 * k / pillows
            sheet.rect((*at(left, 0.1), *at(left + 0.84 / pillows - 0.04, 0.24)), 1, radius=3)
        sheet.line([at(0, 0.36), at(1, 0.36)], 1)  # turned-down cover
        sheet.line([at(0.65, 0.36), at(1, 0.6)], 1)
        return counted(pillows, "pillow")
    sheet.rect(box, lw + 1)
    shelves = int(rng.integers(3, 6))
    for k in range(shelves):
        top, bottom = k / shelves, (k + 1) / shelves
        sheet.line([at(0, bottom), at(1, bottom)], lw)
        fx = 0.05
        while fx < 0.75:  # books of random widths and heights
            width = rng.uniform(0.04, 0.08)
            book_top = bottom - (bottom - top) * rng.uniform(0.55, 0.85)
            sheet.rect((*at(fx, book_top), *at(fx + width, bottom)), 1)
            fx += width + rng.uniform(0, 0.02)
    return counted(shelves, "shelf", "shelves")


def draw_furniture(sheet: Sheet) -> Content:
    """One to three items side by side on a common floor line, each in its usual view."""
    rng, (x0, y0, x1, y1) = sheet.rng, sheet.area
    items = [list(FURNITURE)[int(i)] for i in rng.permutation(len(FURNITURE))[: rng.integers(1, 4)]]
    aspects = [FURNITURE[item][0] for item in items]
    gap = (x1 - x0) * 0.06
    total_gap = gap * (len(items) - 1)
    height = min((y1 - y0) * 0.8, (x1 - x0 - total_gap) * 0.92 / sum(aspects))
    x, floor = (x0 + x1 - height * sum(aspects) - total_gap) / 2, (y0 + y1 + height) / 2
    features = []
    for item, aspect in zip(items, aspects, strict=True):
        features.append(
            draw_furniture_item(sheet, item, (x, floor - height, x + aspect * height, floor))
        )
        x += aspect * height + gap
    views = sorted({FURNITURE[item][1] for item in items})
    views_clause = f", {join_words(views)} view{'s' if len(views) > 1 else ''}"
    if len(items) == 1:
        details = [f" with {features[0]}", views_clause]
    else:
        has = [
            f", the {item} with {feature}" for item, feature in zip(items, features, strict=True)
        ]
        details = [has[0], views_clause, *has[1:]]
    return Content(" + ".join(items).upper(), join_words([with_article(i) for i in items]), details)


# ---------------------------------------------------------------- kitchens


def draw_plan_appliance(sheet: Sheet, item: str, cell: Box) -> None:
    """One appliance seen from above, filling a worktop cell."""
    cell = shrink(cell, 2)
    at, small = in_box(cell), min(cell[2] - cell[0], cell[3] - cell[1])
    if item == "stove":
        sheet.rect(cell, 1)
        for fx, fy, r in (
            (0.28, 0.28, 0.16),
            (0.72, 0.28, 0.12),
            (0.28, 0.72, 0.12),
            (0.72, 0.72, 0.16),
        ):
            sheet.circle(at(fx, fy), small * r, 1)
    elif item == "sink":
        sheet.rect((*at(0.1, 0.12), *at(0.9, 0.88)), sheet.lw, radius=small * 0.12)
        sheet.circle(at(0.5, 0.5), small * 0.05, 1)
    elif item == "blender":
        sheet.rect((*at(0.27, 0.27), *at(0.73, 0.73)), 1)
        sheet.circle(at(0.5, 0.5), small * 0.18, 1)
    else:  # fridge, dishwasher: drafters letter them, or cross them where letters won't fit
        sheet.rect(cell, sheet.lw)
        label = "REF" if item == "fridge" else "DW"
        if sheet.text_fits(label, 8, small - 4):
            sheet.text(at(0.5, 0.5), label, 8)
        else:
            sheet.line([at(0, 0), at(1, 1)], 1)
            sheet.line([at(0, 1), at(1, 0)], 1)


def draw_kitchen_plan(sheet: Sheet, items: list[str]) -> tuple[str, str]:
    """Worktop runs along the walls, items in random cells; returns (subject, view clause)."""
    rng = sheet.rng
    room = shrink(fit_aspect(sheet.area, rng.uniform(0.9, 1.6)), 4)
    rx0, ry0, rx1, ry1 = room
    sheet.rect(shrink(room, -sheet.lw * 1.5), sheet.lw * 3)
    depth = min(rx1 - rx0, ry1 - ry0) * 0.17
    layout = pick(rng, ["galley", "L-shaped", "U-shaped"])
    runs = [(rx0, ry0, rx1, ry0 + depth)]
    if layout == "galley":
        runs.append((rx0, ry1 - depth, rx1, ry1))
    else:
        runs.append((rx0, ry0 + depth, rx0 + depth, ry1 - depth * 1.3))
    if layout == "U-shaped":
        runs.append((rx1 - depth, ry0 + depth, rx1, ry1 - depth * 1.3))
    cells = []
    for run in runs:
        sheet.rect(run, sheet.lw)
        along_x = run[2] - run[0] > run[3] - run[1]
        n = max(2, int(max(run[2] - run[0], run[3] - run[1]) / depth))
        at = in_box(run)
        for k in range(n):
            a, b = k / n, (k + 1) / n
            cells.append((*at(a, 0), *at(b, 1)) if along_x else (*at(0, a), *at(1, b)))
            if k:  # cabinet divisions under the worktop
                sheet.dashed(at(a, 0), at(a, 1)) if along_x else sheet.dashed(at(0, a), at(1, a))
    for item, k in zip(items, rng.permutation(len(cells)), strict=False):
        draw_plan_appliance(sheet, item, cells[int(k)])
    island = layout != "galley" and rng.random() < 0.5
    if island:
        cx, cy = (rx0 + rx1) / 2 + depth * 0.5, (ry0 + ry1) / 2 + depth * 0.3
        sheet.rect((cx - depth * 1.4, cy - depth / 2, cx + depth * 1.4, cy + depth / 2), sheet.lw)
        for k in (-1, 0, 1):  # stools
            sheet.circle((cx + k * depth * 0.9, cy + depth * 0.85), depth * 0.22, 1)
    # The way in: the free left wall of a galley, else the free bottom wall.
    if layout == "galley":
        door = ((rx0, ry0 + depth), (rx0, ry1 - depth))
    else:
        door = ((rx0 + depth * 1.2, ry1), (rx1 - depth * 1.2, ry1))
    cut_door(sheet, door, depth * 0.9, sheet.lw * 3, inside=centre_of(room))
    subject = {"galley": "a galley kitchen", "L-shaped": "an L-shaped kitchen"}
    view = ", plus a central island, plan view" if island else ", plan view"
    return subject.get(layout, "a U-shaped kitchen"), view


def draw_elevation_module(sheet: Sheet, item: str, module: Box, worktop: float) -> None:
    """One 60 cm module of a kitchen front: `module` spans wall-cabinet top to floor and
    `worktop` is the worktop's height as a fraction of it from the top."""
    at, lw = in_box(module), sheet.lw
    if item == "fridge":  # full height, freezer door on top
        sheet.rect((*at(0.02, 0), *at(0.98, 1)), lw + 1)
        sheet.line([at(0.02, 0.35), at(0.98, 0.35)], lw)
        sheet.line([at(0.85, 0.05), at(0.85, 0.15)], lw)
        return
    sheet.rect((*at(0.03, worktop + 0.01), *at(0.97, 0.99)), 1)
    if item == "stove":  # oven door and knobs below, extractor hood above
        sheet.rect((*at(0.15, worktop + 0.1), *at(0.85, 0.95)), 1)
        for fx in (0.2, 0.4, 0.6, 0.8):
            sheet.circle(at(fx, worktop + 0.05), 2 + lw, 1)
        sheet.closed([at(0.1, 0.37), at(0.9, 0.37), at(0.65, 0.08), at(0.35, 0.08)], lw)
        sheet.rect((*at(0.38, 0), *at(0.62, 0.08)), 1)
        return
    if item == "sink":  # a gooseneck tap standing on the worktop
        tap = worktop - 0.04
        sheet.line(
            [at(0.5, tap), at(0.5, tap - 0.1), at(0.65, tap - 0.1), at(0.65, tap - 0.06)], lw
        )
    handle = (0.2, 0.8) if item == "dishwasher" else (0.45, 0.55)
    sheet.line([at(handle[0], worktop + 0.06), at(handle[1], worktop + 0.06)], lw)
    sheet.rect((*at(0.03, 0), *at(0.97, 0.37)), lw)  # wall cabinet
    sheet.line([at(0.5, 0.28), at(0.5, 0.33)], lw)


def draw_kitchen_elevation(sheet: Sheet, items: list[str]) -> tuple[str, str]:
    """Base cabinets, worktop and wall cabinets in a row; appliances take whole modules."""
    rng, (x0, y0, x1, y1) = sheet.rng, sheet.area
    built = [item for item in items if item != "blender"]
    modules = max(len(built), int(np.clip((x1 - x0) / ((y1 - y0) * 0.32), 3, 8)))
    width, worktop = (x1 - x0) / modules, 0.6
    placed = dict(zip((int(k) for k in rng.permutation(modules)), built, strict=False))
    sheet.line([(x0 - 4, y1), (x1 + 4, y1)], sheet.lw)  # floor
    top = y0 + (y1 - y0) * 0.05
    sheet.rect((x0, top + (y1 - top) * (worktop - 0.04), x1, top + (y1 - top) * worktop), sheet.lw)
    for k in range(modules):
        module = (x0 + width * k, top, x0 + width * (k + 1), y1)
        draw_elevation_module(sheet, placed.get(k, "cabinet"), module, worktop)
    if "blender" in items:  # jar on a motor base, standing on the worktop
        clear = [k for k in range(modules) if placed.get(k) in (None, "dishwasher")]
        k = pick(rng, clear or [k for k in range(modules) if placed.get(k) != "fridge"])
        at = in_box((x0 + width * k, top, x0 + width * (k + 1), y1))
        base = worktop - 0.04
        sheet.rect((*at(0.38, base - 0.06), *at(0.62, base)), 1)
        sheet.closed(
            [
                at(0.4, base - 0.06),
                at(0.6, base - 0.06),
                at(0.64, base - 0.24),
                at(0.36, base - 0.24),
            ],
            1,
        )
    return "a kitchen", ", front elevation"


def draw_kitchen(sheet: Sheet) -> Content:
    """A kitchen in plan or front elevation; the caption lists the appliances drawn."""
    rng = sheet.rng
    optional = (("fridge", 0.8), ("dishwasher", 0.5), ("blender", 0.5))
    items = ["stove", "sink"] + [item for item, p in optional if rng.random() < p]
    plan = rng.random() < 0.5
    subject, view = (draw_kitchen_plan if plan else draw_kitchen_elevation)(sheet, items)
    appliances = f" with {join_words([with_article(item) for item in items])}"
    return Content("KITCHEN PLAN" if plan else "KITCHEN ELEVATION", subject, [appliances, view])


FAMILY_DRAWERS: dict[str, Callable[[Sheet], Content]] = {
    "floor_plan": draw_floor_plan,
    "mechanical_part": draw_mechanical_part,
    "vehicle": draw_vehicle,
    "aircraft": draw_aircraft,
    "furniture": draw_furniture,
    "kitchen": draw_kitchen,
}


# ---------------------------------------------------------------- one sheet, the set


def pick_size(rng: np.random.Generator, family: str, low: int, high: int) -> tuple[int, int]:
    """Both sides within [low, high], mostly not square, either orientation (vehicles lie flat)."""
    long = int(rng.integers(low, high + 1))
    short = long if rng.random() < 0.15 else max(low, round(long * rng.uniform(0.55, 0.9)))
    landscape = family == "vehicle" or rng.random() < 0.6
    return (long, short) if landscape else (short, long)


def render_blueprint(
    family: str, size: tuple[int, int], rng: np.random.Generator, style: str = "blueprint"
) -> tuple[Image.Image, Content]:
    """Paper, frame, the family's drawing, then the title block that names it."""
    # Below ~192 px the frame, title block and lettering leave no room to draw in, so small
    # sheets are drawn larger and scaled down, as a reduced print would be.
    zoom = max(1.0, SMALLEST_LAYOUT / min(size))
    width, height = round(size[0] * zoom), round(size[1] * zoom)
    paper, ink = make_paper(width, height, rng, style)
    ground = np.asarray(paper.getpixel((0, 0)), float)
    soft = tuple(int(v) for v in ground + (np.asarray(ink) - ground) * 0.7)
    lw = max(1, round(min(width, height) / 200))
    sheet = Sheet(paper.copy(), paper, rng, ink, soft, lw)
    inner = draw_frame(sheet)
    block = title_block_box(inner, rng)
    pad = 6 + 2 * lw
    sheet.area = (inner[0] + pad, inner[1] + pad, inner[2] - pad, block[1] - pad)
    content = FAMILY_DRAWERS[family](sheet)
    draw_title_block(sheet, block, content.title)
    image = sheet.image if zoom == 1.0 else sheet.image.resize(size, Image.Resampling.LANCZOS)
    return image, content


def checked_families(config: SynthConfig) -> list[str]:
    unknown = [family for family in config.families if family not in BLUEPRINT_FAMILIES]
    if unknown:
        allowed = ", ".join(BLUEPRINT_FAMILIES)
        raise BluepriError(f"unknown blueprint family {unknown[0]!r}; choose from: {allowed}")
    if config.min_side > config.max_side:
        raise BluepriError(
            f"min_side ({config.min_side}) is larger than max_side ({config.max_side})"
        )
    return list(dict.fromkeys(config.families))


def prepare_out_dir(out_dir: Path, keep: set[str]) -> None:
    """Create out_dir, or clear the set a previous run wrote there (only the files it listed,
    and not those this run writes again: see `write_if_changed`)."""
    output_folder(out_dir)
    metadata = out_dir / METADATA_NAME
    if not metadata.is_file():
        return
    for line in metadata.read_text().splitlines():
        try:
            name = json.loads(line).get("file_name")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(name, str) and OUR_FILE_NAME.fullmatch(name) and name not in keep:
            (out_dir / name).unlink(missing_ok=True)
    metadata.unlink()


def write_if_changed(path: Path, data: bytes) -> None:
    """Leave a file with these exact bytes untouched: its mtime is part of a cache's source
    fingerprint, so the same set synthesised again keeps its prepared cache valid."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.write_bytes(data)


def sheet_seed(config: SynthConfig, index: int) -> np.random.SeedSequence:
    """Image `index`'s own seed: the `index`-th child of the set's seed, so image i doesn't
    depend on how much randomness the images before it happened to use."""
    return np.random.SeedSequence(config.seed % 2**64, spawn_key=(index,))


def deal_families(config: SynthConfig) -> tuple[list[str], set[int]]:
    """Each image's family, and which images go uncaptioned.

    Families are dealt round-robin then shuffled, so each requested family appears once there
    are enough images; exactly round(num_images * uncaptioned_fraction) rows get a null text.
    """
    families = checked_families(config)
    n = config.num_images
    rng = np.random.default_rng(np.random.SeedSequence(config.seed % 2**64))
    assigned = [families[int(k) % len(families)] for k in rng.permutation(n)]
    blank = round(n * config.uncaptioned_fraction)
    uncaptioned = {int(k) for k in rng.choice(n, size=blank, replace=False)}
    return assigned, uncaptioned


def render_sheet(config: SynthConfig, index: int, family: str) -> tuple[Image.Image, str]:
    """Image `index` of the set, drawn in `config.style`, and its caption."""
    rng = np.random.default_rng(sheet_seed(config, index))
    size = pick_size(rng, family, config.min_side, config.max_side)
    image, content = render_blueprint(family, size, rng, config.style)
    return image, build_caption(content, rng, PADDING[config.style])


def drawing(index: int, config: SynthConfig) -> tuple[Image.Image, str | None]:
    """Image `index` and its text (None where the set leaves it uncaptioned), exactly what
    `synthesize(config)` writes for that row, rendered in memory; `config.out_dir` is unused."""
    if not 0 <= index < config.num_images:
        raise BluepriError(f"drawing {index} is outside a set of {config.num_images} images")
    assigned, uncaptioned = deal_families(config)
    image, caption = render_sheet(config, index, assigned[index])
    return image, None if index in uncaptioned else caption


def synthesize(config: SynthConfig, on_image: Callable[[int], None] | None = None) -> SynthResult:
    """Draw `config.num_images` captioned sheets into `config.out_dir` as an imagefolder, in
    `config.style` (see `deal_families` for how families and missing captions are dealt).

    `on_image(i)` is called after image i is written.
    """
    assigned, uncaptioned = deal_families(config)
    out_dir = Path(config.out_dir)
    names = [f"bp_{i:05d}_{family}.png" for i, family in enumerate(assigned)]
    prepare_out_dir(out_dir, keep=set(names))
    rows = []
    for i, (family, name) in enumerate(zip(assigned, names, strict=True)):
        image, caption = render_sheet(config, i, family)
        png = io.BytesIO()
        image.save(png, format="PNG")
        write_if_changed(out_dir / name, png.getvalue())
        rows.append(
            {"file_name": name, "text": None if i in uncaptioned else caption, "family": family}
        )
        if on_image is not None:
            on_image(i)
    # Written last: a run that dies half-way leaves no metadata pointing at missing images.
    metadata = out_dir / METADATA_NAME
    metadata.write_text("".join(json.dumps(row) + "\n" for row in rows))
    n = config.num_images
    return SynthResult(
        out_dir=str(out_dir),
        metadata_path=str(metadata),
        num_images=n,
        num_captioned=n - len(uncaptioned),
        families=dict(Counter(assigned)),
    )
