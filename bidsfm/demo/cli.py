"""``bidsfm-demo OUT_DIR``: the command line of the generator (click, imported lazily)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dataset import DEMO_DIR, make_fmriprep_dataset
from .presets import DEMO_ATLASES, SIZES

__all__ = ["main"]


def _echo_summary(man: dict, size: str, took: float) -> None:
    """Print what was written: one line per run, then the label image and the manifest."""
    import click

    n_sub = len(man["participants"])
    n_runs = len(man["runs"])
    runs_word = "run" if n_runs == 1 else "runs"
    subs_word = "participant" if n_sub == 1 else "participants"
    click.echo(f"Wrote {n_runs} {runs_word} of {n_sub} {subs_word} to {man['root']} "
               f"({size}, {man['voxel_size']:g} mm, atlas {man['atlas']}, {took:.1f} s)")
    for r in man["runs"]:
        rel = os.path.relpath(r["bold"], man["root"])
        click.echo(f"  {rel}  TR={r['repetition_time']:g}s  T={r['n_volumes']}  "
                   f"nss={r['n_nss']}  motion={r['motion']}  "
                   f"outliers={r['n_motion_outliers']}")
    click.echo(f"ROI labels: {man['labels']}")
    click.echo(f"Manifest:   {Path(man['root']) / DEMO_DIR / 'manifest.json'}")


def _build_cli() -> Any:
    """The click command of ``bidsfm-demo``."""
    import click

    @click.command(name="bidsfm-demo",
                   help="Write a synthetic fMRIPrep derivatives dataset to OUT_DIR.")
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @click.option("--size", type=click.Choice(sorted(SIZES)), default="tiny", show_default=True,
                  help="tiny: 6 mm (tests); small: 4 mm (demo); full: 2 mm res-2 (benchmarks).")
    @click.option("--n-subjects", type=click.IntRange(min=1), default=None,
                  help="Number of participants (default: the preset's).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--atlas", "atlas", type=click.Choice(DEMO_ATLASES), default="CC200",
                  show_default=True,
                  help="Parcellation the signals are planted in (CC200 ships with bidsfm).")
    @click.option("--shared-data", type=click.Path(), default=None,
                  help="Optional: recompute the target FC from DIR/abide (ABIDE CC200 series) "
                       "instead of using the copy shipped with bidsfm.")
    @click.option("--dtype", type=click.Choice(["float32", "int16"]), default="float32",
                  show_default=True)
    @click.option("--no-compress", is_flag=True, help="Write .nii instead of .nii.gz.")
    def cli(out_dir: str, size: str, n_subjects: int | None, seed: int, atlas: str,
            shared_data: str | None, dtype: str, no_compress: bool) -> None:
        t0 = time.perf_counter()
        n_sub = SIZES[size].n_subjects if n_subjects is None else n_subjects
        with _demo_steps(n_sub) as steps:
            man = make_fmriprep_dataset(out_dir, size=size, n_subjects=n_subjects, seed=seed,
                                        shared_data=shared_data, atlas=atlas, dtype=dtype,
                                        compress=not no_compress, progress=steps)
        _echo_summary(man, size, time.perf_counter() - t0)

    return cli


def _demo_steps(n_subjects: int) -> Any:
    """Progress of ``bidsfm-demo``: a bar on a terminal, a line per participant on stderr."""
    import logging
    import sys

    from bidsfm.progress import Steps, console, on_terminal

    logger = logging.getLogger("bidsfm.demo")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        if on_terminal():
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(show_path=False, markup=False,
                                                   console=console())
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return Steps("demo dataset", n_subjects, logger)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``bidsfm-demo OUT_DIR [--size ...] [--n-subjects N] [--seed S] ...``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    cli = _build_cli()
    try:
        cli.main(args=None if argv is None else list(argv), prog_name="bidsfm-demo",
                 standalone_mode=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
