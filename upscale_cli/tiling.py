"""Tile geometry: where the tiles of an image go and how their outputs are blended.

A convolutional network's output at a pixel depends only on the input within its receptive
field, ``radius`` input pixels either side.  Cutting the input into overlapping windows,
running each one and keeping from each only the pixels that lie at least ``radius`` pixels
from the window's interior edges therefore reproduces the whole-image output exactly (the
"overlap-tile" strategy of Ronneberger et al., U-Net, MICCAI 2015, Fig. 2).  Here the kept
parts are not butted together but cross-faded: a tile's weight along each axis is zero within
``margin`` pixels of an interior edge and ramps linearly to one beyond, and the blended output
is ``sum_t w_t * y_t / sum_t w_t``.  Every tile with a non-zero weight at a pixel is exact there
when ``overlap >= radius`` (margin = radius), so the blend is exact too; with a smaller overlap
the margin stops just short of the overlap's middle and the cross-fade hides the seams.

All tiles of a plan have the same size, so they stack into batches: the last row and column are
shifted back to end at the image edge.  Sizes and positions are multiples of the model's
``size_multiple`` so that no tile needs padding and window-partitioned networks see the same
window grid as on the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def floor_to(value: int, multiple: int) -> int:
    """``value`` rounded down to a multiple of ``multiple``."""
    return value // multiple * multiple


def ceil_to(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


def axis_layout(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, tuple[int, ...]]:
    """Size and start positions of the tiles along one axis.

    ``length`` (a multiple of ``multiple``) is covered by windows of equal size ``<= tile`` whose
    neighbours overlap by at least ``2 * overlap``.  Among the layouts with the fewest windows,
    the smallest window is chosen, and the windows are spread evenly from the first edge to the
    last, so that the unavoidable extra overlap is shared instead of leaving a nearly redundant
    last tile.  ``tile >= length`` gives one window of the whole axis.

    Raises:
        ValueError: the stride ``tile - 2 * overlap`` is below ``multiple``.
    """
    if tile >= length:
        return length, (0,)
    tile = floor_to(tile, multiple)
    if floor_to(tile - 2 * overlap, multiple) < multiple:
        raise ValueError(f"tile {tile} leaves no room beside an overlap of {overlap} per side")

    def count(size: int) -> int:
        stride = floor_to(size - 2 * overlap, multiple)
        return 1 + math.ceil((length - size) / stride)

    n = count(tile)
    while tile - multiple >= 2 * overlap + multiple and count(tile - multiple) == n:
        tile -= multiple
    span = length - tile  # spread evenly: every gap is at most the stride, none much smaller
    return tile, tuple(floor_to(i * span // (n - 1), multiple) for i in range(n))


def axis_weights(
    length: int, tile: int, starts: tuple[int, ...], scale: int, margin: int, overlap: int
) -> list[Tensor]:
    """Normalised 1-D blend weights, one ``(scale * tile,)`` vector per window, output resolution.

    At output index ``j`` of a window, ``d`` is its distance in output pixels to the nearest
    interior edge (image edges do not count).  The raw weight is 0 for ``d < scale * margin`` and
    ``(d - scale * margin + 1/2) / ramp`` clipped to 1 beyond, ``ramp = 2 * scale * (overlap -
    margin)`` (a step when ``ramp == 0``); with windows ``2 * overlap`` apart the two ramps of a
    seam add up to one.  The weights are divided by their sum over windows; since a plan's tiles
    are the product of its row and column windows, the 2-D weight ``wy * wx`` is then normalised.
    """
    out_len = scale * length
    j = torch.arange(scale * tile, dtype=torch.float64)
    ramp = 2 * scale * (overlap - margin)
    raw: list[Tensor] = []
    for start in starts:
        inf = torch.full_like(j, math.inf)
        left = j if start > 0 else inf
        right = scale * tile - 1 - j if start + tile < length else inf
        d = torch.minimum(left, right) - scale * margin
        w = (d + 0.5).div(ramp).clamp(0, 1) if ramp > 0 else (d >= 0).double()
        raw.append(w)
    total = torch.zeros(out_len, dtype=torch.float64)
    for start, w in zip(starts, raw):
        total[scale * start : scale * (start + tile)] += w
    return [(w / total[scale * s : scale * (s + tile)]).float() for s, w in zip(starts, raw)]


@dataclass(frozen=True)
class TilePlan:
    """How one image is cut (all sizes in input pixels of the padded image).

    Attributes:
        height, width: the image size.
        padded_height, padded_width: the size after padding to the model's ``size_multiple``.
        scale: the model's scale.
        tile_height, tile_width: the size of every tile, context included.
        overlap: context pixels each tile carries per interior side.
        margin: pixels next to an interior tile edge that get no weight in the blend.
        ys, xs: start rows and start columns of the tiles.
        batch_size: tiles per forward pass.
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    scale: int
    tile_height: int
    tile_width: int
    overlap: int
    margin: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    batch_size: int

    @property
    def tile(self) -> int:
        """The larger tile side (``0`` means nothing: a one-tile plan still reports its size)."""
        return max(self.tile_height, self.tile_width)

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    @property
    def count(self) -> int:
        """Tiles per image."""
        return self.rows * self.cols

    @property
    def batches(self) -> int:
        """Forward passes per image."""
        return math.ceil(self.count / self.batch_size)

    @property
    def windows(self) -> list[tuple[int, int]]:
        """``(y, x)`` start of every tile, row by row."""
        return [(y, x) for y in self.ys for x in self.xs]

    def weights(self) -> tuple[list[Tensor], list[Tensor]]:
        """Normalised blend weights per row window and per column window (see :func:`axis_weights`)."""
        wy = axis_weights(self.padded_height, self.tile_height, self.ys, self.scale, self.margin, self.overlap)
        wx = axis_weights(self.padded_width, self.tile_width, self.xs, self.scale, self.margin, self.overlap)
        return wy, wx

    def to_dict(self) -> dict[str, object]:
        """The facts ``--dry-run`` and ``--json`` report."""
        return {
            "tile": [self.tile_height, self.tile_width],
            "overlap": self.overlap,
            "grid": [self.rows, self.cols],
            "tiles": self.count,
            "batch_size": self.batch_size,
            "batches": self.batches,
        }


def blend_margin(overlap: int, radius: int) -> int:
    """Pixels of no weight next to an interior edge.

    ``radius`` when the overlap covers it (exact result).  Otherwise ``overlap - 1``: the seam is
    a cross-fade two input pixels wide in the middle of the overlap, where both tiles are as far
    from their edges as they can be.  Measured with CARN-M at x4 on Set14 ``zebra`` (48 px tiles,
    overlaps 2/4/8): this margin gives the highest PSNR against the whole-image output and the
    smallest column-to-column error step at the seams; half the overlap loses up to 5 dB, a hard
    cut in the middle (margin = overlap) leaves 1.1-1.5x larger steps.
    """
    return radius if overlap >= radius else max(overlap - 1, 0)


def make_plan(
    height: int,
    width: int,
    *,
    scale: int,
    tile: int,
    overlap: int,
    radius: int,
    multiple: int = 1,
    batch_size: int = 1,
) -> TilePlan:
    """Lay tiles of at most ``tile`` pixels (``0``: whole image) with ``overlap`` over an image.

    The image is padded to a multiple of ``multiple`` first (as the model runtime would), and
    the tile size is rounded down to one.  If the tile is too small for the overlap, the
    overlap shrinks to what fits.
    """
    ph, pw = ceil_to(height, multiple), ceil_to(width, multiple)
    if tile <= 0:
        tile = max(ph, pw)
    tile = max(floor_to(tile, multiple), multiple)
    if tile < max(ph, pw):
        overlap = min(overlap, max(0, (tile - multiple) // 2))
    th, ys = axis_layout(ph, tile, overlap, multiple)
    tw, xs = axis_layout(pw, tile, overlap, multiple)
    return TilePlan(
        height=height,
        width=width,
        padded_height=ph,
        padded_width=pw,
        scale=scale,
        tile_height=th,
        tile_width=tw,
        overlap=overlap,
        margin=blend_margin(overlap, radius),
        ys=ys,
        xs=xs,
        batch_size=batch_size,
    )
