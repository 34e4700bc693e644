"""Procedural blueprint drawings with captions, written as a Hugging Face imagefolder.

This module owns the synthetic stand-in for the paper's "Sisigoks/Blueprints" set: floor
plans, mechanical parts, vehicles, aircraft, furniture and kitchens drawn in white line work
on blueprint-blue paper, each with a caption built from what was actually drawn. It needs
only PIL and numpy, so tests and demos get a realistic dataset offline, and the same config
always gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
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

METADATA_NAME = "metadata.jsonl"
CAPTION_MIN, CAPTION_MAX = 30, 110
# A rerun deletes only names like these, so a stale metadata.jsonl can never point the
# cleanup at a user's own files or outside out_dir.
OUR_FILE_NAME = re.compile(r"bp_\d+_[a-z_]+\.png")
PADDING_CLAUSES = (" on blueprint paper", ", white lines on a blue grid", ", technical drawing")

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


def build_caption(content: Content, rng: np.random.Generator) -> str:
    """'a drawing of' + subject + some detail clauses, within the dataset's 30-110 characters.

    Clauses are added whole and in order, so a caption is never cut mid-word and never says
    more than the drawing shows; a short one gets a neutral clause about the paper.
    """
    caption = f"a drawing of {content.subject}"
    wanted = int(rng.integers(1, len(content.details) + 1)) if content.details else 0
    for clause in content.details[:wanted]:
        if len(caption + clause) > CAPTION_MAX:
            break
        caption += clause
    for clause in PADDING_CLAUSES:
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


def make_paper(width: int, height: int, rng: np.random.Generator) -> tuple[Image.Image, RGB]:
    """Blueprint-blue ground with a fine and a coarse grid; returns it and the ink colour."""
    ground = np.array([rng.integers(8, 40), rng.integers(50, 100), rng.integers(130, 196)], float)
    ink = pick(rng, [(245, 248, 255), (232, 244, 255), (200, 236, 255), (215, 240, 250)])
    # Real prints are unevenly exposed: a soft blotchy shade reads as paper, a flat fill doesn't.
    blotches = rng.normal(0.0, 1.0, (3, 4)).astype(np.float32)
    shade = np.asarray(Image.fromarray(blotches).resize((width, height), Image.BILINEAR))
    pixels = ground * (1.0 + 0.06 * np.clip(shade, -2, 2))[..., None]
    fine = int(rng.integers(8, 15))
    offset = int(rng.integers(0, fine))
    for step, strength in ((fine, 0.09), (fine * int(rng.integers(4, 6)), 0.2)):
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


def label_rooms(sheet: Sheet, rooms: list[Box], names: Sequence[str]) -> None:
    for (x0, y0, x1, y1), name in zip(rooms, names, strict=True):
        size = int(min(12, max(7, (x1 - x0) / 9)))
        short = name.split()[0] if name.endswith(" room") else name.split()[-1]
        for label in (name.upper(), short.upper()):
            if sheet.text_fits(label, size, (x1 - x0) * 0.8) and y1 - y0 > size * 3:
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
    exterior = [w for room in rooms for w in outside_walls(room, plot) if math.dist(*w) > door * 2.2]
    entrance = pick(rng, exterior) if exterior else None
    if entrance:
        cut_door(sheet, entrance, door, outer, inside=((plot[0] + plot[2]) / 2, (plot[1] + plot[3]) / 2))
    windows = [w for w in exterior if w is not entrance and rng.random() < 0.75]
    for wall in windows:
        cut_window(sheet, wall, outer)

    metres = rng.uniform(7, 16) / (plot[2] - plot[0])
    top = sorted({v for r in rooms if r[1] == plot[1] for v in (r[0], r[2])})
    left = sorted({v for r in rooms if r[0] == plot[0] for v in (r[1], r[3])})
    dimension_chain(sheet, top, plot[1] - outer - gap * 0.45, plot[1] - outer, True, metres)
    dimension_chain(sheet, left, plot[0] - outer - gap * 0.45, plot[0] - outer, False, metres)
    used = names[:count]
    label_rooms(sheet, rooms, used)
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
