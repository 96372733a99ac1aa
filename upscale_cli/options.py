"""The options of one run, with their defaults, in one place.

The command line (:mod:`upscale_cli.commands.upscale`) and the Python API
(:func:`upscale_cli.api.upscale_image`) both build a :class:`RunOptions` with
:meth:`RunOptions.from_flat` from the same flat names (``device``, ``outscale``, ...), so they
share the defaults below and the checks in each group's ``__post_init__``; the engine and the
pipeline take the groups whole.  Adding an option means adding its field here and using it,
plus its ``--flag`` parameter on the command line, whose default is the field's (read from the
class attribute, so that ``upscale --help`` runs none of the checks' imports); nothing forwards
it by name in between (``tests/test_hardening_cli.py`` checks the flags match the fields).

A group checks what it can check alone, before any work, and raises
:class:`~upscale_cli.errors.UsageError` (exit 2) naming the flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .models.loaded import LoadedModel

DEFAULT_MODEL = "default"
"""Model used when none is named: the in-house network shipped inside the package
(``upscale_cli/weights/default.safetensors``), so a first run needs no download."""
DEFAULT_SCALE = 4
"""Scale used when none is given, if the model has it (else the model's largest)."""
MAX_OUTSCALE = 100.0
"""Largest ``--outscale``.  The zoo's networks scale by 8 at most; a final scale beyond 100 is
a typo rather than super-resolution (``1e9`` would ask for 10^18 pixels of a 1 px image).  The
memory check of each image (:func:`upscale_cli.api.check_memory`) guards what lies below."""


@dataclass(frozen=True)
class ModelOptions:
    """Which network runs: ``--model``, ``--scale``, ``--weights``, ``--arch``.

    ``model=None`` means :data:`DEFAULT_MODEL`, unless ``weights`` is given (then the file and
    ``arch`` alone decide); ``scale=None`` means :data:`DEFAULT_SCALE` or the model's own.
    """

    model: str | None = None
    scale: int | None = None
    weights: str | None = None
    arch: str | None = None

    def resolved(self) -> tuple[str | None, int | None]:
        """``(name, scale)`` to load, with the defaults filled in (see the class docstring)."""
        if self.weights is not None:
            return self.model, self.scale
        from .models import get_spec

        name = DEFAULT_MODEL if self.model is None else self.model
        if self.scale is not None:
            return name, self.scale
        scales = get_spec(name).scales
        return name, DEFAULT_SCALE if DEFAULT_SCALE in scales else scales[-1]

    def load(self, progress: bool = True) -> LoadedModel:
        """The :class:`~upscale_cli.models.LoadedModel` these options name."""
        from .loader import load_model

        name, scale = self.resolved()
        return load_model(name, scale, weights=self.weights, arch=self.arch, progress=progress)


@dataclass(frozen=True)
class EngineOptions:
    """How the network runs (:class:`upscale_cli.engine.Upscaler`)."""

    device: str = "auto"
    precision: str = "auto"
    tile: int | str = "auto"
    tile_overlap: int | None = None
    batch_size: int = 4
    backend: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise UsageError(f"--tile-overlap {self.tile_overlap}: must be >= 0")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be >= 1")
        object.__setattr__(self, "tile", _parse_tile(self.tile))


def _parse_tile(tile: int | str) -> int | str:
    if isinstance(tile, str):
        text = tile.strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit():
            raise UsageError(f"--tile {tile!r}: expected a number of pixels, 0 (whole image) or auto")
        tile = int(text)
    if tile < 0:
        raise UsageError(f"--tile {tile}: must be >= 0 (0 = whole image)")
    return tile


@dataclass(frozen=True)
class PictureOptions:
    """What becomes of each picture: its final size."""

    outscale: float | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.outscale is not None and (self.width is not None or self.height is not None):
            raise UsageError("give either --outscale or --width/--height, not both")
        if self.outscale is not None and not (math.isfinite(self.outscale) and 0 < self.outscale <= MAX_OUTSCALE):
            raise UsageError(f"--outscale {self.outscale}: must be a number > 0 and <= {MAX_OUTSCALE:g}")
        for flag, value in (("--width", self.width), ("--height", self.height)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} {value}: must be >= 1")

    def final_size(self, height: int, width: int, scale: int) -> tuple[int, int]:
        """Output ``(height, width)``: the model's ``scale``, or ``outscale``, or the requested
        ``width``/``height`` (aspect ratio kept when only one of the two is given)."""
        if self.outscale is not None:
            return max(1, round(height * self.outscale)), max(1, round(width * self.outscale))
        if self.width is None and self.height is None:
            return height * scale, width * scale
        if self.width is None:
            return self.height, max(1, round(width * self.height / height))  # type: ignore[operator]
        if self.height is None:
            return max(1, round(height * self.width / width)), self.width
        return self.height, self.width


@dataclass(frozen=True)
class OutputOptions:
    """Where and how outputs are written."""

    output: Path | None = None
    fmt: str = "auto"
    quality: int | None = None
    suffix: str = "_x{scale}"
    overwrite: bool = False
    skip_existing: bool = False

    def __post_init__(self) -> None:
        from .io import resolve_output_format

        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise UsageError(f"--quality {self.quality}: must be between 1 and 100")
        resolve_output_format(self.fmt, None, False)  # names --format when unknown
        self.name_suffix("model", 4, None)  # checks the placeholders

    def name_suffix(self, model: str, scale: int, outscale: float | None) -> str:
        """The suffix with ``{scale}`` (``outscale`` when given) and ``{model}`` filled in."""
        factor = f"{outscale:g}" if outscale is not None else str(scale)
        try:
            return self.suffix.format(scale=factor, model=model)
        except (KeyError, IndexError, ValueError):
            raise UsageError(
                f"--suffix {self.suffix!r}: only {{scale}} and {{model}} may be used as placeholders"
            ) from None


@dataclass(frozen=True)
class InputOptions:
    """Which inputs are taken and how a run goes over them."""

    recursive: bool = False
    shard: str | None = None
    max_pixels: int | None = None
    first_frame: bool = False  # of animations and multi-page files: accept losing the others
    continue_on_error: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        from .inputs import parse_shard

        parse_shard(self.shard)
        if self.max_pixels is not None and self.max_pixels < 0:
            raise UsageError(f"--max-pixels {self.max_pixels}: must be >= 0 (0 = no limit)")


@dataclass(frozen=True)
class ReportOptions:
    """What the run prints."""

    as_json: bool = False
    quiet: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class RunOptions:
    """Every option of one run, grouped; ``RunOptions()`` holds the defaults."""

    model: ModelOptions = field(default_factory=ModelOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    picture: PictureOptions = field(default_factory=PictureOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    input: InputOptions = field(default_factory=InputOptions)
    report: ReportOptions = field(default_factory=ReportOptions)

    @classmethod
    def from_flat(cls, groups: tuple[str, ...] | None = None, /, **values: Any) -> RunOptions:
        """Build the options from flat names (``device="cpu", outscale=2.0``); a name missing
        takes its default.  ``groups`` limits the groups that may be set (the API takes only
        ``model``, ``engine`` and ``picture``).

        Raises:
            TypeError: a name that is no option (of the allowed groups).
            UsageError: a value a group refuses.
        """
        built: dict[str, Any] = {}
        for group in fields(cls):
            if groups is not None and group.name not in groups:
                continue
            names = {f.name for f in fields(group.default_factory)}  # type: ignore[arg-type]
            mine = {k: values.pop(k) for k in list(values) if k in names}
            built[group.name] = group.default_factory(**mine)  # type: ignore[misc]
        if values:
            raise TypeError(f"unexpected option(s): {', '.join(sorted(values))}")
        return cls(**built)
