"""``upscale train``: train any network of the zoo with the losses of the literature.

The same model code as inference (:func:`upscale_cli.models.create_model`, called through the
:class:`~upscale_cli.models.LoadedModel` convention), data made on the fly by the benchmark's
bicubic, checkpoints that resume exactly, DDP under ``torchrun``, and an export that ``upscale``
and ``upscale bench`` load with no other flag.  Modules, one job each:

* :mod:`.config` - options, TOML ``--config``, flag precedence;
* :mod:`.data` / :mod:`.degrade` - decoded images, crops, augmentation, LR synthesis;
* :mod:`.losses`, :mod:`.vgg`, :mod:`.discriminator` - the objective;
* :mod:`.supervision` - deep supervision, the hook by which a network is trained on several
  outputs (DRCN, MemNet, CMSC, LapSRN);
* :mod:`.optim`, :mod:`.ema`, :mod:`.precision` - optimisation;
* :mod:`.loop` - the trainer; :mod:`.validate`, :mod:`.report` - validation and progress;
* :mod:`.checkpoint`, :mod:`.ddp`, :mod:`.export`.
"""

from __future__ import annotations

from .config import Degradation, LossTerm, TrainConfig, build_config, parse_losses

__all__ = ["Degradation", "LossTerm", "TrainConfig", "build_config", "parse_losses", "train"]


def __getattr__(name: str):  # the trainer imports torch and the zoo: only when asked for
    if name == "train":
        from .loop import train

        return train
    raise AttributeError(name)
