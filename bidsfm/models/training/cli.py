"""``bidsfm-pretrain``: pretrain a BrainMass (FC) or Brain-JEPA (time-series) encoder.

The options are parsed here; :mod:`.commands` loads the data, trains and writes the model
folder. Console script: ``bidsfm-pretrain = bidsfm.models.training.cli:main``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ...errors import ConfigError, InputDataError
from ..brainmass import BrainMassConfig
from .configs import PretrainConfig

__all__ = ["pretrain_command", "main"]


@click.command(name="bidsfm-pretrain",
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--npz", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="npz with one (T, R) array per participant_id (e.g. ABIDE cc200).")
@click.option("--participants", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="participants.tsv listing the npz's participants (with --npz).")
@click.option("--bidsfm-dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="bidsfm output folder with *_stat-mean_timeseries.tsv files.")
@click.option("--atlas", default="CC200", show_default=True, help="atlas label (--bidsfm-dir).")
@click.option("--epochs", type=int, default=PretrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=PretrainConfig.batch_size, show_default=True)
@click.option("--lr", type=float, default=PretrainConfig.lr, show_default=True)
@click.option("--layers", type=int, default=BrainMassConfig.n_layers, show_default=True)
@click.option("--heads", type=int, default=BrainMassConfig.n_heads, show_default=True,
              help="Attention heads; must divide the number of ROIs.")
@click.option("--ff-dim", type=int, default=BrainMassConfig.ff_dim, show_default=True)
@click.option("--no-roi-embedding", is_flag=True, help="Drop the learned ROI identity vectors.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--max-subjects", type=int, default=None,
              help="Use a seeded random subset of this many subjects (quick runs).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--family", type=click.Choice(["brainmass", "brainjepa"]), default="brainmass",
              show_default=True, help="brainmass: FC encoder (LRA + MRM); brainjepa: "
              "time-series encoder (JEPA, spatiotemporal masking).")
@click.option("--tr", type=float, default=None,
              help="[brainjepa] repetition time (s) of every run, when participants.tsv has no "
                   "repetition_time column (--bidsfm-dir reads it from the JSON sidecars).")
@click.option("--target-tr", type=float, default=2.0, show_default=True,
              help="[brainjepa] TR the runs are resampled to.")
@click.option("--frames", type=int, default=64, show_default=True,
              help="[brainjepa] window length in frames at --target-tr.")
@click.option("--patch", type=int, default=16, show_default=True,
              help="[brainjepa] frames per time patch.")
@click.option("--dim", type=int, default=96, show_default=True,
              help="[brainjepa] token width (--layers and --heads set depth and heads).")
@click.option("--gradients", "gradients_tsv", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="[brainjepa] ROI gradients TSV from bidsfm-gradients (default: computed "
                   "from the group FC of the training runs).")
@click.option("--readout", type=click.Choice(["mean", "connectivity"]), default="mean",
              show_default=True, help="[brainjepa] embedding readout: the official mean pool, "
              "or bidsfm's token connectivity (its axes are fitted on the training runs).")
@click.option("--readout-dim", type=int, default=8, show_default=True,
              help="[brainjepa] axes per ROI of the connectivity readout (0: upper triangle).")
@click.option("--var-weight", type=float, default=0.0, show_default=True,
              help="[brainjepa] weight of the variance hinge on context tokens (0: plain JEPA; "
                   "bidsfmts uses 1.0).")
@click.option("--cov-weight", type=float, default=0.0, show_default=True,
              help="[brainjepa] weight of the covariance penalty (bidsfmts uses 0.04).")
def pretrain_command(out_dir: Path, npz: Path | None, participants: Path | None,
                     bidsfm_dir: Path | None, atlas: str, epochs: int, batch_size: int, lr: float,
                     layers: int, heads: int, ff_dim: int, no_roi_embedding: bool, seed: int,
                     device: str, max_subjects: int | None, no_progress: bool,
                     family: str = "brainmass", tr: float | None = None, target_tr: float = 2.0,
                     frames: int = 64, patch: int = 16, dim: int = 96,
                     gradients_tsv: Path | None = None, readout: str = "mean",
                     readout_dim: int = 8, var_weight: float = 0.0,
                     cov_weight: float = 0.0) -> None:
    """Pretrain a foundation-model encoder and save it in OUT_DIR.

    Data come either from an npz of ROI time series plus its participants.tsv, or from a bidsfm
    output folder. OUT_DIR becomes a model folder (weights.safetensors + card.json, no heads)
    loadable with --model OUT_DIR, plus pretrain_log.tsv; the same for both families.
    """
    if (npz is None) == (bidsfm_dir is None) or (npz is not None and participants is None):
        raise click.UsageError("give either --npz with --participants, or --bidsfm-dir")
    from .commands import run_brainjepa, run_brainmass

    data = {"npz": npz, "participants": participants, "bidsfm_dir": bidsfm_dir,
            "atlas": atlas, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "device": device, "max_subjects": max_subjects}
    try:
        if family == "brainjepa":
            line = run_brainjepa(out_dir, **data, depth=layers, heads=heads, dim=dim,
                                 patch=patch, frames=frames, target_tr=target_tr, tr=tr,
                                 gradients_tsv=gradients_tsv, readout=readout,
                                 readout_dim=readout_dim, var_weight=var_weight,
                                 cov_weight=cov_weight)
        else:
            line = run_brainmass(out_dir, **data, layers=layers, heads=heads, ff_dim=ff_dim,
                                 roi_embedding=not no_roi_embedding,
                                 progress=not no_progress)
    except (ConfigError, InputDataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(line)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``bidsfm-pretrain``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    pretrain_command.main(args=argv, prog_name="bidsfm-pretrain", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main()
