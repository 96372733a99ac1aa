"""Training options: one dataclass, read from a TOML file and/or the command line.

Precedence: built-in defaults < ``--config FILE`` (TOML) < flags given on the command line.
The TOML file holds the same keys as the flags (``patch-size`` or ``patch_size``), plus keys
that have no flag:

* ``name``: the model name written into the exported weights (default: ``--model``);
* ``model_kwargs``: a table of build kwargs overriding the model's (``{n_feats = 32}``);
* ``degradation``: a table turning on real-world degradations (see :class:`Degradation`
  for its keys, :mod:`upscale_cli.train.degrade` for what they do), or ``true`` for the
  defaults;
* ``cache_dir``: a folder for decoded images (``.npy``), memory-mapped by later runs;
* ``channels_last``: ``"auto"`` (on CUDA), ``true`` or ``false``;
* ``log_every``: steps between plain log lines when stderr is not a terminal.

``deep_supervision`` (``--deep-supervision`` / ``--no-deep-supervision``) is ``true``,
``false`` or absent (auto: on for the networks that have intermediate outputs to supervise,
see :mod:`upscale_cli.train.supervision`).

``loss`` may be a string (``"l1=1,perceptual:vgg16=0.01"``) or a table
(``{l1 = 1.0, "perceptual:vgg16" = 0.01}``); ``scale`` an integer or a list (several scales
train a multi-scale network, one scale per batch); ``data`` a path or a list of paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the package tomllib was taken from (PEP 680), same API
    import tomli as tomllib

from ..errors import UsageError

LOSSES = ("l1", "mse", "charbonnier", "perceptual", "texture", "highpass", "adversarial")
"""Loss names accepted by ``--loss``; see :mod:`upscale_cli.train.losses`."""
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GRAD_CLIP_MODES = ("norm", "adjustable")
"""``--grad-clip-mode``: clip the global L2 norm to ``--grad-clip``, or every component to
``[-theta/lr, theta/lr]`` with ``theta = --grad-clip`` (VDSR's adjustable clipping)."""
DISCRIMINATORS = ("vgg", "srgan")
"""``--discriminator`` of GAN mode: ESRGAN's VGG-style network or SRGAN's (96x96 HR patches)."""
DEFAULT_MILESTONES = (0.2, 0.4, 0.6, 0.8)
"""Where the ``step`` schedule halves the rate, as fractions of the post-warm-up steps, unless a
recipe, the TOML file or ``--milestones`` says otherwise."""
RESIZE_METHODS = ("cubic", "lanczos3", "bilinear", "area", "nearest")
"""Downscale methods a degradation may draw from: the :func:`~upscale_cli.resize.imresize`
kernels ``cubic``, ``lanczos3``, ``nearest``; torch's antialiased ``bilinear``; ``area`` (the
mean of each ``s x s`` block)."""


@dataclass(frozen=True)
class Degradation:
    """Parameters of the real-world degradation (TOML table ``[degradation]``).

    Probabilities are per sample; ranges are ``[low, high]`` drawn uniformly.  Noise sigma is on
    the 0..255 scale; blur sigma is in HR pixels.
    """

    blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    resize: tuple[str, ...] = ("cubic", "lanczos3", "bilinear", "area")
    noise: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 25.0)
    jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 95)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], origin: str = "degradation") -> Degradation:
        """Build from a TOML table; unknown keys and bad values raise :class:`UsageError`."""
        known = {f.name for f in fields(cls)}
        for key in table:
            if key not in known:
                raise UsageError(f"{origin}: unknown degradation key {key!r}; known: {', '.join(sorted(known))}")
        values = dict(table)
        for key in ("blur_sigma", "noise_sigma", "jpeg_quality", "resize"):
            if key in values:
                values[key] = tuple(values[key]) if isinstance(values[key], (list, tuple)) else (values[key],)
        deg = cls(**values)
        for key in ("blur", "noise", "jpeg"):
            if not 0 <= getattr(deg, key) <= 1:
                raise UsageError(f"{origin}: degradation {key!r} is a probability in [0, 1]")
        for key in ("blur_sigma", "noise_sigma", "jpeg_quality"):
            lo_hi = getattr(deg, key)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
                raise UsageError(f"{origin}: degradation {key!r} must be [low, high] with 0 <= low <= high")
        if not 1 <= deg.jpeg_quality[0] <= deg.jpeg_quality[1] <= 100:
            raise UsageError(f"{origin}: degradation 'jpeg_quality' must lie in [1, 100]")
        bad = [m for m in deg.resize if m not in RESIZE_METHODS]
        if bad or not deg.resize:
            raise UsageError(f"{origin}: degradation 'resize' must list methods among {', '.join(RESIZE_METHODS)}")
        return deg


@dataclass(frozen=True)
class LossTerm:
    """One term of the objective: ``name[:variant]=weight``."""

    name: str
    weight: float
    variant: str | None = None

    @property
    def key(self) -> str:
        """The term's label in logs (``perceptual:vgg16``)."""
        return f"{self.name}:{self.variant}" if self.variant else self.name


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``upscale train`` (flags and TOML keys share these names)."""

    model: str
    data: tuple[str, ...]
    scale: tuple[int, ...] = ()
    out: str | None = None
    val_set: str | None = None
    data_dir: str | None = None
    loss: tuple[LossTerm, ...] = (LossTerm("l1", 1.0),)
    patch_size: int = 48
    batch_size: int = 16
    steps: int = 300_000
    stop_at: int | None = None
    lr: float = 2e-4
    optimizer: str = "adam"
    schedule: str = "cosine"
    milestones: tuple[float, ...] = DEFAULT_MILESTONES
    warmup: int = 0
    grad_clip: float = 0.0
    grad_clip_mode: str = "norm"
    deep_supervision: bool | None = None
    discriminator: str = "vgg"
    ema: float = 0.999
    precision: str = "auto"
    device: str = "auto"
    workers: int | None = None
    resume: bool = False
    val_every: int = 5000
    save_every: int = 1000
    seed: int | None = None
    tensorboard: bool = False
    init: str | None = None
    vgg_weights: str | None = None
    # keys without a flag (TOML only)
    name: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    degradation: Degradation | None = None
    cache_dir: str | None = None
    channels_last: str | bool = "auto"
    log_every: int = 100
    # where the values came from (set by build_config): the family's recipe, and for each option
    # "paper" / "ours" (the recipe), "config FILE", "flag"; options absent kept the defaults
    recipe: str | None = None
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        """``--out``, or ``runs/<model>-x<scale>`` when not given."""
        if self.out:
            return Path(self.out)
        return Path("runs") / f"{self.model}-x{'-'.join(map(str, self.scale)) or 'auto'}"

    @property
    def gan(self) -> bool:
        """Does the objective hold an adversarial term (train a discriminator too)?"""
        return any(t.name == "adversarial" for t in self.loss)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON/TOML-compatible values (for checkpoints and ``model.json``),
        which :func:`build_config` takes back."""
        out = dataclasses.asdict(self)
        out["loss"] = format_losses(self.loss)
        out["scale"] = list(self.scale)
        out["milestones"] = list(self.milestones)
        out["data"] = list(self.data)
        out["model_kwargs"] = dict(self.model_kwargs)
        del out["recipe"], out["origins"]  # how the options were found (model.json), not options
        return out


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe", "origins"}
"""The options, in a TOML file or as flags."""


def parse_losses(spec: str | Mapping[str, Any]) -> tuple[LossTerm, ...]:
    """``"l1=1,perceptual:vgg16=0.01"`` (or the same as a mapping) -> loss terms.

    A bare name means weight 1.  Raises :class:`UsageError` for unknown names, bad weights,
    duplicates, or an objective with no term.
    """
    items: list[tuple[str, Any]]
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in str(spec).split(","))):
            name, eq, weight = part.partition("=")
            items.append((name.strip(), weight.strip() if eq else 1.0))
    terms: list[LossTerm] = []
    for raw, weight in items:
        name, _, variant = str(raw).strip().lower().partition(":")
        if name not in LOSSES:
            raise UsageError(f"--loss: unknown loss {name!r}; choose from {', '.join(LOSSES)}")
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise UsageError(f"--loss: weight of {raw!r} is not a number: {weight!r}") from None
        if not w > 0:
            raise UsageError(f"--loss: weight of {raw!r} must be positive, got {weight!r}")
        term = LossTerm(name, w, variant or None)
        if any(t.key == term.key for t in terms):
            raise UsageError(f"--loss: {term.key!r} given twice")
        terms.append(term)
    if not terms:
        raise UsageError("--loss: no loss term given (e.g. --loss l1=1)")
    return tuple(terms)


def format_losses(terms: tuple[LossTerm, ...]) -> str:
    """Inverse of :func:`parse_losses`."""
    return ",".join(f"{t.key}={t.weight:g}" for t in terms)


def parse_scales(value: Any) -> tuple[int, ...]:
    """``4``, ``"2,3,4"`` or ``[2, 3, 4]`` -> ``(2, 3, 4)`` (integers >= 2, no duplicates)."""
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        scales = tuple(int(str(p).strip()) for p in parts if str(p).strip())
    except ValueError:
        raise UsageError(f"--scale: expected integers such as 4 or 2,3,4, got {value!r}") from None
    if not scales or min(scales) < 2 or len(set(scales)) != len(scales):
        raise UsageError(f"--scale: expected distinct integers >= 2, got {value!r}")
    return scales


def parse_milestones(value: Any, origin: str = "--milestones") -> tuple[float, ...]:
    """``"0.5,0.8"`` or ``[0.5, 0.8]`` -> ``(0.5, 0.8)``: increasing fractions in (0, 1)."""
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        out = tuple(float(str(p).strip()) for p in parts if str(p).strip())
    except ValueError:
        raise UsageError(f"{origin}: expected fractions such as 0.5,0.8, got {value!r}") from None
    if not out or any(not 0 < m < 1 for m in out) or list(out) != sorted(set(out)):
        raise UsageError(f"{origin}: expected increasing fractions in (0, 1), got {value!r}")
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """The options of a TOML config file, keys normalised to the dataclass names."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"{p}: cannot read config ({err.strerror or err})") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{p}: not valid TOML ({err})") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise UsageError(f"{p}: unknown key {key!r}")
        out[name] = value
    return out


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a raw TOML/flag value into the dataclass field's type."""
    if name == "loss":
        return parse_losses(value)
    if name == "scale":
        return parse_scales(value)
    if name == "milestones":
        return parse_milestones(value, origin)
    if name == "data":
        items = [value] if isinstance(value, (str, Path)) else list(value)
        return tuple(str(v) for v in items)
    if name == "degradation":
        if value is None or value is False:
            return None
        if value is True:
            return Degradation()
        if not isinstance(value, Mapping):
            raise UsageError(f"{origin}: 'degradation' must be a table or true")
        return Degradation.from_dict(value, origin)
    if name == "model_kwargs":
        if not isinstance(value, Mapping):
            raise UsageError(f"{origin}: 'model_kwargs' must be a table")
        return dict(value)
    if name in ("out", "val_set", "data_dir", "init", "vgg_weights", "cache_dir", "name") and value is not None:
        return str(value)
    return value


def _check(cfg: TrainConfig) -> None:
    """Range and choice checks; one :class:`UsageError` per problem."""
    if not cfg.data:
        raise UsageError("--data: give at least one folder of training images")
    choices = {
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "precision": PRECISIONS,
        "grad_clip_mode": GRAD_CLIP_MODES,
        "discriminator": DISCRIMINATORS,
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise UsageError(f"--{key.replace('_', '-')}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    positive = {
        "patch_size": cfg.patch_size,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "log_every": cfg.log_every,
    }
    for key, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"--{key.replace('_', '-')}: expected a positive integer, got {value!r}")
    if cfg.stop_at is not None and (not isinstance(cfg.stop_at, int) or not 1 <= cfg.stop_at <= cfg.steps):
        raise UsageError(f"--stop-at: expected an integer in 1..--steps ({cfg.steps}), got {cfg.stop_at!r}")
    non_negative = {"warmup": cfg.warmup, "val_every": cfg.val_every, "save_every": cfg.save_every}
    for key, value in non_negative.items():
        if not isinstance(value, int) or value < 0:
            raise UsageError(f"--{key.replace('_', '-')}: expected an integer >= 0, got {value!r}")
    if cfg.workers is not None and (not isinstance(cfg.workers, int) or cfg.workers < 0):
        raise UsageError(f"--workers: expected an integer >= 0, got {cfg.workers!r}")
    if not cfg.lr > 0:
        raise UsageError(f"--lr: expected a positive number, got {cfg.lr!r}")
    if cfg.grad_clip < 0:
        raise UsageError(f"--grad-clip: expected a number >= 0 (0 = off), got {cfg.grad_clip!r}")
    if cfg.grad_clip_mode == "adjustable" and not cfg.grad_clip > 0:
        raise UsageError(
            "--grad-clip-mode adjustable: give theta with --grad-clip (e.g. 0.01, VDSR's bound 0.1 at lr 0.1)"
        )
    if cfg.deep_supervision not in (None, True, False):
        raise UsageError(f"deep_supervision: expected true or false, got {cfg.deep_supervision!r}")
    if not 0 <= cfg.ema < 1:
        raise UsageError(f"--ema: expected a decay in [0, 1) (0 = off), got {cfg.ema!r}")
    if cfg.seed is not None and (not isinstance(cfg.seed, int) or cfg.seed < 0):
        raise UsageError(f"--seed: expected an integer >= 0, got {cfg.seed!r}")
    if cfg.channels_last not in ("auto", True, False):
        raise UsageError(f'channels_last: expected "auto", true or false, got {cfg.channels_last!r}')


def build_config(flags: Mapping[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """Merge the defaults, the model family's recipe (:mod:`.recipes`), the TOML file and the
    flags given (``None`` values are ignored), recording where each option came from.

    Raises:
        UsageError: unknown keys, bad values, or a required option (``model``, ``data``) missing.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"config {config_file}", read_toml(config_file)))
    for key in flags:
        if key not in FIELDS:
            raise UsageError(f"unknown training option {key!r}")
    layers.append(("flag", {k: v for k, v in flags.items() if v is not None}))
    model = next((values["model"] for _, values in reversed(layers) if values.get("model")), None)
    for required, value in (("model", model), ("data", next((v["data"] for _, v in layers if v.get("data")), None))):
        if not value:
            raise UsageError(f"--{required} is required (on the command line or in --config)")
    from .recipes import recipe_for

    recipe = recipe_for(str(model))
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if recipe is not None:
        for key, value in recipe.values.items():
            merged[key], origins[key] = _coerce(key, value, f"recipe {recipe.name}"), recipe.origin(key)
    for origin, values in layers:
        for key, value in values.items():
            where = f"--{key.replace('_', '-')}" if origin == "flag" else origin.removeprefix("config ")
            merged[key] = _coerce(key, value, where)
            origins[key] = origin
    if recipe is not None:
        merged["recipe"] = recipe.name
    merged["origins"] = origins
    try:
        cfg = TrainConfig(**merged)
    except TypeError as err:
        raise UsageError(f"bad training options: {err}") from None
    _check(cfg)
    return cfg
