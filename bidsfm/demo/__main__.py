"""``python -m bidsfm.demo``: the same as ``bidsfm-demo``."""

from .cli import main

main()
