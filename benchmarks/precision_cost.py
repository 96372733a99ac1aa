"""The Set5 cost of reduced precision, per model and scale, for ``--precision auto`` (issue 17).

For every manifest entry whose weights are at hand (shipped in the package, or a byte-identical
copy in ``../shared/checkpoints``), ``upscale bench --set Set5`` runs the model offline in fp32
and in each reduced precision asked for, on one device, and the cost is the fp32 PSNR minus the
reduced one (dB; negative is a gain), the larger of the backends ``--backend auto`` may pick
there (PyTorch's autocast and, on the CPU where it is installed, OpenVINO's precision hint).  ``--write`` records it in the entry's ``precision_cost``
(in the manifest), with the device and the CPU or GPU it was measured on;
:func:`upscale_cli.devices.resolve_precision` lets ``auto`` take a precision whose cost is at
most 0.02 dB.

    python benchmarks/precision_cost.py [--model NAME ...] [--precision bf16[,fp16]] [--device cpu] [--write]

On a CPU, bf16 should be measured where it is native (AMX or AVX512-BF16): the figures are the
same emulated, only slower.  fp16 belongs on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from reproduce_classic import bench, cpu_flags, cpu_name, seed

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "weights_manifest.json"
"""The manifest (``upscale_cli/weights_manifest.json`` links to it)."""


def machine(device: str) -> str:
    """The CPU (model name and bf16 flags) or the GPU the costs were measured on."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_name()} ({cpu_flags()})"


def at_hand(entry: dict, cache: Path) -> bool:
    """Put the entry's file (and companions) into ``cache``; True when shipped or copied."""
    return any("package" in s for s in entry["sources"]) or seed(cache, entry)


def set5_psnr(name: str, scale: int, cache: Path, device: str, precision: str, backend: str = "torch") -> float:
    rows = bench(name, scale, ["Set5"], cache, None, "--device", device, "--precision", precision,
                 "--backend", backend)
    return float(rows[0]["psnr"])


def backends(device: str) -> list[str]:
    """The backends ``auto`` may pick on ``device``: the cost recorded is the larger of theirs."""
    import importlib.util

    return ["torch", "openvino"] if device == "cpu" and importlib.util.find_spec("openvino") else ["torch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="only these models (repeatable)")
    parser.add_argument("--precision", default="bf16", help="reduced precisions, comma separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="record the costs in the manifest")
    args = parser.parse_args()
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    where = machine(args.device)
    runtimes = backends(args.device.split(":")[0])
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    print(f"device {args.device}: {where}; {os.cpu_count()} cores\n")
    print(f"reduced precision on {' / '.join(runtimes)}; fp32 on torch; the cost is the larger\n")
    print("| model | scale | fp32 Set5 | " + " | ".join(f"{p} Set5 | {p} cost dB" for p in precisions) + " |")
    print("|---|---|---|" + "---|---|" * len(precisions))
    for name, by_scale in manifest["models"].items():
        if args.model and name not in args.model:
            continue
        for scale, entry in by_scale.items():
            with tempfile.TemporaryDirectory(prefix="upscale-cost-") as tmp:
                if not at_hand(entry, Path(tmp)):
                    print(f"| {name} | x{scale} | no copy of {entry['file']} in ../shared |", flush=True)
                    continue
                base = set5_psnr(name, int(scale), Path(tmp), args.device, "fp32")
                cells = []
                for p in precisions:
                    reduced = {b: set5_psnr(name, int(scale), Path(tmp), args.device, p, b) for b in runtimes}
                    cost = round(base - min(reduced.values()), 4)
                    cells.append(" / ".join(f"{v:.4f}" for v in reduced.values()) + f" | {cost:+.4f}")
                    entry.setdefault("precision_cost", {})[p] = {
                        "db": cost, "device": args.device.split(":")[0], "measured_on": where,
                        "backends": list(reduced),
                    }
            print(f"| {name} | x{scale} | {base:.4f} | " + " | ".join(cells) + " |", flush=True)
    if args.write:
        tmp = MANIFEST.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, MANIFEST)
        print(f"\nwrote precision_cost into {MANIFEST.name}")


if __name__ == "__main__":
    main()
