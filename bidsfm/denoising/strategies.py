"""Denoising strategies: what to regress and how to censor (presets, user JSON files).

The presets equal :func:`nilearn.interfaces.fmriprep.load_confounds_strategy`'s; a user
strategy is a JSON file whose keys are :class:`DenoiseStrategy` fields. Every problem with a
strategy is a one-line :class:`~bidsfm.errors.ConfigError` naming the file and the key.
:mod:`bidsfm.denoising.confounds` reads the regressors a strategy asks for.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bidsfm.errors import ConfigError

MODELS = ("basic", "derivatives", "power2", "full")
"""Expansions allowed for motion, WM/CSF and global-signal regressors."""

COMPCOR_TYPES = (
    "anat_combined",
    "anat_separated",
    "temporal",
    "temporal_anat_combined",
    "temporal_anat_separated",
)
"""CompCor variants, as in nilearn."""


@dataclass(frozen=True)
class DenoiseStrategy:
    """A confound-regression and censoring strategy for ROI time series.

    Parameters
    ----------
    name : str
        Label recorded in sidecars (preset name or user strategy name).
    motion, wm_csf, global_signal : {None, "basic", "derivatives", "power2", "full"}
        Expansion of the 6 motion parameters, of the CSF and white-matter mean signals, and of
        the global signal (``None`` = not regressed).
    compcor : {None, "anat_combined", "anat_separated", "temporal", \
"temporal_anat_combined", "temporal_anat_separated"}
        CompCor components to regress (read from the confounds JSON). Needs ``high_pass``.
    n_compcor : int or "all"
        Number of CompCor components kept per mask.
    high_pass : bool
        Regress fMRIPrep's ``cosine*`` discrete-cosine high-pass regressors.
    scrub : int
        After censoring, also drop retained segments shorter than this many volumes
        (0 = keep every segment).
    fd_threshold : float or None
        Censor volumes with ``framewise_displacement`` above this (mm). ``None`` (or a value
        <= 0) = no FD censoring.
    std_dvars_threshold : float or None
        Censor volumes with ``std_dvars`` above this. ``None`` (or <= 0) = no DVARS censoring.
    extra_columns : tuple of str
        More regressors, each an exact column name or a regular expression matched against
        the whole column name.
    demean : bool
        Demean the regressors over the retained volumes.
    """

    name: str
    motion: str | None = None
    wm_csf: str | None = None
    global_signal: str | None = None
    compcor: str | None = None
    n_compcor: int | str = "all"
    high_pass: bool = False
    scrub: int = 0
    fd_threshold: float | None = None
    std_dvars_threshold: float | None = None
    extra_columns: tuple[str, ...] = field(default_factory=tuple)
    demean: bool = True

    def __post_init__(self) -> None:
        for key in ("fd_threshold", "std_dvars_threshold"):
            value = getattr(self, key)
            if is_number(value):
                object.__setattr__(self, key, float(value) if value > 0 else None)
        if isinstance(self.extra_columns, (list, str)):
            extra = (self.extra_columns,) if isinstance(self.extra_columns, str) else \
                tuple(self.extra_columns)
            object.__setattr__(self, "extra_columns", extra)
        for f in fields(self):
            problem = _field_problem(f.name, getattr(self, f.name))
            if problem:
                raise ConfigError(f"denoising strategy '{self.name}': {problem}",
                                  remedy=_STRATEGY_REMEDY)
        if self.compcor is not None and not self.high_pass:
            raise ConfigError(
                f"denoising strategy '{self.name}': compcor needs high_pass=true (fMRIPrep "
                "computes CompCor after a cosine high-pass, so the cosine regressors must be "
                "regressed too)", remedy="Set \"high_pass\": true in the strategy")

    @property
    def censors(self) -> bool:
        """Whether this strategy censors volumes by FD and/or DVARS."""
        return self.fd_threshold is not None or self.std_dvars_threshold is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the strategy as a JSON-able dict (the format of a user strategy file).

        Returns
        -------
        dict
            One key per field; ``extra_columns`` as a list.
        """
        out = asdict(self)
        out["extra_columns"] = list(self.extra_columns)
        return out


_STRATEGY_REMEDY = (
    "Use a preset (simple, simple+gsr, scrubbing, scrubbing+gsr, compcor, none) or fix the "
    "strategy file"
)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_problem(key: str, value: Any) -> str | None:
    """Return why ``value`` is invalid for strategy field ``key`` (None if it is valid)."""
    if key == "name":
        if not isinstance(value, str) or not value.strip():
            return f"'name' must be a non-empty string (got {value!r})"
    elif key in ("motion", "wm_csf", "global_signal"):
        if value is not None and value not in MODELS:
            return f"'{key}' must be null or one of {', '.join(MODELS)} (got {value!r})"
    elif key == "compcor":
        if value is not None and value not in COMPCOR_TYPES:
            return f"'compcor' must be null or one of {', '.join(COMPCOR_TYPES)} (got {value!r})"
    elif key == "n_compcor":
        if value != "all" and not (is_number(value) and int(value) == value and value >= 1):
            return f"'n_compcor' must be \"all\" or a positive integer (got {value!r})"
    elif key in ("high_pass", "demean"):
        if not isinstance(value, bool):
            return f"'{key}' must be true or false (got {value!r})"
    elif key == "scrub":
        if not (is_number(value) and int(value) == value and value >= 0):
            return f"'scrub' must be an integer >= 0 (got {value!r})"
    elif key in ("fd_threshold", "std_dvars_threshold"):
        if value is not None and not (is_number(value) and math.isfinite(value)):
            return f"'{key}' must be null or a number (got {value!r})"
    elif key == "extra_columns":
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            return f"'extra_columns' must be a list of column names or regexes (got {value!r})"
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                return f"'extra_columns' entry {pattern!r} is not a valid regex ({exc})"
    return None


PRESETS: dict[str, DenoiseStrategy] = {
    "simple": DenoiseStrategy("simple", motion="full", wm_csf="basic", high_pass=True),
    "simple+gsr": DenoiseStrategy("simple+gsr", motion="full", wm_csf="basic",
                                  global_signal="basic", high_pass=True),
    "scrubbing": DenoiseStrategy("scrubbing", motion="full", wm_csf="full", high_pass=True,
                                 scrub=5, fd_threshold=0.5, std_dvars_threshold=1.5),
    "scrubbing+gsr": DenoiseStrategy("scrubbing+gsr", motion="full", wm_csf="full",
                                     global_signal="basic", high_pass=True, scrub=5,
                                     fd_threshold=0.5, std_dvars_threshold=1.5),
    "compcor": DenoiseStrategy("compcor", motion="full", compcor="anat_combined",
                               n_compcor="all", high_pass=True),
    "none": DenoiseStrategy("none"),
}
"""Preset strategies, equal to nilearn's ``load_confounds_strategy`` presets.

``"<preset>+gsr"`` adds the global signal (``global_signal="basic"``), as nilearn does when
``global_signal="basic"`` is passed; :func:`get_strategy` accepts it for every preset (e.g.
``compcor+gsr``).
"""


def get_strategy(
    spec: str | Path,
    *,
    fd_threshold: float | None = None,
    std_dvars_threshold: float | None = None,
    scrub: int | None = None,
) -> DenoiseStrategy:
    """Resolve a strategy name or a user JSON strategy file, with threshold overrides.

    Parameters
    ----------
    spec : str or Path
        A preset name (see :data:`PRESETS`), ``"<preset>+gsr"``, or the path to a JSON file
        whose keys are :class:`DenoiseStrategy` fields (``name`` defaults to the file stem).
    fd_threshold, std_dvars_threshold : float, optional
        Replace the strategy's censoring thresholds. A positive value turns that censoring on
        (also for a strategy that does not censor); 0 or a negative value turns it off.
        ``None`` keeps the strategy's value.
    scrub : int, optional
        Replace the minimum retained segment length.

    Returns
    -------
    DenoiseStrategy
        The resolved strategy.

    Raises
    ------
    ConfigError
        Unknown name, unreadable or invalid strategy file, or invalid override.
    """
    text = str(spec)
    if text in PRESETS:
        strategy = PRESETS[text]
    elif text.endswith("+gsr") and text[: -len("+gsr")] in PRESETS:
        strategy = replace(PRESETS[text[: -len("+gsr")]], name=text, global_signal="basic")
    elif text.lower().endswith(".json") or Path(text).is_file():
        strategy = load_strategy_file(text)
    else:
        raise ConfigError(
            f"unknown denoising strategy '{text}'",
            remedy=f"Use one of {', '.join(PRESETS)} (optionally with +gsr), or the path to a "
            "JSON strategy file")
    changes: dict[str, Any] = {}
    for key, value in (("fd_threshold", fd_threshold),
                       ("std_dvars_threshold", std_dvars_threshold)):
        if value is None:
            continue
        if not (is_number(value) and math.isfinite(value)):
            raise ConfigError(f"{key} must be a number (got {value!r})",
                              remedy="Give a positive threshold, or 0 to turn it off")
        changes[key] = float(value) if value > 0 else None
    if scrub is not None:
        if not (is_number(scrub) and int(scrub) == scrub and scrub >= 0):
            raise ConfigError(f"scrub must be an integer >= 0 (got {scrub!r})",
                              remedy="Give the minimum segment length in volumes, or 0")
        changes["scrub"] = int(scrub)
    return replace(strategy, **changes) if changes else strategy


def load_strategy_file(path: str | Path) -> DenoiseStrategy:
    """Read a user strategy from a JSON file.

    Parameters
    ----------
    path : str or Path
        JSON object whose keys are :class:`DenoiseStrategy` fields.

    Returns
    -------
    DenoiseStrategy
        The validated strategy.

    Raises
    ------
    ConfigError
        File missing or unreadable, not a JSON object, unknown key or invalid value (the
        message names the file and the key).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("denoising strategy file not found", path=path,
                          remedy="Check the path, or use a preset name") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read denoising strategy file ({exc})", path=path) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"denoising strategy file is not valid JSON ({exc})", path=path,
                          remedy="Fix the JSON syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("denoising strategy file must hold a JSON object", path=path,
                          remedy="Write an object whose keys are strategy fields")
    allowed = [f.name for f in fields(DenoiseStrategy)]
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown key '{key}' in denoising strategy file", path=path,
                              remedy=f"Allowed keys: {', '.join(allowed)}")
    data = dict(data)
    data.setdefault("name", path.name.split(".")[0])
    if isinstance(data.get("extra_columns"), list):
        data["extra_columns"] = tuple(data["extra_columns"])
    for key, value in data.items():
        if key in ("fd_threshold", "std_dvars_threshold") and is_number(value) and value <= 0:
            value = None
        problem = _field_problem(key, value)
        if problem:
            raise ConfigError(f"invalid value for key '{key}': {problem}", path=path,
                              remedy=_STRATEGY_REMEDY)
    try:
        return DenoiseStrategy(**data)
    except ConfigError as exc:
        raise ConfigError(exc.problem, path=path, remedy=exc.remedy) from None
