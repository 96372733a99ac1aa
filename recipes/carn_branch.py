"""Warm start for CARN x3/x4: the authors' trained CARN body with a new, untrained upsampler.

    python recipes/carn_branch.py --scale 4 runs/carn-x4-init.safetensors

CARN is one multi-scale network (Ahn et al., ECCV 2018, Sec. 3.4): the cascading body is shared
by the x2, x3 and x4 upsampling branches.  The only authors' file within reach (``carn-x2``,
an MXNet conversion) holds the body and the x2 branch.  This writes a single-scale CARN for
``--scale`` whose body is that body and whose branch ``up{scale}`` is freshly initialised
(seeded), for ``upscale train --init`` (``recipes/inhouse/targets.toml``).
"""

from __future__ import annotations

import argparse

import torch

from upscale_cli.loader import load_model
from upscale_cli.models.registry import create_model
from upscale_cli.weights import save_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="where to write the weights")
    parser.add_argument("--scale", type=int, required=True, choices=(3, 4))
    parser.add_argument("--source", default="carn-x2", help="a trained CARN: model name or file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new branch's weights")
    args = parser.parse_args()
    loaded = load_model(args.source, 2) if "." not in args.source else load_model(weights=args.source)
    body = {k: v for k, v in loaded.module.state_dict().items() if not k.startswith("upsample.")}
    kwargs = {**loaded.kwargs, "single_scale": args.scale}
    torch.manual_seed(args.seed)
    net = create_model("carn", args.scale, **kwargs)
    missing = [k for k in body if k not in net.state_dict()]
    if missing:
        raise SystemExit(f"{args.source}: not a CARN of this layout (no {missing[0]} here)")
    net.load_state_dict(body, strict=False)
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
