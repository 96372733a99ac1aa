"""upscale-cli: image super-resolution from the command line and from Python.

The Python API mirrors the command line::

    from upscale_cli import load_model, upscale_image
    model = load_model("edsr-baseline", scale=4)
    out = upscale_image(pil_or_array, model)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "upscale_image"]


def __getattr__(name: str):  # lazy: keep `upscale --help` fast (torch import is slow)
    if name == "load_model":
        from .loader import load_model

        return load_model
    if name == "upscale_image":
        from .api import upscale_image

        return upscale_image
    raise AttributeError(name)
