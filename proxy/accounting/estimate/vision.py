"""Prompt tokens of an image, by the model's published vision rules. Pure.

OpenAI bills an image at high detail as ``base + tiles * per_tile``: the image is scaled to fit
2048 x 2048, then so that its short side is 768, and cut into 512-pixel tiles. The recorded runs
show the second scaling going up as well as down: a 1000 x 600 plot cost gpt-4o-mini 6 tiles
(1280 x 768), not 4. At low
detail only ``base`` is billed. gpt-4o-mini uses the same tiles at about 33 times the tokens
(2833 + 5667 per tile), so that its price per image matches gpt-4o's.

An Assistants run never returns an image's size: a message part or a code interpreter output
names only a file id. Where the code that drew the image says its size (matplotlib's
``figsize=(w, h)`` and ``dpi=``, 100 by default), the tiles follow from it; otherwise the table
constant ``image_tiles`` is used, so that an unknown image is a fitted number of tiles.
"""

from __future__ import annotations

import math
import re

__all__ = ["VisionRule", "figure_tiles", "tiles_for_size", "vision_rule"]

VisionRule = tuple[int, int]  # (base tokens, tokens per 512-pixel tile)

_MINI: VisionRule = (2833, 5667)
_STANDARD: VisionRule = (85, 170)
# Model name prefixes whose images count as gpt-4o-mini's; every other vision model as gpt-4o's.
_MINI_PREFIXES = ("gpt-4o-mini",)

_FIGSIZE = re.compile(r"figsize\s*=\s*[\(\[]\s*([0-9.]+)\s*,\s*([0-9.]+)\s*[\)\]]")
_DPI = re.compile(r"\bdpi\s*=\s*([0-9.]+)")
_DEFAULT_DPI = 100.0


def vision_rule(model: str | None) -> VisionRule:
    """(base, per tile) of ``model``'s images."""
    name = (model or "").lower()
    # Azure deployments and dated snapshots keep the family's name inside them.
    if any(p in name for p in _MINI_PREFIXES):
        return _MINI
    return _STANDARD


def tiles_for_size(width: float, height: float) -> int:
    """512-pixel tiles of a ``width`` x ``height`` image at high detail."""
    if width <= 0 or height <= 0:
        return 0
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = 768 / min(width, height)
    width, height = width * scale, height * scale
    return math.ceil(width / 512) * math.ceil(height / 512)


def figure_tiles(code: str) -> int | None:
    """Tiles of the figure ``code`` draws, when it sets ``figsize``; else None."""
    size = _FIGSIZE.search(code)
    if size is None:
        return None
    dpi_match = _DPI.search(code)
    try:
        dpi = float(dpi_match.group(1)) if dpi_match else _DEFAULT_DPI
        width, height = float(size.group(1)) * dpi, float(size.group(2)) * dpi
    except ValueError:
        return None
    if not (math.isfinite(width) and math.isfinite(height)):
        return None
    return tiles_for_size(width, height) or None
