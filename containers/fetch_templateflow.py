#!/usr/bin/env python
"""Pre-fetch the TemplateFlow files bidsfm reads into ``$TEMPLATEFLOW_HOME`` (image build time).

    python fetch_templateflow.py xfm Schaefer400x17 [Schaefer100x7 ...]

``xfm``
    ``tpl-MNI152NLin2009cAsym_from-MNI152NLin6Asym_mode-image_xfm.h5``: the transform bidsfm
    applies to CC200 (MNI152NLin6Asym) for runs in fMRIPrep's default space.
``Schaefer<N>x<K>``
    the Schaefer2018 N-parcel, K-network label image (res-02) and its TSV in
    MNI152NLin2009cAsym.

Needs the ``templateflow`` client and a network; run it where both exist (the Dockerfile does
so in its build stage when ``TEMPLATEFLOW_FETCH`` is set). bidsfm itself never imports
TemplateFlow: it reads these files from disk.
"""

from __future__ import annotations

import re
import sys

SPACE = "MNI152NLin2009cAsym"


def fetch(item: str) -> list[str]:
    """Fetch one named set of files and return their paths.

    Parameters
    ----------
    item : str
        ``xfm`` or ``Schaefer<N>x<K>`` (e.g. ``Schaefer400x17``).

    Returns
    -------
    list of str
        The local paths TemplateFlow returned.
    """
    import templateflow.api as tf

    if item == "xfm":
        return _paths(tf.get(SPACE, **{"from": "MNI152NLin6Asym"}, mode="image", suffix="xfm",
                             extension=".h5"))
    match = re.fullmatch(r"Schaefer(\d+)x(7|17)", item)
    if not match:
        raise SystemExit(f"fetch_templateflow: unknown item {item!r} (xfm or SchaeferNxK)")
    desc = f"{match.group(1)}Parcels{match.group(2)}Networks"
    image = tf.get(SPACE, atlas="Schaefer2018", desc=desc, resolution=2, suffix="dseg",
                   extension=".nii.gz")
    table = tf.get(SPACE, atlas="Schaefer2018", desc=desc, suffix="dseg", extension=".tsv")
    return _paths(image) + _paths(table)


def _paths(got: object) -> list[str]:
    """TemplateFlow returns a path, a list of paths, or an empty list when nothing matches."""
    if isinstance(got, (list, tuple)):
        return [str(p) for p in got]
    return [str(got)] if got else []


def main(argv: list[str]) -> int:
    """Fetch every item named on the command line; fail if any returns no file."""
    for item in argv:
        paths = fetch(item)
        if not paths:
            print(f"fetch_templateflow: TemplateFlow returned nothing for {item}", file=sys.stderr)
            return 1
        for path in paths:
            print(f"{item}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
