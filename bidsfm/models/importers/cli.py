"""``bidsfm-import``: turn official BrainMass / Brain-JEPA checkpoints into bidsfm models.

::

    bidsfm-import brainmass CHECKPOINT OUT_DIR [--name brainmass] [--atlas Schaefer100x7]
    bidsfm-import brainjepa CHECKPOINT GRADIENTS_CSV OUT_DIR --atlas NAME=PATH [--size base]
    bidsfm-import combine-atlas OUT.nii.gz ATLAS1 ATLAS2 [...]

The result is a model folder for ``bidsfm BIDS_DIR OUT_DIR participant --model OUT_DIR``. See
docs/importing.md for where to get the checkpoints, the atlases they need and what is checked.
A checkpoint that is not in the official layout is refused unless ``--allow-custom-layout`` is
given.
Errors are one line (``bidsfm-import: error: FILE: problem. What to do.``), exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ... import __version__

EXIT_ERROR = 2


def _run(fn, *args, **kwargs) -> None:
    """Call an importer; print the model folder, or a one-line error and exit 2."""
    from ...errors import BidsfmError

    try:
        folder = fn(*args, **kwargs)
    except BidsfmError as err:
        click.echo(f"bidsfm-import: error: {err.one_line()}", err=True)
        sys.exit(EXIT_ERROR)
    import json

    card = json.loads((Path(folder) / "card.json").read_text())
    click.echo(f"bidsfm-import: wrote model {card['name']} ({card['family']}, "
               f"{card['embedding_size']}-value embedding, atlas {card['atlas']['name']}) to "
               f"{folder}")
    click.echo(f"run it with: bidsfm BIDS_DIR OUTPUT_DIR participant --model {folder} "
               f"{card['atlas']['run_with']}")


@click.group(name="bidsfm-import", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bidsfm-import")
def import_command() -> None:
    """Convert an official foundation-model checkpoint into a bidsfm model folder.

    Checkpoints are read with torch.load(weights_only=True): nothing in them is executed.
    """


@import_command.command("brainmass")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="brainmass", show_default=True,
              help="Model name (letters and digits; the desc- entity of outputs).")
@click.option("--atlas", default="Schaefer100x7", show_default=True,
              help="Atlas with the checkpoint's ROIs, in its order: a registry name "
                   "(Schaefer100x7 from TemplateFlow, CC200) or NAME=PATH of a label NIfTI.")
@click.option("--heads", "n_heads", type=int, default=10, show_default=True,
              help="Attention heads (not stored in the weights; official 10).")
@click.option("--state-key", default="online_network_state_dict", show_default=True,
              help="Checkpoint entry holding the encoder (target_network_state_dict: the EMA "
                   "network).")
@click.option("--min-volumes", type=int, default=50, show_default=True,
              help="Runs with fewer retained volumes get no model outputs.")
@click.option("--allow-custom-layout", is_flag=True,
              help="Import a checkpoint whose layout is not the official one (layers, sizes, "
                   "biases inferred from its tensors) instead of refusing it.")
def brainmass_command(checkpoint: Path, out_dir: Path, name: str, atlas: str, n_heads: int,
                      state_key: str, min_volumes: int, allow_custom_layout: bool) -> None:
    """Import an official BrainMass checkpoint (dict with online_network_state_dict)."""
    from .brainmass import import_brainmass

    _run(import_brainmass, checkpoint, out_dir, name=name, atlas=atlas, n_heads=n_heads,
         state_key=state_key, min_volumes=min_volumes,
         allow_custom_layout=allow_custom_layout)


@import_command.command("brainjepa")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("gradients_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--atlas", "atlas", required=True,
              help="NAME=PATH of the 450-ROI label image (Tian S3 subcortex first, then "
                   "Schaefer-400 17-network), or an atlas name bidsfm resolves.")
@click.option("--name", default="brainjepa", show_default=True,
              help="Model name (letters and digits; the desc- entity of outputs).")
@click.option("--size", type=click.Choice(["small", "base", "large"]), default=None,
              help="Official ViT size (inferred from the weights when omitted).")
@click.option("--heads", "n_heads", type=int, default=None,
              help="Attention heads, only for a non-official layout (with "
                   "--allow-custom-layout).")
@click.option("--state-key", default="target_encoder", show_default=True,
              help="Checkpoint entry to import (encoder: the context encoder).")
@click.option("--target-tr", type=float, default=2.205, show_default=True,
              help="Seconds per model frame runs are resampled to (official input: UK Biobank "
                   "TR 0.735 s downsampled by 3).")
@click.option("--allow-custom-layout", is_flag=True,
              help="Import a checkpoint whose layout is not the official one (layers, sizes, "
                   "biases inferred from its tensors) instead of refusing it.")
def brainjepa_command(checkpoint: Path, gradients_csv: Path, out_dir: Path, atlas: str,
                      name: str, size: str | None, n_heads: int | None, state_key: str,
                      target_tr: float, allow_custom_layout: bool) -> None:
    """Import an official Brain-JEPA checkpoint (jepa-ep*.pth.tar) and its gradient CSV."""
    from .brainjepa import import_brainjepa

    _run(import_brainjepa, checkpoint, gradients_csv, out_dir, atlas=atlas, name=name,
         size=size, n_heads=n_heads, state_key=state_key, target_tr=target_tr,
         allow_custom_layout=allow_custom_layout)


@import_command.command("combine-atlas")
@click.argument("out_path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("atlases", nargs=-1, required=True)
def combine_command(out_path: Path, atlases: tuple[str, ...]) -> None:
    """Stack atlases into one label image + TSV, in order (OUT_PATH: a new .nii.gz).

    Example (Brain-JEPA): bidsfm-import combine-atlas
    tpl-MNI152NLin6Asym_atlas-TianS3Schaefer400x17_dseg.nii.gz TianS3=Tian_Subcortex_S3_3T.nii.gz
    Schaefer400x17
    """
    from ...errors import BidsfmError
    from .combine import combine_atlases

    try:
        path = combine_atlases(list(atlases), out_path)
    except BidsfmError as err:
        click.echo(f"bidsfm-import: error: {err.one_line()}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(f"bidsfm-import: wrote {path} and its label table; use it as NAME={path}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``bidsfm-import``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    import_command.main(args=argv, prog_name="bidsfm-import", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main()
