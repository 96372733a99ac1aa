"""``python -m upscale_cli`` is the ``upscale`` command."""

from .cli import main

if __name__ == "__main__":
    main()
