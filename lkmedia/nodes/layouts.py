"""Where each tile goes: LiveKit's layouts (``template-default`` over components-core),
as pure geometry on even pixel rectangles.

* grid: 1 tile full frame; 2 side by side (one above the other on a portrait canvas);
  3-4 in 2x2, 5-9 in 3x3, 10-16 in 4x4, 17-25 in 5x5, and past 25 only the first page
  (25) is seen, as in a recording of LiveKit's paginated grid. A layout wider than the
  canvas allows (2x2 needs 560 px, 3x3 700, 4x4 960, 5x5 1100) gives way to the next
  smaller one (its page holds fewer tiles). Rows fill left to right; a partial last row
  is left-aligned.
* speaker: the first tile in focus; the others in a carousel on the left (a sixth of the
  width; below the focus, a sixth of the height, on a canvas narrower than 600 px), tiles
  16:10, as many as fit. One tile alone is full frame.
* single-speaker: the first tile, full frame; nothing else.

Tiles are given in display order (lkmedia.egress.tiles decides it). Each video is
letterboxed in its cell (its whole picture is shown).
"""
from __future__ import annotations

LAYOUTS = ("grid", "speaker", "single-speaker", "grid-light", "speaker-light", "single-speaker-light")

Rect = tuple[int, int, int, int]  # x, y, w, h (even numbers)

#: components-core GRID_LAYOUTS: columns, rows, max tiles, min width, orientation.
_GRIDS = ((1, 1, 1, 0, ""), (1, 2, 2, 0, "portrait"), (2, 1, 2, 0, "landscape"), (2, 2, 4, 560, ""),
          (3, 3, 9, 700, ""), (4, 4, 16, 960, ""), (5, 5, 25, 1100, ""))
CAROUSEL_SHARE = 1 / 6  # lk-focus-layout: grid-template-columns 1fr 5fr
TILE_ASPECT = 16 / 10  # the carousel's tiles
NARROW = 600  # below this width the carousel goes under the focus


def _even(v: float) -> int:
    return max(2, int(v) & ~1)


def grid_shape(n: int, width: int = 1280, height: int = 720) -> tuple[int, int]:
    """Columns and rows for ``n`` tiles on a ``width`` x ``height`` canvas."""
    orientation = "portrait" if height > width else "landscape"
    grids = [g for g in _GRIDS if g[4] in ("", orientation)]
    k = next((i for i, g in enumerate(grids) if g[2] >= n), len(grids) - 1)
    while k > 0 and grids[k][3] > width:
        k -= 1
    return grids[k][0], grids[k][1]


def layout_cells(layout: str, n: int, focus: int, width: int, height: int) -> list[Rect | None]:
    """The cell of each of ``n`` tiles (None: not shown). ``focus``: the tile in focus in
    the speaker layouts (the first, normally)."""
    kind = layout.removesuffix("-light")
    if n == 0:
        return []
    if kind == "single-speaker" or (kind == "speaker" and n == 1):
        return [(0, 0, width, height) if i == focus else None for i in range(n)]
    if kind == "speaker":
        return _speaker(n, focus, width, height)
    cols, rows = grid_shape(n, width, height)
    cw, ch = _even(width / cols), _even(height / rows)
    return [(i % cols * cw, i // cols * ch, cw, ch) if i < cols * rows else None for i in range(n)]


def _speaker(n: int, focus: int, width: int, height: int) -> list[Rect | None]:
    if width >= NARROW:  # carousel on the left, vertical
        side = _even(width * CAROUSEL_SHARE)
        main: Rect = (side, 0, width - side, height)
        tile_w, tile_h = side, _even(side / TILE_ASPECT)
        slots = max(1, round(height / tile_h))
        tile_h = _even(height / slots) if slots * tile_h > height else tile_h
        place = [(0, k * tile_h, tile_w, tile_h) for k in range(slots)]
    else:  # carousel under the focus, horizontal
        side = _even(height * CAROUSEL_SHARE)
        main = (0, 0, width, height - side)
        tile_w, tile_h = _even(side * TILE_ASPECT), side
        slots = max(1, round(width / tile_w))
        tile_w = _even(width / slots) if slots * tile_w > width else tile_w
        place = [(k * tile_w, height - side, tile_w, tile_h) for k in range(slots)]
    cells: list[Rect | None] = []
    k = 0
    for i in range(n):
        if i == focus:
            cells.append(main)
        elif k < len(place):
            cells.append(place[k])
            k += 1
        else:
            cells.append(None)
    return cells


def letterbox(iw: int, ih: int, cell: Rect) -> Rect:
    """The largest even rect of aspect iw:ih centred in ``cell``."""
    x, y, cw, ch = cell
    s = min(cw / iw, ch / ih)
    w, h = min(cw, _even(iw * s + 0.5)), min(ch, _even(ih * s + 0.5))
    return x + ((cw - w) // 2 & ~1), y + ((ch - h) // 2 & ~1), w, h
