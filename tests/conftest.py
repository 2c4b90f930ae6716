"""Shared fixtures: offline environment, seeded atlas cache, a tiny synthetic fMRIPrep dataset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")


def _shared_data() -> Path | None:
    from bidsfm.utils import shared_data_dir

    path = shared_data_dir()
    return path if (path / "atlases" / "CC200.nii.gz").is_file() else None


SHARED = _shared_data()


@pytest.fixture(scope="module")
def model():
    """The bundled default model on the CPU, one thread (loaded once per test module: tests may
    patch it)."""
    import torch

    from bidsfm.models.registry import load_model

    torch.set_num_threads(1)
    return load_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data); tests needing it skip when it is absent."""
    if SHARED is None:
        pytest.skip("../shared/data not available")
    return SHARED


@pytest.fixture(scope="session")
def session_env(tmp_path_factory):
    """Offline, isolated caches for the whole session, with CC200 seeded from shared data."""
    home = tmp_path_factory.mktemp("bidsfm_home")
    tf_home = tmp_path_factory.mktemp("templateflow")
    saved = {k: os.environ.get(k) for k in ("BIDSFM_HOME", "BIDSFM_OFFLINE",
                                            "TEMPLATEFLOW_HOME")}
    os.environ.update(BIDSFM_HOME=str(home), BIDSFM_OFFLINE="1", TEMPLATEFLOW_HOME=str(tf_home))
    if SHARED is not None:
        from bidsfm.atlases import seed_cache

        seed_cache("CC200", SHARED / "atlases" / "CC200.nii.gz")
    yield {"home": home, "templateflow": tf_home}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_ds(tmp_path_factory, session_env, shared_data) -> dict:
    """A tiny fMRIPrep derivatives dataset (3 subjects, 7 runs) with its manifest."""
    from bidsfm.demo import make_fmriprep_dataset

    root = tmp_path_factory.mktemp("tiny") / "fmriprep"
    return make_fmriprep_dataset(root, size="tiny", seed=0, shared_data=shared_data)


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (fast and deterministic on small models)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def clone_dataset(src: str | Path, dst: Path, subjects: list[str] | None = None) -> Path:
    """Copy a dataset cheaply: NIfTI files are symlinked, text files copied (safe to edit)."""
    src = Path(src)
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if subjects and rel.parts[0].startswith("sub-") and rel.parts[0][4:] not in subjects:
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name.endswith((".nii", ".nii.gz")):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dst


def run_cli(args: list[str], capsys=None) -> tuple[int, str]:
    """Run ``bidsfm`` in-process; return (exit code, captured stderr+stdout)."""
    from bidsfm.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = ""
    if capsys is not None:
        cap = capsys.readouterr()
        out = cap.out + cap.err
    return code, out
