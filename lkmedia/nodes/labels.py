"""Name labels on composited tiles: white text on a darkened band at a tile's bottom left.

Each (text, size) is rendered once with Pillow (Noto Sans or DejaVu Sans when installed,
else Pillow's own font) into a small alpha mask and kept; drawing a label is then a blend
on a few thousand pixels of the output frame's planes, on the compositor's thread.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

FONTS = ("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
         "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
TEXT_Y = 235  # white
BAND = 0.45  # the band under the text keeps this much of the picture's brightness
MIN_PX, MAX_PX = 10, 28


def label_size(tile_h: int) -> int:
    """The text height for a tile ``tile_h`` pixels high."""
    return max(MIN_PX, min(MAX_PX, tile_h // 14))


@lru_cache(maxsize=512)
def text_mask(text: str, px: int) -> np.ndarray:
    """An alpha mask (uint8, even width and height) of ``text`` at ``px`` pixels high, with a margin."""
    from PIL import Image, ImageDraw, ImageFont

    path = next((f for f in FONTS if os.path.exists(f)), None)
    font = ImageFont.truetype(path, px) if path else ImageFont.load_default(size=px)
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    pad = max(2, px // 3)
    w, h = (right - left) + 2 * pad, (bottom - top) + 2 * pad
    img = Image.new("L", (w + (w & 1), h + (h & 1)), 0)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=255, font=font)
    return np.asarray(img, dtype=np.uint8)


def draw_label(planes: tuple[np.ndarray, np.ndarray, np.ndarray], cell: tuple[int, int, int, int],
               text: str) -> None:
    """Draw ``text`` at the bottom left of ``cell`` (x, y, w, h) on yuv420p ``planes``."""
    if not text:
        return
    Y, U, V = planes
    x, y, w, h = cell
    mask = text_mask(text, label_size(h))
    mh, mw = min(mask.shape[0], h) & ~1, min(mask.shape[1], w) & ~1
    if mh < 2 or mw < 2:
        return
    y0 = y + h - mh
    region = Y[y0:y0 + mh, x:x + mw]
    alpha = mask[:mh, :mw].astype(np.uint16)
    band = (region * BAND).astype(np.uint16)
    region[...] = ((band * (255 - alpha) + TEXT_Y * alpha) // 255).astype(np.uint8)
    cy, cx = y0 // 2, x // 2
    for plane in (U, V):  # the band is grey: its colour fades towards neutral
        c = plane[cy:cy + mh // 2, cx:cx + mw // 2]
        c[...] = (128 + (c.astype(np.int16) - 128) * BAND).astype(np.uint8)
