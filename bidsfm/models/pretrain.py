"""Old console-script path of ``bidsfm-pretrain`` (now :mod:`bidsfm.models.training.cli`).

Environments installed before the training package existed run
``bidsfm.models.pretrain:main``; a new ``pip install`` uses ``bidsfm.models.training.cli:main``.
``resolve_device`` is re-exported for callers not yet moved to :mod:`bidsfm.models.device`;
importing this module does not load the training package. Remove it once no installed
environment and no caller points here.
"""

from __future__ import annotations

from .device import resolve_device

__all__ = ["main", "resolve_device"]


def main(argv: list[str] | None = None) -> None:
    """Run ``bidsfm-pretrain`` (:func:`bidsfm.models.training.cli.main`).

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    from .training.cli import main as pretrain_main

    pretrain_main(argv)


if __name__ == "__main__":  # pragma: no cover
    main()
