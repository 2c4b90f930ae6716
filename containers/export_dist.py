#!/usr/bin/env python
"""Copy the files of installed distributions into an overlay tree (image build time).

    python export_dist.py OVERLAY_DIR bidsfm

Every file listed in each distribution's RECORD (its package, its ``*.dist-info`` and its
console scripts) is copied to ``OVERLAY_DIR/<absolute path>``, so that a later Dockerfile stage
can add just those files with ``COPY --from=build OVERLAY_DIR/ /`` on top of a virtual
environment that already holds the dependencies.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path


def export(overlay: Path, name: str) -> int:
    """Copy the files of distribution ``name`` under ``overlay``; return how many were copied.

    Parameters
    ----------
    overlay : Path
        Root of the overlay tree.
    name : str
        Installed distribution name.

    Returns
    -------
    int
        Number of files copied.
    """
    dist = importlib.metadata.distribution(name)
    count = 0
    for entry in dist.files or []:
        src = Path(str(entry.locate())).resolve()
        if not src.is_file():  # RECORD may list files pip did not write (e.g. skipped .pyc)
            continue
        dst = overlay / src.relative_to(src.anchor)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        count += 1
    if count == 0:
        raise SystemExit(f"export_dist: no installed file found for {name}")
    return count


def main(argv: list[str]) -> int:
    """Export each distribution named after the overlay folder."""
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    overlay = Path(argv[0])
    for name in argv[1:]:
        print(f"export_dist: {name}: {export(overlay, name)} file(s) -> {overlay}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
