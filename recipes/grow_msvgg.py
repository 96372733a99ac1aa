"""Warm starts for the default model: grow a trained MSVGG, or turn it into a luma one.

    python recipes/grow_msvgg.py runs/default/model.safetensors runs/default-grown-init.safetensors \
        --feats 64 --n-conv 8
    python recipes/grow_msvgg.py runs/default-grown/model.safetensors runs/default-y-init.safetensors \
        --luma

The first writes a weights file for ``MSVGG(feats, n_conv)`` that computes exactly what the
input computes (:func:`upscale_cli.models.msvgg.grow`), for ``init`` in
``recipes/default-model-grown.toml``; the second an ``msvgg-y`` whose output on grey images is
the luma of the input's (:func:`upscale_cli.models.msvgg.to_luma`), for ``init`` in
``recipes/default-model-y.toml``.  Both at once grow the luma net.
"""

from __future__ import annotations

import argparse

import torch

from upscale_cli.models.msvgg import ARCH, LUMA_ARCH, SCALES, grow, to_luma
from upscale_cli.weights import read_checkpoint, save_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a trained MSVGG (safetensors)")
    parser.add_argument("target", help="where to write the new weights")
    parser.add_argument("--feats", type=int, help="features of the grown net (default: the source's)")
    parser.add_argument("--n-conv", type=int, help="body convs of the grown net (default: the source's)")
    parser.add_argument("--luma", action="store_true", help="convert an RGB MSVGG to msvgg-y")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new channels' weights")
    args = parser.parse_args()
    sd, _ = read_checkpoint(args.source)
    if args.luma:
        sd = to_luma(sd)
    arch = LUMA_ARCH if LUMA_ARCH.matches(sd) else ARCH  # type: ignore[misc]
    old = arch.infer_kwargs(sd)[0]  # type: ignore[misc]
    kwargs = {"feats": args.feats or old["feats"], "n_conv": args.n_conv or old["n_conv"]}
    if kwargs != old:
        sd = grow(sd, kwargs["feats"], kwargs["n_conv"], torch.Generator().manual_seed(args.seed))
    digest = save_weights(
        args.target,
        sd,
        name=arch.name,
        arch=arch.name,
        kwargs=kwargs,
        scales=SCALES,
        scale=SCALES[0],
        convention=arch.convention,
        extra={"grown_from": args.source},
    )
    print(f"{args.target}: sha256 {digest}")


if __name__ == "__main__":
    main()
