"""Shared test set-up.

* The repository root goes on ``sys.path`` so that ``import lib`` works without installing it.
* ``DMSQ_CACHE`` (the ensemble cache of :mod:`lib.storage.cache`) points to a fresh temporary
  directory for the whole session, so the tests never read or write ``~/.cache/dmsq``.
  Subprocesses (papermill kernels) inherit it.
* Matplotlib draws off-screen.
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_CACHE_DIR = None


def pytest_configure(config):
    global _CACHE_DIR
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "book: builds the book or executes its chapters")
    if _CACHE_DIR is None:
        _CACHE_DIR = tempfile.mkdtemp(prefix="dmsq-test-cache-")
        os.environ["DMSQ_CACHE"] = _CACHE_DIR
        os.environ["DMSQ_PROGRESS"] = "none"  # no progress widgets in executed notebooks
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_unconfigure(config):
    global _CACHE_DIR
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
        _CACHE_DIR = None


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book built once per test session (`jupyter-book build --warningiserror` into a temporary
    directory): ``(html_dir, log, returncode)``."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(ROOT), "--path-output", str(out),
           "--warningiserror", "--keep-going", "--all"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return out / "_build" / "html", r.stdout + r.stderr, r.returncode
