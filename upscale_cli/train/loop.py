"""The trainer: builds everything a config asks for, runs the steps, validates, checkpoints,
exports.

One step (``t`` 0-based, ``t + 1`` steps done after it):

1. the batch of step ``t`` (:mod:`.data`: a pure function of seed and step) arrives as uint8
   and becomes RGB 0..1 on the device;
2. the network runs through the :class:`~upscale_cli.models.LoadedModel` calling convention
   (RGB 0..1 in and out; ``rgb255`` and Y-only families are converted inside, exactly as at
   inference), under autocast when ``--precision`` asks for it;
3. the weighted loss terms (:class:`~.losses.Objective`) are summed and back-propagated (with
   fp16 loss scaling), gradients are clipped (``--grad-clip-mode norm``: their global L2 norm
   to ``--grad-clip``; ``adjustable``: every component to ``[-theta/lr, theta/lr]`` with
   ``theta = --grad-clip`` and ``lr`` the step's learning rate, VDSR's adjustable gradient
   clipping, :func:`upscale_cli.models.vdsr.adjustable_gradient_clip_`), the optimiser and
   the schedule step, the EMA folds the new weights in;
4. GAN mode (an ``adversarial`` term): the discriminator of ``--discriminator`` then takes one
   step on its loss (relativistic average or standard, the term's variant) of real HR against
   the detached output (alternating updates, as SRGAN and ESRGAN);
5. every ``--val-every`` steps rank 0 scores the EMA (else the live) weights on the validation
   set and exports them when they are the best so far; every ``--save-every`` steps it writes
   the checkpoint.

With validation off, every checkpoint also exports the current weights; the end of the run
always validates (when on), checkpoints and exports.

Deep supervision (the one hook a network may declare).  A network with the methods of
:class:`~.supervision.DeeplySupervised` - ``training_outputs(x) -> list[Tensor]`` (every
supervised output, the final one last) and ``supervision_loss(outputs, hr, criterion,
progress) -> Tensor`` (the paper's combination of the per-output losses) - is trained on all
its outputs when ``--deep-supervision`` is on, which is the default for such networks (DRCN,
multi-supervised MemNet, CMSC: every intermediate prediction; LapSRN / MS-LapSRN: every
pyramid level against the HR downscaled to its size).  Step 2 then runs ``training_outputs``
(wrapped in :class:`~.supervision.TrainingOutputs`, which DDP wraps), turns every output into
RGB 0..1 and step 3 takes ``supervision_loss`` with the objective's terms as the criterion, so
each term is still logged on its own (:mod:`.supervision`).  Validation and export use the
final output, as inference does.  Every other network, and ``--no-deep-supervision``, trains
the final output alone.

Determinism.  With ``--seed`` the run is reproducible: the weight initialisation, every batch
(a pure function of seed and step, whatever the number of DataLoader workers or processes, see
:mod:`.data`) and, on CUDA, the kernels (deterministic algorithms, no cuDNN autotuning).  On the
CPU the losses are then identical bit for bit between runs with the same number of threads, and
a run killed at any moment and resumed with ``--resume`` logs exactly the losses of the
uninterrupted run (the checkpoint restores weights, EMA, optimisers, schedules, loss scalers
and the RNG states; the data needs only the step).  Across DDP world sizes the data is the
same, and the losses agree up to the order of floating-point reductions.  Without ``--seed`` a
random seed is drawn, recorded in the checkpoint and ``model.json``, and reused on resume.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from ..devices import resolve_device
from ..errors import UpscaleError, UsageError
from ..loader import load_model
from ..models import Arch, LoadedModel, create_model, get_arch, get_spec, resolve_arch, split_overrides
from ..models.vdsr import adjustable_gradient_clip_
from ..weights import load_strict
from . import ddp
from .checkpoint import (
    FILENAME,
    load_checkpoint,
    remove_stale_temporaries,
    require_writable_folder,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig, format_losses
from .data import ImageStore, PatchDataset, make_loader
from .discriminator import make_discriminator
from .ema import ModelEMA
from .export import export_model
from .losses import Objective
from .optim import make_optimizer, make_scheduler
from .precision import Precision, resolve
from .recipes import RECIPE_KEYS, load_recipe
from .report import LOG_NAME, Reporter, require_tensorboard, truncate_log
from .supervision import TrainingOutputs, supervised_terms, use_deep_supervision
from .validate import ValidationSet, load_validation_set, validate

RESUME_KEYS = (
    "model",
    "scale",
    "model_kwargs",
    "loss",
    "batch_size",
    "patch_size",
    "optimizer",
    "degradation",
    "deep_supervision",
    "discriminator",
)
"""Options a resumed run must share with its checkpoint (the others may change, e.g. --steps);
a key its checkpoint predates counts as that option's default."""


@dataclass
class TrainResult:
    """What a finished run reports."""

    out_dir: Path
    step: int
    seed: int
    precision: str
    best: dict[str, Any] | None
    export: dict[str, Any] | None
    data_wait_share: float
    steps_per_second: float


@dataclass(frozen=True)
class ModelChoice:
    """The network a config names: its name, family, build kwargs, trained scales, and the
    registry name it is built from (``--model`` without its ``:key=value`` kwargs)."""

    name: str
    arch: Arch
    kwargs: dict[str, Any]
    scales: tuple[int, ...]
    registry_name: str


def choose_model(cfg: TrainConfig) -> ModelChoice:
    """Resolve ``--model`` and ``--scale`` for training.

    ``--model`` is a named model, a family, an alias or a variant (``compact-relu``), with
    ``:key=value,...`` kwargs as ``--arch`` takes them (:func:`~upscale_cli.models.split_overrides`);
    the TOML ``model_kwargs`` table applies last.

    Raises:
        UsageError: unknown model, missing or unsupported scale(s), several scales for a
            single-scale network.
    """
    text, overrides = split_overrides(cfg.model, "--model")
    try:
        spec = get_spec(text)
    except UsageError as err:
        try:
            arch, preset = resolve_arch(text)
        except UsageError:
            raise err from None
        name = text.strip().lower() if preset else arch.name
        kwargs, known = {**arch.default_kwargs, **preset, **overrides, **cfg.model_kwargs}, None
    else:
        arch = get_arch(spec.arch)
        name, kwargs, known = spec.name, {**spec.kwargs, **overrides, **cfg.model_kwargs}, spec.scales
    scales = cfg.scale
    if not scales:
        if known and (arch.multiscale or len(known) == 1):
            scales = tuple(known)
        else:
            hint = f" ({name} exists for {', '.join(f'x{s}' for s in known)})" if known else ""
            raise UsageError(f"--scale is required{hint}")
    if len(scales) > 1 and not arch.multiscale:
        raise UsageError(f"--scale {','.join(map(str, scales))}: {name} is a single-scale network; give one scale")
    return ModelChoice(cfg.name or name, arch, kwargs, tuple(scales), text)


def default_workers() -> int:
    """DataLoader workers when ``--workers`` is not given: none on a machine of 2 cores or fewer
    (a worker would take a core from the model, and making the data of an EDSR-baseline x4 step
    in the main process costs ~2-3 % of the step, see ``benchmarks/train_throughput.py``), else
    half the cores, at most 8."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


@contextlib.contextmanager
def _determinism(deterministic: bool, device: torch.device) -> Iterator[None]:
    """On CUDA: deterministic kernels when ``--seed`` is given, else cuDNN autotuning; restored
    afterwards.  CPU kernels are deterministic for a given number of threads already (and the
    switch costs seconds of imports), so the CPU is left alone."""
    if device.type != "cuda":
        yield
        return
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _show(key: str, value: Any) -> str:
    """An option's value as the header prints it."""
    if key == "loss":
        return format_losses(value)
    if value is None:
        return "auto"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class Trainer:
    """One training run (see the module docstring).  Use :func:`train`."""

    def __init__(self, cfg: TrainConfig, ctx: ddp.DistContext, console: Console | None = None) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.choice = choose_model(cfg)
        if cfg.tensorboard:
            require_tensorboard()
        self.out = cfg.out_dir
        self.ckpt_path = self.out / FILENAME
        self._check_out_dir()
        self.device = ddp.setup(ctx, resolve_device(cfg.device))

        saved = load_checkpoint(self.ckpt_path) if cfg.resume else None
        if saved is not None:
            self._check_resumable(saved)
        seed = saved["seed"] if saved is not None else cfg.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        self.seed = int(ddp.broadcast(seed, ctx))
        _seed_all(self.seed)
        luma = self.choice.arch.convention == "y"
        # fails fast without VGG weights
        self.objective = Objective(cfg.loss, cfg.vgg_weights, luma=luma).to(self.device)

        self.store = ImageStore(cfg.data, cfg.cache_dir)
        self.dataset = PatchDataset(
            self.store, self.choice.scales, cfg.patch_size, cfg.batch_size, self.seed, cfg.degradation
        )

        self.net = create_model(self.choice.registry_name, self.choice.scales[0], **self.choice.kwargs)
        if not any(p.requires_grad for p in self.net.parameters()):
            raise UsageError(f"{self.choice.name} has no trainable parameters")
        if cfg.init and saved is None:
            self._load_init(cfg.init)
        self.net.to(self.device)
        self.channels_last = self.device.type == "cuda" if cfg.channels_last == "auto" else bool(cfg.channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.ema = ModelEMA(self.net, cfg.ema) if cfg.ema > 0 else None
        self.deep = use_deep_supervision(cfg.deep_supervision, self.net, self.choice.name, cfg.gan)
        if self.deep:
            self._check_patch_multiple()
        trained = TrainingOutputs(self.net) if self.deep else self.net
        self.gnet = ddp.wrap(trained, ctx, self.device, find_unused=self.choice.arch.multiscale)
        self.views: dict[int, LoadedModel] = {}
        if not self.deep:  # deeply supervised nets run training_outputs (step 2), not the inference call
            c = self.choice
            self.views = {s: LoadedModel(c.name, c.arch, self.gnet, s, c.kwargs) for s in c.scales}
        self.opt = make_optimizer(cfg.optimizer, self.net.parameters(), cfg.lr)
        self.sched = make_scheduler(self.opt, cfg.schedule, cfg.steps, cfg.warmup, cfg.milestones)
        self.precision: Precision = resolve(cfg.precision, self.device, self.choice.arch)
        self.scaler = self.precision.scaler()

        self.disc: nn.Module | None = None
        if cfg.gan:
            hr_patches = [cfg.patch_size * s for s in self.choice.scales]
            self.disc = make_discriminator(cfg.discriminator, hr_patches).to(self.device)
            self.opt_d = make_optimizer(cfg.optimizer, self.disc.parameters(), cfg.lr)
            self.sched_d = make_scheduler(self.opt_d, cfg.schedule, cfg.steps, cfg.warmup, cfg.milestones)
            self.scaler_d = self.precision.scaler()

        self.step = 0
        self.best: dict[str, Any] | None = None
        self.exported: dict[str, Any] | None = None
        if saved is not None:
            self._restore(saved)
        self.vset: ValidationSet | None = None
        if ctx.is_main and cfg.val_set and cfg.val_every > 0:
            self.vset = load_validation_set(cfg.val_set, cfg.data_dir, self.choice.scales)
        self.reporter: Reporter | None = None
        if ctx.is_main:
            remove_stale_temporaries(self.out)
            truncate_log(self.out / LOG_NAME, self.step)
            self.reporter = Reporter(
                self.out, self.step, cfg.steps, tensorboard=cfg.tensorboard, log_every=cfg.log_every, console=console
            )
            self._describe()
            if self.precision.unsafe:
                self.reporter.note(
                    f"warning: {self.choice.arch.name} is not marked safe in {self.precision.name}; fp32 is"
                )
            if saved is not None and saved["data"]["fingerprint"] != self.store.fingerprint():
                self.reporter.note(f"warning: the training images differ from those of {self.ckpt_path}")

    # --- set-up helpers -----------------------------------------------------------------------

    def _check_out_dir(self) -> None:
        exists = self.ckpt_path.is_file()
        if self.cfg.resume and not exists:
            raise UsageError(f"{self.ckpt_path}: no checkpoint to resume from (drop --resume to start a new run)")
        if not self.cfg.resume and exists:
            raise UsageError(f"{self.ckpt_path} exists: pass --resume to continue that run, or choose another --out")
        require_writable_folder(self.out)

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        before, now = saved["config"], self.cfg.to_dict()
        for key in RESUME_KEYS:
            if key == "scale" and not now["scale"]:
                continue
            was = before.get(key, TrainConfig.__dataclass_fields__[key].default)
            if was != now.get(key):
                raise UsageError(
                    f"{self.ckpt_path}: --{key.replace('_', '-')} was {was!r} in that run, "
                    f"not {now.get(key)!r}; resume with the same options or choose another --out"
                )
        if self.cfg.seed is not None and self.cfg.seed != saved["seed"]:
            raise UsageError(f"{self.ckpt_path}: that run used --seed {saved['seed']}, not {self.cfg.seed}")
        if (self.cfg.ema > 0) != (saved["ema"] is not None):
            raise UsageError(
                f"{self.ckpt_path}: --ema must stay {'on' if saved['ema'] is not None else 'off'} on resume"
            )

    def _check_patch_multiple(self) -> None:
        """Deeply-supervised outputs are not padded (the final one is cropped back at inference
        only): the LR patch must be a multiple of the family's size multiple."""
        c = self.choice
        multiple = max(c.arch.size_multiple(c.kwargs, s) for s in c.scales)
        if self.cfg.patch_size % multiple:
            raise UsageError(
                f"--patch-size {self.cfg.patch_size}: {c.name} needs a multiple of {multiple} with deep supervision"
            )

    def _load_init(self, init: str) -> None:
        """``--init``: a named model's published weights, or a weights file (path, URL, hf://)."""
        scale = self.choice.scales[0]
        is_name = not Path(init).exists() and "://" not in init
        loaded = load_model(init, scale) if is_name else load_model(weights=init, scale=scale)
        load_strict(self.net, loaded.module.state_dict(), f"--init {init}")

    def _restore(self, saved: dict[str, Any]) -> None:
        self.net.load_state_dict(saved["model"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.disc is not None:
            self.disc.load_state_dict(saved["disc"])
            self.opt_d.load_state_dict(saved["opt_d"])
            self.sched_d.load_state_dict(saved["sched_d"])
            self.scaler_d.load_state_dict(saved["scaler_d"])
        self.step = int(saved["step"])
        self.best = saved["best"]
        set_rng_state(saved["rng"])

    def _describe(self) -> None:
        assert self.reporter is not None
        c, cfg = self.choice, self.cfg
        params = sum(p.numel() for p in self.net.parameters())
        skipped = f" ({self.dataset.skipped} smaller than a patch skipped)" if self.dataset.skipped else ""
        where = f"resuming at step {self.step}" if self.step else "starting"
        self.reporter.note(
            f"{where}: {c.name} ({c.arch.name}, {params:,} params) x{','.join(map(str, c.scales))} on {self.device}, "
            f"{self.precision.name}, {len(self.store)} images{skipped}, "
            f"batch {cfg.batch_size} x patch {cfg.patch_size}, "
            f"loss {format_losses(cfg.loss)}{' with deep supervision' if self.deep else ''}, "
            f"seed {self.seed}, {self.ctx.world} process(es)"
        )
        recipe = load_recipe(cfg.recipe) if cfg.recipe else None
        self.reporter.note(f"recipe: {f'{recipe.name} ({recipe.source})' if recipe else 'none (built-in defaults)'}")
        self.reporter.note("  " + ", ".join(f"{k.replace('_', '-')} {v} ({o})" for k, v, o in self._options()))
        for key, why in recipe.paper.items() if recipe else ():
            if cfg.origins.get(key) == "ours":
                self.reporter.note(f"  ours, not the paper's: {key.replace('_', '-')}: {why}")

    def _options(self) -> Iterator[tuple[str, str, str]]:
        """Each training option, its value and where it came from (paper, ours, config, flag, default)."""
        for key in RECIPE_KEYS:
            value = getattr(self.cfg, key)
            yield key, _show(key, value), self.cfg.origins.get(key, "default")

    # --- the steps ----------------------------------------------------------------------------

    def _batch(self, lr_u8: Tensor, hr_u8: Tensor) -> tuple[Tensor, Tensor]:
        cuda = self.device.type == "cuda"
        lr = lr_u8.to(self.device, non_blocking=cuda).float().div_(255.0)
        hr = hr_u8.to(self.device, non_blocking=cuda).float().div_(255.0)
        if self.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
            hr = hr.contiguous(memory_format=torch.channels_last)
        return lr, hr

    def _train_step(self, lr: Tensor, hr: Tensor) -> tuple[dict[str, float], float | None]:
        """One optimisation step; returns the loss terms (mean over processes) and D's loss."""
        disc = self.disc
        if disc is not None:
            disc.requires_grad_(False)
        with self.precision.autocast():
            sr, terms = self._generator_terms(lr, hr, disc)
        loss = torch.stack(list(terms.values())).sum()
        if not torch.isfinite(loss):
            raise UpscaleError(
                f"the loss is {loss.item()} at step {self.step + 1}; lower --lr, add --grad-clip, or use fp32"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._clip_gradients()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.net)
        d_loss = None
        if disc is not None:
            assert sr is not None  # GAN mode trains the final output alone
            d_loss = self._discriminator_step(disc, hr, sr.detach())
        values = ddp.mean(torch.stack([t.detach().float() for t in terms.values()]), self.ctx).tolist()
        return dict(zip(terms.keys(), values)), d_loss

    def _generator_terms(
        self, lr: Tensor, hr: Tensor, disc: nn.Module | None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The network's output (``None`` under deep supervision: it has several) and the
        weighted loss terms."""
        if self.deep:
            progress = self.step / self.cfg.steps
            return None, supervised_terms(
                self.gnet, self.net, self.objective, lr, hr, self.choice.arch.convention, progress
            )
        sr = self.views[hr.shape[-1] // lr.shape[-1]](lr)
        return sr, self.objective(sr, hr, lr, discriminator=disc)

    def _clip_gradients(self) -> None:
        """``--grad-clip`` in ``--grad-clip-mode`` (see the module docstring), on unscaled gradients."""
        cfg = self.cfg
        if cfg.grad_clip <= 0:
            return
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip_mode == "adjustable":
            adjustable_gradient_clip_(self.net.parameters(), self.opt.param_groups[0]["lr"], cfg.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)

    def _discriminator_step(self, disc: nn.Module, hr: Tensor, fake: Tensor) -> float:
        disc.requires_grad_(True)
        with self.precision.autocast():
            d_loss = self.objective.discriminator_loss(disc(hr).float(), disc(fake).float())
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(d_loss).backward()
        ddp.average_gradients(disc, self.ctx)
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        self.sched_d.step()
        return float(ddp.mean(d_loss.detach().float(), self.ctx))

    # --- validation, checkpoints, export ------------------------------------------------------

    def _eval_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net

    def _validate(self) -> None:
        assert self.vset is not None and self.reporter is not None
        module = self._eval_module()
        result = validate(module, self.choice.arch, self.choice.kwargs, self.vset, self.device)
        if self.channels_last:  # the engine runs fp32 validation contiguous; train channels-last again
            module.to(memory_format=torch.channels_last)
        better = self.best is None or result["psnr"] > self.best["psnr"]
        if better:
            per = {str(s): v for s, v in result["per_scale"].items()}
            self.best = {
                "set": self.vset.name,
                "step": self.step,
                "psnr": result["psnr"],
                "ssim": result["ssim"],
                "per_scale": per,
            }
            self._export(self.best)
        self.reporter.validation(self.step, result, self.vset.name, better)

    def _export(self, validation: dict[str, Any] | None) -> None:
        cfg = self.cfg
        training = {
            "data": list(cfg.data),
            "images": len(self.store),
            "steps": self.step,
            "total_steps": cfg.steps,
            "loss": format_losses(cfg.loss),
            "deep_supervision": self.deep,
            "batch_size": cfg.batch_size,
            "patch_size": cfg.patch_size,
            "lr": cfg.lr,
            "optimizer": cfg.optimizer,
            "schedule": cfg.schedule,
            "milestones": list(cfg.milestones),
            "warmup": cfg.warmup,
            "grad_clip": cfg.grad_clip,
            "grad_clip_mode": cfg.grad_clip_mode,
            "recipe": cfg.recipe,
            "origins": dict(cfg.origins),
            "seed": self.seed,
            "weights": "ema" if self.ema is not None else "model",
            "ema": cfg.ema or None,
            "precision": self.precision.name,
            "degradation": cfg.to_dict()["degradation"],
            "init": cfg.init,
        }
        module = self._eval_module()
        self.exported = export_model(
            self.out,
            module.state_dict(),
            name=self.choice.name,
            arch=self.choice.arch,
            kwargs=self.choice.kwargs,
            scales=self.choice.scales,
            params=sum(p.numel() for p in module.parameters()),
            training=training,
            validation=validation,
        )

    def _checkpoint(self) -> None:
        state: dict[str, Any] = {
            "step": self.step,
            "seed": self.seed,
            "config": self.cfg.to_dict(),
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "rng": rng_state(),
            "data": {"fingerprint": self.store.fingerprint(), "next_step": self.step},
        }
        if self.disc is not None:
            state.update(
                disc=self.disc.state_dict(),
                opt_d=self.opt_d.state_dict(),
                sched_d=self.sched_d.state_dict(),
                scaler_d=self.scaler_d.state_dict(),
            )
        save_checkpoint(self.ckpt_path, state)

    @property
    def _end(self) -> int:
        """The step this invocation stops after: ``--stop-at`` or ``--steps``."""
        return self.cfg.steps if self.cfg.stop_at is None else self.cfg.stop_at

    def _after_step(self) -> None:
        cfg, last = self.cfg, self.step == self._end
        if self.vset is not None and (self.step % cfg.val_every == 0 or last):
            self._validate()
        if (cfg.save_every and self.step % cfg.save_every == 0) or last:
            self._checkpoint()
            if self.vset is None:
                self._export(None)

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train from the current step to ``--stop-at`` (default ``--steps``), on the schedule of
        ``--steps`` either way."""
        cfg, end = self.cfg, self._end
        workers = default_workers() if cfg.workers is None else cfg.workers
        loader = make_loader(
            self.dataset,
            self.step,
            end,
            rank=self.ctx.rank,
            world=self.ctx.world,
            workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        self.net.train()
        if self.step >= end and self.reporter is not None:
            flag = "--steps" if cfg.stop_at is None else "--stop-at"
            self.reporter.note(
                f"the run in {self.out} already made {self.step} steps: nothing to do (raise {flag} to go on)"
            )
        began, first = time.perf_counter(), self.step
        batches = iter(loader)
        while self.step < end:
            t0 = time.perf_counter()
            lr, hr = self._batch(*next(batches))
            waited = time.perf_counter() - t0
            current_lr = self.opt.param_groups[0]["lr"]
            terms, d_loss = self._train_step(lr, hr)
            self.step += 1
            if self.reporter is not None:
                extra = {} if d_loss is None else {"d_loss": d_loss}
                self.reporter.step(self.step, terms, current_lr, waited, time.perf_counter() - t0, extra)
                self._after_step()
        ddp.barrier(self.ctx)
        elapsed = time.perf_counter() - began
        share = self.reporter.data_wait_share if self.reporter is not None else 0.0
        return TrainResult(
            out_dir=self.out,
            step=self.step,
            seed=self.seed,
            precision=self.precision.name,
            best=self.best,
            export=self.exported,
            data_wait_share=share,
            steps_per_second=(self.step - first) / elapsed if elapsed > 0 else 0.0,
        )

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()


def train(cfg: TrainConfig, console: Console | None = None) -> TrainResult:
    """Run ``upscale train`` with ``cfg`` (under ``torchrun``: this process's share of it).

    Raises:
        UsageError: bad options, missing data or validation set, an incompatible checkpoint.
        WeightsError: ``--init`` or VGG weights unavailable, an unreadable checkpoint.
    """
    ctx = ddp.context_from_env()
    trainer: Trainer | None = None
    finished = False
    with _determinism(cfg.seed is not None, resolve_device(cfg.device)):
        try:
            trainer = Trainer(cfg, ctx, console)
            result = trainer.run()
            finished = True
            return result
        except OSError as err:  # a full disk, a file gone: one line (checkpoints are written atomically)
            saved = (cfg.out_dir / FILENAME).is_file()
            hint = "; the last checkpoint is intact: continue with --resume" if saved else ""
            raise UpscaleError(f"{err.filename or cfg.out_dir}: {err.strerror or err}{hint}") from err
        finally:
            if trainer is not None:
                trainer.close()
            ddp.teardown(ctx, finished=finished)
