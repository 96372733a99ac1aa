"""Warm start for CARN x3/x4: the authors' trained CARN body with a new upsampler made from its x2 one.

    python recipes/carn_branch.py --scale 4 runs/carn-x4-init.safetensors

CARN is one multi-scale network (Ahn et al., ECCV 2018, Sec. 3.4): the cascading body is shared
by the x2, x3 and x4 upsampling branches.  The only authors' file within reach (``carn-x2``,
an MXNet conversion) holds the body and the x2 branch.  This writes a single-scale CARN for
``--scale`` whose body is that body and whose branch ``up{scale}`` starts from the x2 branch's
sub-pixel conv (Shi et al., ESPCN, CVPR 2016: output channel ``c*r*r + i*r + j`` is sub-pixel
``(i, j)`` of feature ``c``), for ``upscale train --init`` (``recipes/inhouse/targets.toml``):

* x4 is two x2 stages (conv, shuffle, ReLU, conv, shuffle): both get the x2 conv;
* x3's sub-pixel ``(i, j)`` takes the x2 filter of the nearest x2 sub-pixel, the mean of both
  where it falls halfway (the middle row and column).

Untrained, that x3 branch scores about bicubic and the x4 one does not, but after 400 steps
both are far ahead of a random branch (the figures are in the README's "In-house weights").
"""

from __future__ import annotations

import argparse

import torch

from upscale_cli.loader import load_model
from upscale_cli.models.registry import create_model
from upscale_cli.weights import save_weights


NEAREST_X2 = {0: (0,), 1: (0, 1), 2: (1,)}
"""x3 sub-pixel row (or column) -> the x2 ones nearest to it: centres 1/6, 1/2, 5/6 against 1/4, 3/4."""


def branch_from_x2(sd: dict[str, torch.Tensor], scale: int) -> dict[str, torch.Tensor]:
    """The ``upsample.up{scale}`` tensors made from the x2 branch of CARN state dict ``sd``."""
    weight, bias = sd["upsample.up2.body.0.weight"], sd["upsample.up2.body.0.bias"]
    if scale == 4:
        return {
            f"upsample.up4.body.{i}.{name}": t.clone()
            for i in (0, 3)
            for name, t in (("weight", weight), ("bias", bias))
        }
    feats = weight.shape[0] // 4
    rows = [
        [c * 4 + a * 2 + b for a in NEAREST_X2[i] for b in NEAREST_X2[j]]
        for c in range(feats)
        for i in range(3)
        for j in range(3)
    ]
    return {
        "upsample.up3.body.0.weight": torch.stack([weight[r].mean(0) for r in rows]),
        "upsample.up3.body.0.bias": torch.stack([bias[r].mean(0) for r in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="where to write the weights")
    parser.add_argument("--scale", type=int, required=True, choices=(3, 4))
    parser.add_argument("--source", default="carn-x2", help="a trained CARN: model name or file")
    args = parser.parse_args()
    loaded = load_model(args.source, 2) if "." not in args.source else load_model(weights=args.source)
    body = {k: v for k, v in loaded.module.state_dict().items() if not k.startswith("upsample.")}
    kwargs = {**loaded.kwargs, "single_scale": args.scale}
    net = create_model("carn", args.scale, **kwargs)
    missing = [k for k in body if k not in net.state_dict()]
    if missing:
        raise SystemExit(f"{args.source}: not a CARN of this layout (no {missing[0]} here)")
    net.load_state_dict({**body, **branch_from_x2(loaded.module.state_dict(), args.scale)}, strict=False)
    digest = save_weights(
        args.target,
        net.state_dict(),
        name="carn",
        arch="carn",
        kwargs=kwargs,
        scales=(args.scale,),
        scale=args.scale,
        convention=loaded.convention,
        extra={"body_from": args.source, "new_branch": f"up{args.scale}"},
    )
    print(f"{args.target}: sha256 {digest}")


if __name__ == "__main__":
    main()
