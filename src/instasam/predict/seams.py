"""Nuclei seen by two tiles of a slide: each kept once, and no two outlines overlapping.

Neighbouring tiles overlap, so a nucleus near a seam is segmented by both. The ownership
rule of :mod:`instasam.predict.slides` keeps it in one tile when both segment it alike.
A network's tiles do not always agree (the watershed's normalisation is per tile, and
context differs), so a nucleus can be kept twice, overlapping itself, or by neither tile.
This module settles those cases after all tiles are done, from their outlines only:

* each tile reports its *seam candidates*: the nuclei it owns that another tile could also
  see (their box leaves the part of the tile no other tile covers), marked primary, and
  the whole nuclei it sees but does not own (centroid in a neighbour's core), secondary;
* candidates are settled in priority order - primary before secondary, then the one whose
  centroid lies further from an inner tile edge (more context), then tile order. A primary
  at least half covered by accepted nuclei of other tiles is one of them seen again and is
  dropped; a smaller overlap is trimmed off it. A secondary is kept (trimmed) only when
  accepted nuclei cover less than a fifth of it: it fills a gap no tile's owner filled.

So an owned nucleus that another tile also kept appears once, a nucleus that no tile owned
is recovered from the tile that saw it whole, and no two outlines share a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from instasam.io.slides import Tile

# An owned candidate this much covered by accepted nuclei is one of them seen again; less
# is a disagreement about the boundary, trimmed off. A candidate its tile does not own only
# fills a gap: it is kept when accepted nuclei cover little of it, so that a nucleus every
# tile left to another is not lost, and never as a sliver of what others kept.
SAME_NUCLEUS = 0.5
GAP_FILL = 0.2


def exclusive_box(tile: Tile) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` level pixels of the tile that no neighbouring tile covers.

    Cores run to the middle of each overlap (:func:`instasam.tiling.core_spans`), so a
    neighbour reaches as far past the core boundary as the core lies inside the tile; one
    pixel more is allowed for the rounding of that middle.
    """
    x1, y1 = tile.x + tile.width, tile.y + tile.height
    left = tile.x if tile.at_left else 2 * tile.core_x[0] - tile.x + 1
    top = tile.y if tile.at_top else 2 * tile.core_y[0] - tile.y + 1
    right = x1 if tile.at_right else 2 * tile.core_x[1] - x1 - 1
    bottom = y1 if tile.at_bottom else 2 * tile.core_y[1] - y1 - 1
    return left, top, right, bottom


@dataclass
class SeamCandidate:
    """One seam candidate's place in the run and its pixels on the working level."""

    tile: int  # index of the tile in processing order
    line: int  # index of its feature in the tile's file
    primary: bool
    margin: float  # model px from its centroid to the nearest inner tile edge
    x0: int
    y0: int
    mask: np.ndarray = field(repr=False)

    @property
    def priority(self) -> tuple:
        return (not self.primary, -self.margin, self.tile, self.line)


def _overlap(a: SeamCandidate, mask: np.ndarray, b: SeamCandidate) -> np.ndarray | None:
    """The pixels of ``mask`` (in ``a``'s box) that ``b`` covers (None when none)."""
    ax1, ay1 = a.x0 + mask.shape[1], a.y0 + mask.shape[0]
    bx1, by1 = b.x0 + b.mask.shape[1], b.y0 + b.mask.shape[0]
    x0, y0, x1, y1 = max(a.x0, b.x0), max(a.y0, b.y0), min(ax1, bx1), min(ay1, by1)
    if x0 >= x1 or y0 >= y1:
        return None
    shared = np.zeros_like(mask)
    shared[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0] = (
        mask[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
        & b.mask[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    )
    return shared if shared.any() else None


def settle_seams(candidates: list[SeamCandidate]) -> dict[tuple[int, int], np.ndarray | None]:
    """What becomes of each candidate, by ``(tile, line)``.

    Returns
    -------
    dict
        ``None``: dropped. A mask: accepted; the candidate's own ``mask`` object when
        untouched, else a trimmed copy (same box) whose outline must be redrawn.
    """
    order = sorted(candidates, key=lambda c: c.priority)
    fate: dict[tuple[int, int], np.ndarray | None] = {}
    # Boxes are small next to the slide: a coarse grid finds the accepted neighbours.
    cell = 64
    grid: dict[tuple[int, int], list[SeamCandidate]] = {}
    for c in order:
        mask = c.mask
        area = int(mask.sum())
        limit = (SAME_NUCLEUS if c.primary else GAP_FILL) * area
        inside: list[SeamCandidate] = []
        for other in {id(o): o for o in _near(grid, c, cell)}.values():
            if other.tile == c.tile:
                continue
            shared = _overlap(c, mask, other)
            if shared is None:
                continue
            if int(shared.sum()) == int(other.mask.sum()) and shared.sum() < limit:
                # A small piece wholly inside: trimming it would leave a hole, which an
                # outline cannot show. It is a fragment of this nucleus: absorbed.
                inside.append(other)
                continue
            mask = mask & ~shared
        if area == 0 or area - int(mask.sum()) >= limit:
            fate[(c.tile, c.line)] = None
            continue
        for other in inside:
            fate[(other.tile, other.line)] = None
            for key in _cells(other, cell):
                grid[key].remove(other)
        settled = SeamCandidate(c.tile, c.line, c.primary, c.margin, c.x0, c.y0, mask)
        for key in _cells(settled, cell):
            grid.setdefault(key, []).append(settled)
        fate[(c.tile, c.line)] = mask
    return fate


def _cells(c: SeamCandidate, cell: int) -> list[tuple[int, int]]:
    x1, y1 = c.x0 + c.mask.shape[1] - 1, c.y0 + c.mask.shape[0] - 1
    return [
        (gx, gy)
        for gx in range(c.x0 // cell, x1 // cell + 1)
        for gy in range(c.y0 // cell, y1 // cell + 1)
    ]


def _near(grid: dict, c: SeamCandidate, cell: int) -> list[SeamCandidate]:
    return [other for key in _cells(c, cell) for other in grid.get(key, ())]
