"""Stage 2 of the default model: widen and deepen a trained MSVGG without changing its output.

    python recipes/grow_msvgg.py runs/default/model.safetensors runs/default-grown-init.safetensors \
        --feats 64 --n-conv 8

writes a weights file for ``MSVGG(feats, n_conv)`` that computes exactly what the input computes
(:func:`upscale_cli.models.msvgg.grow`), for ``init`` in ``recipes/default-model-grown.toml``.
"""

from __future__ import annotations

import argparse

import torch

from upscale_cli.models.msvgg import ARCH, SCALES, grow
from upscale_cli.weights import read_checkpoint, save_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a trained MSVGG (safetensors)")
    parser.add_argument("target", help="where to write the grown weights")
    parser.add_argument("--feats", type=int, required=True)
    parser.add_argument("--n-conv", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0, help="seed of the new channels' weights")
    args = parser.parse_args()
    sd, _ = read_checkpoint(args.source)
    grown = grow(sd, args.feats, args.n_conv, torch.Generator().manual_seed(args.seed))
    digest = save_weights(
        args.target,
        grown,
        name="msvgg",
        arch=ARCH.name,
        kwargs={"feats": args.feats, "n_conv": args.n_conv},
        scales=SCALES,
        scale=SCALES[0],
        convention=ARCH.convention,
        extra={"grown_from": args.source},
    )
    print(f"{args.target}: sha256 {digest}")


if __name__ == "__main__":
    main()
