"""Atlas registry: resolve parcellations offline-first and bring them onto a run's grid.

Names are read the way users type them (:mod:`bidsfm.atlases.names`); the registry
(:mod:`bidsfm.atlases.registry`) lists every release of every atlas with its public origin
and sha256; :mod:`bidsfm.atlases.store` finds them in the package, the cache
(``$BIDSFM_HOME/atlases``) or downloads them; :mod:`bidsfm.atlases.templateflow` and
:mod:`bidsfm.atlases.userfiles` read TemplateFlow trees, user files and BIDS-Atlas folders;
:mod:`bidsfm.atlases.resolve` chooses among them (the run's own template first);
:mod:`bidsfm.atlases.placement` puts an atlas on a run's grid, says how, and caches the result;
:mod:`bidsfm.atlases.cli` is ``bidsfm-atlas``. See ``docs/atlases.md``.
"""

from __future__ import annotations

from .base import Atlas, templateflow_home
from .labels import load_label_array
from .names import (
    NOT_PROVIDED,
    SCHAEFER_DEFAULT_NETWORKS,
    SCHAEFER_NETWORKS,
    SCHAEFER_PARCELS,
    absolute_atlas_spec,
    atlas_label,
    canonical_atlas_name,
    normalise_atlas_spec,
)
from .placement import (
    check_placement,
    load_itk_mapping,
    place_atlas,
    resample_labels,
    resample_maps,
    resample_world,
)
from .registry import CC200_SHA256, CC200_URL, REGISTRY, available_atlases
from .resolve import bundled_image, resolve_atlas
from .store import DEFAULT_BUNDLED_DIR, fetch_atlas, seed_cache, seed_folder
from .templateflow import template_transform_path

# names of the single-module version, kept for scripts (benchmarks/extraction_speed.py sets
# ``_resample_world.__defaults__``)
_resample_world = resample_world
_load_itk_mapping = load_itk_mapping
_load_label_array = load_label_array

#: Folder of the atlas files that ship with the package; change it here (not in a submodule)
#: to simulate a damaged install.
BUNDLED_DIR = DEFAULT_BUNDLED_DIR

__all__ = [
    "BUNDLED_DIR", "CC200_SHA256", "CC200_URL", "NOT_PROVIDED", "REGISTRY",
    "SCHAEFER_DEFAULT_NETWORKS", "SCHAEFER_NETWORKS", "SCHAEFER_PARCELS", "Atlas",
    "absolute_atlas_spec", "atlas_cli", "atlas_label", "available_atlases", "bundled_image",
    "canonical_atlas_name", "check_placement", "fetch_atlas", "load_itk_mapping",
    "load_label_array", "main", "normalise_atlas_spec", "place_atlas", "resample_labels",
    "resample_maps", "resample_world", "resolve_atlas", "seed_cache", "seed_folder",
    "template_transform_path", "templateflow_home",
]


def __getattr__(name: str):
    """``atlas_cli`` and ``main`` (the ``bidsfm-atlas`` command) are imported on first use:
    the command line pulls in click, which a processing job does not need."""
    if name in ("atlas_cli", "main"):
        from . import cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
