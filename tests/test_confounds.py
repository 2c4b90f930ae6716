"""Tests for bidsfm.denoising: strategies and confound selection, judged against nilearn."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsfm.denoising import (
    PRESETS,
    DenoiseStrategy,
    get_strategy,
    load_confounds,
)
from bidsfm.errors import ConfigError, InputDataError

N_VOL = 80
BOLD_NAME = "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
TSV_NAME = "sub-01_task-rest_desc-confounds_timeseries.tsv"

# FD / DVARS spikes chosen to exercise every segment rule of scrubbing (scrub=5, fd 0.5,
# dvars 1.5): volume 3 (leading segment 0-2 too short), 20 and 23 (segment 21-22 too short),
# 40 (DVARS only), 60, 76 (trailing segment 77-79 too short).
FD_SPIKES = (3, 20, 23, 60)
DVARS_SPIKES = (40, 76)
NSS = (0, 1)


# --------------------------------------------------------------------------------------------
# synthetic fMRIPrep confounds (helper shared by the tests of this file)
# --------------------------------------------------------------------------------------------
def _expansions(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    d = np.concatenate(([np.nan], np.diff(x)))
    return {name: x, f"{name}_derivative1": d, f"{name}_power2": x**2,
            f"{name}_derivative1_power2": d**2}


def make_confounds(n: int = N_VOL, seed: int = 0, nss: tuple[int, ...] = NSS,
                   old_compcor: bool = False) -> tuple[pd.DataFrame, dict]:
    """Build an fMRIPrep-like confounds table and its JSON sidecar.

    Parameters
    ----------
    n : int
        Number of volumes.
    seed : int
        Random seed.
    nss : tuple of int
        Non-steady-state volumes (one ``non_steady_state_outlierXX`` column each).
    old_compcor : bool
        fMRIPrep 1.4-20.1 layout: all anatomical components are ``a_comp_cor_XX`` with the
        mask (combined / WM / CSF) in the JSON, no ``c_``/``w_`` columns.

    Returns
    -------
    table : pandas.DataFrame
        Columns named as fMRIPrep names them (NaN for the first row of derivatives).
    meta : dict
        The JSON sidecar content.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for name, scale in (("global_signal", 3.0), ("csf", 5.0), ("white_matter", 2.0)):
        cols.update(_expansions(name, 100.0 + scale * rng.standard_normal(n).cumsum() / 5))
    cols["csf_wm"] = 100 + rng.standard_normal(n)
    cols["tcompcor"] = 100 + rng.standard_normal(n)
    fd = np.abs(rng.normal(0.0, 0.08, n))
    fd[list(FD_SPIKES)] = 0.9
    fd[0] = np.nan
    sd = 1.0 + 0.1 * rng.standard_normal(n)
    sd[list(DVARS_SPIKES)] = 2.0
    sd[0] = np.nan
    cols["std_dvars"] = sd
    cols["dvars"] = 20 * sd
    cols["framewise_displacement"] = fd
    cols["rmsd"] = fd / 2
    meta: dict = {k: {"Method": "Mean"} for k in ("global_signal", "csf", "white_matter",
                                                   "csf_wm", "tcompcor")}

    def comps(prefix: str, count: int, mask: str | None, method: str, start: int = 0):
        var = np.sort(rng.uniform(0.02, 0.2, count))[::-1]
        for i in range(count):
            name = f"{prefix}_comp_cor_{start + i:02d}"
            cols[name] = rng.standard_normal(n) * 0.05
            entry = {"Method": method, "Retained": True, "SingularValue": float(100 * var[i]),
                     "VarianceExplained": float(var[i]),
                     "CumulativeVarianceExplained": float(var[: i + 1].sum())}
            if mask is not None:
                entry["Mask"] = mask
            meta[name] = entry

    comps("t", 3, None, "tCompCor")
    if old_compcor:
        comps("a", 4, "CSF", "aCompCor", 0)
        comps("a", 3, "WM", "aCompCor", 4)
        comps("a", 5, "combined", "aCompCor", 7)
    else:
        comps("c", 3, "CSF", "aCompCor")
        comps("w", 4, "WM", "aCompCor")
        comps("a", 5, "combined", "aCompCor")
    for i in range(3):  # components fMRIPrep dropped: in the JSON only
        meta[f"dropped_{i}"] = {"Method": "aCompCor", "Mask": "combined", "Retained": False,
                                "SingularValue": 1.0, "VarianceExplained": 0.001}
    t = np.arange(n)
    for k in range(4):
        cols[f"cosine{k:02d}"] = np.sqrt(2 / n) * np.cos(np.pi * (t + 0.5) * (k + 1) / n)
    for i, v in enumerate(nss):
        cols[f"non_steady_state_outlier{i:02d}"] = (t == v).astype(float)
    for name, scale in zip(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"),
                           (0.1, 0.1, 0.2, 0.002, 0.002, 0.001), strict=True):
        cols.update(_expansions(name, scale * rng.standard_normal(n).cumsum()))
    for i, v in enumerate(FD_SPIKES):  # fMRIPrep's own spike columns: never selected
        cols[f"motion_outlier{i:02d}"] = (t == v).astype(float)
    return pd.DataFrame(cols), meta


def write_run(folder: Path, table: pd.DataFrame, meta: dict | None) -> tuple[Path, Path]:
    """Write a tiny BOLD NIfTI, the confounds TSV (n/a for NaN) and its JSON; return paths."""
    folder.mkdir(parents=True, exist_ok=True)
    bold = folder / BOLD_NAME
    data = np.random.default_rng(1).standard_normal((2, 2, 2, len(table))).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    img.to_filename(bold)
    tsv = folder / TSV_NAME
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    if meta is not None:
        tsv.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return bold, tsv


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    table, meta = make_confounds()
    return write_run(tmp_path / "func", table, meta)


def _nilearn_preset(bold: Path, preset: str, **kwargs):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_confounds_strategy(str(bold), denoise_strategy=preset, **kwargs)


def _nilearn_custom(bold: Path, strategy, **kwargs):
    from nilearn.interfaces.fmriprep import load_confounds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_confounds(str(bold), strategy=strategy, **kwargs)


def _assert_same(sel, ref_conf, ref_mask, n: int = N_VOL) -> None:
    expected_mask = np.arange(n) if ref_mask is None else np.asarray(ref_mask)
    np.testing.assert_array_equal(sel.sample_mask, expected_mask)
    if ref_conf is None or ref_conf.shape[1] == 0:
        assert sel.confounds is None
        return
    assert sel.confounds is not None
    assert sorted(sel.confounds.columns) == sorted(ref_conf.columns)
    assert sel.columns_used == list(sel.confounds.columns)
    assert sel.confounds.shape == (n, ref_conf.shape[1])
    ours = sel.confounds[sorted(ref_conf.columns)].to_numpy()
    theirs = ref_conf[sorted(ref_conf.columns)].to_numpy(dtype=float)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------
# presets against nilearn
# --------------------------------------------------------------------------------------------
def test_presets_mirror_nilearn_definitions():
    from nilearn.interfaces.fmriprep.load_confounds_strategy import preset_strategies

    for name in ("simple", "scrubbing", "compcor"):
        ref = preset_strategies[name]
        ours = PRESETS[name]
        assert ours.high_pass == ("high_pass" in ref["strategy"])
        assert ours.motion == ref.get("motion")
        assert ours.wm_csf == ref.get("wm_csf")
        assert ours.compcor == ref.get("compcor")
        assert ours.global_signal is None and ours.demean == ref["demean"]
        if "scrub" in ref["strategy"]:
            assert (ours.scrub, ours.fd_threshold, ours.std_dvars_threshold) == (
                ref["scrub"], ref["fd_threshold"], ref["std_dvars_threshold"])
        else:
            assert not ours.censors
        if "compcor" in ref["strategy"]:
            assert ours.n_compcor == ref["n_compcor"]
        gsr = PRESETS.get(f"{name}+gsr")
        if gsr is not None:
            assert gsr.global_signal == "basic"
            assert gsr.to_dict() | {"name": name, "global_signal": None} == ours.to_dict()


@pytest.mark.parametrize("preset", ["simple", "simple+gsr", "scrubbing", "scrubbing+gsr",
                                    "compcor", "compcor+gsr"])
def test_preset_matches_nilearn(run, preset):
    bold, tsv = run
    base = preset.split("+")[0]
    kwargs = {"global_signal": "basic"} if preset.endswith("+gsr") else {}
    ref_conf, ref_mask = _nilearn_preset(bold, base, **kwargs)
    sel = load_confounds(tsv, get_strategy(preset), n_volumes=N_VOL)
    _assert_same(sel, ref_conf, ref_mask)
    np.testing.assert_array_equal(sel.dummy, NSS)
    if base == "scrubbing":
        assert sel.censored.size > 0
        assert not set(sel.censored) & set(NSS)
        removed = np.union1d(sel.dummy, sel.censored)
        np.testing.assert_array_equal(np.setdiff1d(np.arange(N_VOL), removed), sel.sample_mask)
        for v in (2, 3, 21, 22, 40, 60, 76, 77, 78, 79):
            assert v in sel.censored
    else:
        assert sel.censored.size == 0


def test_none_preset_matches_nilearn_empty_strategy(run):
    bold, tsv = run
    ref_conf, ref_mask = _nilearn_custom(bold, ())
    sel = load_confounds(tsv, get_strategy("none"), n_volumes=N_VOL)
    assert ref_conf is None and sel.confounds is None and sel.columns_used == []
    _assert_same(sel, ref_conf, ref_mask)


@pytest.mark.parametrize("kwargs", [
    {"fd_threshold": 0.3},
    {"std_dvars_threshold": 1.2, "scrub": 0},
    {"fd_threshold": 0.7, "std_dvars_threshold": 1.8, "scrub": 3},
])
def test_scrubbing_threshold_overrides_match_nilearn(run, kwargs):
    bold, tsv = run
    ref_conf, ref_mask = _nilearn_preset(bold, "scrubbing", **kwargs)
    sel = load_confounds(tsv, get_strategy("scrubbing", **kwargs), n_volumes=N_VOL)
    _assert_same(sel, ref_conf, ref_mask)


def test_override_turns_censoring_on_and_off(run):
    bold, tsv = run
    # FD threshold on a preset that does not censor -> FD censoring only, no segment rule
    strat = get_strategy("simple", fd_threshold=0.5)
    assert strat.censors and strat.fd_threshold == 0.5 and strat.std_dvars_threshold is None
    ref_conf, ref_mask = _nilearn_custom(
        bold, ("high_pass", "motion", "wm_csf", "scrub"), motion="full", wm_csf="basic",
        scrub=0, fd_threshold=0.5, std_dvars_threshold=np.inf)
    sel = load_confounds(tsv, strat, n_volumes=N_VOL)
    _assert_same(sel, ref_conf, ref_mask)
    np.testing.assert_array_equal(sel.censored, FD_SPIKES)
    # 0 (or negative) turns one kind of censoring off, keeping the other
    strat = get_strategy("scrubbing", fd_threshold=0)
    assert strat.fd_threshold is None and strat.std_dvars_threshold == 1.5
    ref_conf, ref_mask = _nilearn_preset(bold, "scrubbing", fd_threshold=np.inf)
    _assert_same(load_confounds(tsv, strat, n_volumes=N_VOL), ref_conf, ref_mask)
    strat = get_strategy("scrubbing", fd_threshold=-1, std_dvars_threshold=0)
    assert not strat.censors
    sel = load_confounds(tsv, strat, n_volumes=N_VOL)
    assert sel.censored.size == 0
    np.testing.assert_array_equal(sel.sample_mask, np.arange(2, N_VOL))


@pytest.mark.parametrize("old_compcor", [False, True])
@pytest.mark.parametrize("compcor", ["anat_combined", "anat_separated", "temporal",
                                     "temporal_anat_combined", "temporal_anat_separated"])
@pytest.mark.parametrize("n_compcor", ["all", 2])
def test_compcor_variants_match_nilearn(tmp_path, compcor, n_compcor, old_compcor):
    table, meta = make_confounds(old_compcor=old_compcor)
    bold, tsv = write_run(tmp_path, table, meta)
    ref_conf, ref_mask = _nilearn_custom(bold, ("high_pass", "motion", "compcor"),
                                         motion="basic", compcor=compcor, n_compcor=n_compcor)
    strat = DenoiseStrategy("cc", motion="basic", compcor=compcor, n_compcor=n_compcor,
                            high_pass=True)
    sel = load_confounds(tsv, strat, n_volumes=N_VOL)
    _assert_same(sel, ref_conf, ref_mask)
    assert not any(c.startswith("dropped") for c in sel.columns_used)


@pytest.mark.parametrize("model", ["basic", "derivatives", "power2", "full"])
def test_expansions_and_no_demean_match_nilearn(run, model):
    bold, tsv = run
    ref_conf, ref_mask = _nilearn_custom(
        bold, ("motion", "wm_csf", "global_signal"), motion=model, wm_csf=model,
        global_signal=model, demean=False)
    strat = DenoiseStrategy("x", motion=model, wm_csf=model, global_signal=model, demean=False)
    _assert_same(load_confounds(tsv, strat, n_volumes=N_VOL), ref_conf, ref_mask)


def test_no_nonsteady_columns_gives_full_mask(tmp_path):
    table, meta = make_confounds(nss=())
    bold, tsv = write_run(tmp_path, table, meta)
    ref_conf, ref_mask = _nilearn_preset(bold, "simple")
    assert ref_mask is None
    sel = load_confounds(tsv, get_strategy("simple"), n_volumes=N_VOL)
    _assert_same(sel, ref_conf, ref_mask)
    assert isinstance(sel.sample_mask, np.ndarray) and sel.dummy.size == 0


# --------------------------------------------------------------------------------------------
# dummy scans, user strategies
# --------------------------------------------------------------------------------------------
def test_dummy_scans_int_vs_auto(run):
    _, tsv = run
    simple = get_strategy("simple")
    auto = load_confounds(tsv, simple, n_volumes=N_VOL, dummy_scans="auto")
    np.testing.assert_array_equal(auto.dummy, NSS)
    none = load_confounds(tsv, simple, n_volumes=N_VOL, dummy_scans=0)
    assert none.dummy.size == 0
    np.testing.assert_array_equal(none.sample_mask, np.arange(N_VOL))
    four = load_confounds(tsv, simple, n_volumes=N_VOL, dummy_scans=4)
    np.testing.assert_array_equal(four.dummy, np.arange(4))
    np.testing.assert_array_equal(four.sample_mask, np.arange(4, N_VOL))
    # demeaned over the retained volumes only
    np.testing.assert_allclose(four.confounds.iloc[4:].mean(), 0, atol=1e-10)
    assert abs(four.confounds.iloc[:4].to_numpy()).max() > 0
    # censoring ignores dummies (nilearn's rule); censored excludes them
    scr = load_confounds(tsv, get_strategy("scrubbing"), n_volumes=N_VOL, dummy_scans=0)
    assert {0, 1, 2, 3} <= set(scr.censored)
    scr4 = load_confounds(tsv, get_strategy("scrubbing"), n_volumes=N_VOL, dummy_scans=4)
    assert not set(scr4.censored) & {0, 1, 2, 3}
    np.testing.assert_array_equal(scr.sample_mask, scr4.sample_mask)
    with pytest.raises(ConfigError):
        load_confounds(tsv, simple, n_volumes=N_VOL, dummy_scans=-1)


def test_user_json_strategy_round_trip(run, tmp_path):
    _, tsv = run
    strat = DenoiseStrategy("mine", motion="derivatives", wm_csf="power2", high_pass=True,
                            scrub=3, fd_threshold=0.4, extra_columns=("csf_wm", "t_comp_cor_0[01]"))
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(strat.to_dict()))
    loaded = get_strategy(str(path))
    assert loaded == strat
    json.dumps(loaded.to_dict())  # JSON-able
    sel = load_confounds(tsv, loaded, n_volumes=N_VOL)
    assert {"csf_wm", "t_comp_cor_00", "t_comp_cor_01"} <= set(sel.columns_used)
    assert "t_comp_cor_02" not in sel.columns_used
    assert sel.censored.size > 0
    # name defaults to the file stem; thresholds <= 0 mean off
    other = tmp_path / "lite.json"
    other.write_text(json.dumps({"motion": "basic", "fd_threshold": 0}))
    lite = get_strategy(other)
    assert lite.name == "lite" and lite.motion == "basic" and not lite.censors


@pytest.mark.parametrize("content, key", [
    ({"motion": "full", "gsr": True}, "gsr"),
    ({"motion": "everything"}, "motion"),
    ({"n_compcor": 0, "compcor": "temporal", "high_pass": True}, "n_compcor"),
    ({"scrub": -2}, "scrub"),
    ({"extra_columns": ["csf", "(unclosed"]}, "extra_columns"),
    ({"demean": "yes"}, "demean"),
])
def test_bad_json_strategy(tmp_path, content, key):
    path = tmp_path / "bad_strategy.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        get_strategy(str(path))
    msg = str(err.value)
    assert "bad_strategy.json" in msg and key in msg and "\n" not in msg


def test_strategy_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown denoising strategy"):
        get_strategy("fancy")
    with pytest.raises(ConfigError, match="missing.json"):
        get_strategy(str(tmp_path / "missing.json"))
    bad = tmp_path / "notjson.json"
    bad.write_text("{motion: full")
    with pytest.raises(ConfigError, match="notjson.json"):
        get_strategy(bad)
    with pytest.raises(ConfigError, match="high_pass"):
        DenoiseStrategy("x", compcor="anat_combined")
    with pytest.raises(ConfigError):
        get_strategy("simple", scrub=-1)


# --------------------------------------------------------------------------------------------
# input errors: one line, naming the file
# --------------------------------------------------------------------------------------------
def _raises_naming(path_name: str, func, *args, **kwargs) -> str:
    with pytest.raises(InputDataError) as err:
        func(*args, **kwargs)
    msg = str(err.value)
    assert path_name in msg, msg
    assert "\n" not in msg
    return msg


def test_unreadable_or_empty_tsv(tmp_path):
    simple = get_strategy("simple")
    missing = tmp_path / "sub-02_desc-confounds_timeseries.tsv"
    _raises_naming(missing.name, load_confounds, missing, simple, n_volumes=10)
    empty = tmp_path / "sub-03_desc-confounds_timeseries.tsv"
    empty.write_bytes(b"")
    _raises_naming(empty.name, load_confounds, empty, simple, n_volumes=10)
    header = tmp_path / "sub-04_desc-confounds_timeseries.tsv"
    header.write_text("trans_x\ttrans_y\n")
    _raises_naming(header.name, load_confounds, header, simple, n_volumes=10)
    binary = tmp_path / "sub-05_desc-confounds_timeseries.tsv"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe\x00\x00garbage")
    _raises_naming(binary.name, load_confounds, binary, simple, n_volumes=10)


def test_row_count_mismatch(run):
    _, tsv = run
    msg = _raises_naming(TSV_NAME, load_confounds, tsv, get_strategy("simple"),
                         n_volumes=N_VOL + 5)
    assert str(N_VOL) in msg and str(N_VOL + 5) in msg


def test_missing_columns(tmp_path):
    table, meta = make_confounds()
    _, tsv = write_run(tmp_path, table.drop(columns=["csf_derivative1", "rot_z_power2"]), meta)
    load_confounds(tsv, DenoiseStrategy("ok", motion="basic", wm_csf="basic"), n_volumes=N_VOL)
    msg = _raises_naming(TSV_NAME, load_confounds, tsv, get_strategy("scrubbing"),
                         n_volumes=N_VOL)
    assert "csf_derivative1" in msg and "rot_z_power2" in msg and "fMRIPrep" in msg
    _, tsv2 = write_run(tmp_path / "b", table.drop(columns=["std_dvars"]), meta)
    msg = _raises_naming(TSV_NAME, load_confounds, tsv2, get_strategy("scrubbing"),
                         n_volumes=N_VOL)
    assert "std_dvars" in msg
    # FD-only censoring does not need std_dvars
    load_confounds(tsv2, get_strategy("scrubbing", std_dvars_threshold=0), n_volumes=N_VOL)
    msg = _raises_naming(TSV_NAME, load_confounds, tsv2,
                         DenoiseStrategy("x", extra_columns=("nope_.*",)), n_volumes=N_VOL)
    assert "nope_" in msg


def test_non_numeric_value(tmp_path):
    table, meta = make_confounds()
    table = table.astype({"white_matter": object})
    table.loc[17, "white_matter"] = "oops"
    _, tsv = write_run(tmp_path, table, meta)
    msg = _raises_naming(TSV_NAME, load_confounds, tsv, get_strategy("simple"), n_volumes=N_VOL)
    assert "white_matter" in msg and "17" in msg
    # a non-numeric column that is not selected is fine
    load_confounds(tsv, DenoiseStrategy("m", motion="full"), n_volumes=N_VOL)


def test_nan_in_retained_volume(tmp_path):
    table, meta = make_confounds()
    table.loc[30, "trans_x"] = np.nan
    _, tsv = write_run(tmp_path, table, meta)
    msg = _raises_naming(TSV_NAME, load_confounds, tsv, get_strategy("simple"), n_volumes=N_VOL)
    assert "trans_x" in msg and "30" in msg


def test_compcor_json_missing(tmp_path):
    table, _ = make_confounds()
    _, tsv = write_run(tmp_path, table, None)
    msg = _raises_naming("sub-01_task-rest_desc-confounds_timeseries.json", load_confounds,
                         tsv, get_strategy("compcor"), n_volumes=N_VOL)
    assert TSV_NAME in msg
    # strategies without CompCor do not need the JSON
    load_confounds(tsv, get_strategy("simple"), n_volumes=N_VOL)


def test_every_volume_censored(run):
    _, tsv = run
    strat = get_strategy("scrubbing", fd_threshold=1e-6, std_dvars_threshold=1e-6)
    msg = _raises_naming(TSV_NAME, load_confounds, tsv, strat, n_volumes=N_VOL)
    assert "every volume" in msg


def test_too_few_retained_volumes(run):
    _, tsv = run
    table = pd.read_csv(tsv, sep="\t")
    fd = table["framewise_displacement"].to_numpy()
    threshold = float(np.sort(fd[1:])[20])  # ~20 volumes kept, 36 regressors
    strat = get_strategy("scrubbing", fd_threshold=threshold, scrub=0)
    msg = _raises_naming(TSV_NAME, load_confounds, tsv, strat, n_volumes=N_VOL)
    assert "regressors" in msg
