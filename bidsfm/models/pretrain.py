"""Old console-script path of ``bidsfm-pretrain`` (now :mod:`bidsfm.models.training.cli`).

Environments installed before the training package existed run
``bidsfm.models.pretrain:main``; a new ``pip install`` uses ``bidsfm.models.training.cli:main``.
Remove this module once no installed environment points here.
"""

from __future__ import annotations

from .device import resolve_device
from .training.cli import main, pretrain_command

__all__ = ["main", "pretrain_command", "resolve_device"]

if __name__ == "__main__":  # pragma: no cover
    main()
