"""Atlases and template transforms read from a TemplateFlow tree on disk.

TemplateFlow's client is never imported (its import may reach the network): files are looked
up in ``$TEMPLATEFLOW_HOME`` by TemplateFlow's naming rules, e.g.
``tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_res-02_atlas-Schaefer2018_desc-400Parcels17Networks_dseg.nii.gz``.
"""

from __future__ import annotations

from pathlib import Path

from .base import template_id, templateflow_home, usable

#: Resolutions tried for TemplateFlow images, before any other one.
PREFERRED_RESOLUTIONS = ("02", "01")


def image_candidates(home: Path, tpl: str, atlas: str, desc: str, suffix: str = "dseg"
                     ) -> list[Path]:
    """TemplateFlow images of an atlas in one template, best resolution first."""
    folder = home / f"tpl-{tpl}"
    tail = f"atlas-{atlas}_desc-{desc}_{suffix}.nii.gz"
    ordered = [folder / f"tpl-{tpl}_res-{res}_{tail}" for res in PREFERRED_RESOLUTIONS]
    if folder.is_dir():
        others = sorted(p for p in folder.glob(f"tpl-{tpl}_*{tail}") if p not in ordered)
        ordered += others
        ordered.append(folder / f"tpl-{tpl}_{tail}")
    return ordered


def tsv_candidates(home: Path, tpl: str, atlas: str, desc: str, suffix: str = "dseg"
                   ) -> list[Path]:
    """TemplateFlow label tables of an atlas in one template."""
    folder = home / f"tpl-{tpl}"
    tail = f"atlas-{atlas}_desc-{desc}_{suffix}.tsv"
    ordered = [folder / f"tpl-{tpl}_{tail}"]
    if folder.is_dir():
        ordered += sorted(p for p in folder.glob(f"tpl-{tpl}_*{tail}") if p not in ordered)
    return ordered


def find(tpl: str, atlas: str, desc: str, suffix: str = "dseg"
         ) -> tuple[Path, Path | None] | None:
    """``(image, label TSV or None)`` of a TemplateFlow atlas in ``tpl``, None if absent."""
    home = templateflow_home()
    image = next((p for p in image_candidates(home, tpl, atlas, desc, suffix) if usable(p)),
                 None)
    if image is None:
        return None
    tsv = next((p for p in tsv_candidates(home, tpl, atlas, desc, suffix) if usable(p)), None)
    return image, tsv


def source_label(image: Path) -> str:
    """``TemplateFlow:tpl-X/...`` for a file under ``$TEMPLATEFLOW_HOME`` (sidecars)."""
    home = templateflow_home()
    try:
        return f"TemplateFlow:{image.relative_to(home).as_posix()}"
    except ValueError:
        return f"TemplateFlow:{image}"


def fetch_command(tpl: str, atlas: str, desc: str, suffix: str = "dseg") -> str:
    """The ``python -c`` line that downloads one TemplateFlow atlas (image + TSV)."""
    return (
        f"python -c \"import templateflow.api as t; "
        f"t.get('{tpl}', atlas='{atlas}', desc='{desc}', resolution=2, suffix='{suffix}', "
        f"extension='.nii.gz'); t.get('{tpl}', atlas='{atlas}', desc='{desc}', "
        f"suffix='{suffix}', extension='.tsv')\""
    )


def expected_image(tpl: str, atlas: str, desc: str, suffix: str = "dseg") -> Path:
    """Where the preferred TemplateFlow image would be (for error messages)."""
    return templateflow_home() / f"tpl-{tpl}" / (
        f"tpl-{tpl}_res-{PREFERRED_RESOLUTIONS[0]}_atlas-{atlas}_desc-{desc}_{suffix}.nii.gz")


def template_transform_path(target_space: str, atlas_space: str) -> Path:
    """TemplateFlow transform that resamples images from ``atlas_space`` into ``target_space``.

    Parameters
    ----------
    target_space, atlas_space : str
        Template ids.

    Returns
    -------
    Path
        ``$TEMPLATEFLOW_HOME/tpl-{target}/tpl-{target}_from-{atlas}_mode-image_xfm.h5`` (it
        may not exist).
    """
    tgt = template_id(target_space)
    src = template_id(atlas_space)
    return templateflow_home() / f"tpl-{tgt}" / f"tpl-{tgt}_from-{src}_mode-image_xfm.h5"
