"""Pictures people look at instead of reading: contact sheets with captions under each image,
and matplotlib figures as PNG bytes."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

SHEET_BACKGROUND = (24, 28, 36)
FIGURE_DPI = 100
LABEL_COLOUR = (230, 236, 245)


def fit_to_cell(image: Image.Image, cell: int) -> Image.Image:
    """Scale to fit a cell, up (nearest, so small renders stay crisp) or down (lanczos)."""
    scale = min(cell / image.width, cell / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    method = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return image.resize(size, method)


def contact_sheet(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    *,
    columns: int = 4,
    cell: int = 256,
    label_lines: int = 3,
) -> Image.Image:
    """Grid of `images` scaled to fit `cell` x `cell`, each with its label wrapped beneath."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    labels = list(labels) if labels is not None else [""] * len(images)
    font = ImageFont.load_default()
    line_height = 12
    label_height = line_height * label_lines + 6 if any(labels) else 0
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    pad = 8
    sheet = Image.new(
        "RGB",
        (columns * (cell + pad) + pad, rows * (cell + label_height + pad) + pad),
        SHEET_BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    chars_per_line = max(8, cell // 6)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        x = pad + (index % columns) * (cell + pad)
        y = pad + (index // columns) * (cell + label_height + pad)
        thumb = fit_to_cell(image.convert("RGB"), cell)
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        lines = textwrap.wrap(label, chars_per_line)[:label_lines]
        for n, line in enumerate(lines):
            draw.text((x, y + cell + 3 + n * line_height), line, fill=LABEL_COLOUR, font=font)
    return sheet


def new_figure(width: float, height: float):
    """A matplotlib figure of its own (no pyplot: no global state, no display needed, safe
    in Ray workers and threads)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()
