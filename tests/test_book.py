"""Checks of the book as a whole: pairing, parameters, setup cells, execution, build.

Every chapter is ``book/NN_name.md`` (jupytext MyST, what we edit) paired with
``book/NN_name.ipynb`` (what the book renders and Colab opens).
"""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pytest
import yaml

# ==================================================================================================
# CI_PARAMETERS — papermill parameters with which each chapter runs in the test suite.
#
# Chapter authors: add your chapter here, keyed by its file stem, with values that make the whole
# chapter run on a 2-core CPU in a few minutes at most (the whole suite has ~25 minutes).
# Every key must be a variable assigned in the chapter's `parameters` cell. An empty dict runs
# the chapter at its default (full-scale) parameters. A chapter missing here fails the tests.
# The kernel also sees the environment variable DMSQ_CI=1 and a temporary DMSQ_CACHE.
# ==================================================================================================
CI_PARAMETERS: dict[str, dict] = {
    "01_stochastic_quantisation": {
        "N_CHAINS": 2000, "DTAU": 0.05, "T_EARLY": 4.0, "T_LATE": 40.0, "DTAUS": [0.2, 0.1, 0.05, 0.025],
        "N_CHAINS_BIAS": 2000, "T_THERM": 2.0, "T_MEAS": 4.0, "N_CHAINS_MALA": 1000, "FP_POINTS": 201,
        "FP_T_MAX_DW": 8.0, "L": 6, "LATTICE_DTAUS": [0.2, 0.1],
        "N_CHAINS_LATTICE": 16, "LATTICE_T_THERM": 2.0, "LATTICE_T_MEAS": 4.0, "N_HMC": 32, "HMC_BURNIN": 10,
        "HMC_SPACING": 2,
    },
    "02_lattice_phi4_hmc": {
        "L": 8, "N_TRAIN": 64, "N_TEST": 32, "EPS_SCAN": [0.05, 0.1, 0.25], "N_DH": 64, "N_ACC_CHAINS": 16,
        "N_ACC_TRAJ": 3, "L_FREE": 8, "FREE_CHAINS": 16, "FREE_MEAS": 8, "FREE_GAP": 4, "THERM_CHAINS": 16,
        "THERM_ORDERED": 4, "THERM_TRAJ": 200, "AC_CHAINS": 4, "AC_TRAJ": 300, "AC_TRAJ_OTHER": 300,
        "METRO_SWEEPS": 300,
        "DW_CHAINS": 8, "DW_TRAJ": 100, "BINDER_LS": [4, 8], "BINDER_KAPPAS": [0.24, 0.27, 0.30],
        "BINDER_CHAINS": [16, 16], "BINDER_BURNIN": [50, 50], "BINDER_TRAJ": [100, 100],
        "CS_LS": [4, 8], "CS_CHAINS": 4,
        "CS_MEASURE": {"hmc": [80, 80], "fa-hmc": [80, 80], "cluster": [80, 80], "metropolis": [80, 80]},
        "CROSS_LS": [4, 8], "CROSS_KAPPAS": [0.26, 0.27, 0.28], "CROSS_CHAINS": 4, "CROSS_THERM_TAU": 2,
        "CROSS_MEASURE_TAU": 10,
    },
    "03_diffusion_sdes": {
        "TORCH_THREADS": 1, "N_FORWARD": 2000, "FP_POINTS_VE": 401, "FP_POINTS_VP": 201, "FP_SUBSTEPS": 10,
        "N_REVERSE": 1000, "N_STEPS": 100, "N_2D": 200, "N_STEPS_2D": 50, "GRID_2D": 9, "N_FRAMES": 4, "N_DSM": 4000,
        "DSM_BATCHES": 4, "N_TRAIN": 512, "EPOCHS": 2, "N_SAMPLES": 1000, "N_ODE": 500, "N_PATHS": 8,
        "HUTCHINSON_PROBES": [1, 4], "HUTCHINSON_REPEATS": 5,
    },
    "04_cumulants": {
        "TORCH_THREADS": 1, "N_STEPS": 40, "N_EXACT": 2000, "N_RECORD": 6, "N_BLOCKS_T": 10, "N_TRAIN": 2000,
        "EPOCHS": 2, "BATCH_SIZE": 256, "CHECK_EPOCHS": [1], "N_CHECK": 1000, "N_SAMPLES": 2000, "GEN_BATCH": 1024,
        "N_BLOCKS": 20, "PHI4_L": 8, "PHI4_N_TRAIN": 64, "PHI4_N_TEST": 16, "PHI4_REF_CHAINS": 16,
        "PHI4_REF_PER_CHAIN": 4, "PHI4_REF_SPACING": 2, "PHI4_CHANNELS": [8, 8, 8, 8], "PHI4_EPOCHS": 1,
        "PHI4_N_GEN": 16, "PHI4_GEN_BATCH": 16, "PHI4_EM_STEPS": 20, "PHI4_ZERO_MODE_HEAD": True,
        "N_ORDER_SEEDS": 2, "N_ORDER_SAMPLES": 1000,
    },
    "05_toy_effective_action": {
        "N_TRAIN": 256, "EPOCHS": 3, "N_GEN": 128, "N_STEPS": 50, "N_PHI": 201, "N_TAU_FLOW": 20, "N_EVAL": 512,
        "N_T_EVAL": 16, "SEED_CHECK": [1], "N_SEED_CHECK": 128,
    },
    "06_phi4_broken_phase": {
        "L": 8, "N_TRAIN": 64, "N_TEST": 32, "N_BURNIN": 10, "N_SPACING": 4, "CHANNELS": [8, 8, 8, 8], "EPOCHS": 1,
        "N_GEN": 16, "N_EM_STEPS": 20, "GEN_BATCH": 16, "N_RG": 16, "RG_TIMES": [0.5, 0.1, 0.02],
        "N_GEN_VARIANT": 16, "SIDE_CHANNELS": [8, 8, 8, 8], "SIDE_EPOCHS": 1,
    },
    "07_phi4_symmetric_phase": {
        "L": 8, "N_TRAIN": 64, "N_TEST": 32, "N_BURNIN": 10, "N_SPACING": 4, "REF_CHAINS": 16, "REF_PER_CHAIN": 6,
        "REF_SPACING": 2, "CHANNELS": [8, 8, 8, 8], "EPOCHS": 1, "N_GEN": 16, "N_GEN_STUDY": 32, "N_EM_STEPS": 20,
        "GEN_BATCH": 16, "TRAIN_SIZES": [32, 64], "N_GEN_SIZES": 16, "SIDE_CHANNELS": [8, 8, 8, 8], "SIDE_EPOCHS": 1,
        "N_GEN_SYMMETRY": 16, "N_GEN_ZERO_MODE": 16, "L_BIG": 16,
        "BIG_CHAINS": 8, "BIG_PER_CHAIN": 2, "BIG_SPACING": 2, "N_GEN_BIG": 8,
    },
    "08_likelihood": {
        "L": 8, "N_TRAIN": 64, "N_TEST": 32, "N_BURNIN": 10, "N_SPACING": 4, "CHANNELS": [8, 8, 8, 8], "EPOCHS": 1,
        "N_EM_STEPS": 20, "GEN_BATCH": 16, "N_LIK": 16, "LIK_RTOL": 1e-3, "LIK_BATCH": 16, "N_REPEAT": 8,
        "REPEAT_SEEDS": [6], "TRACE_LS": [8], "N_TRACE_CONFIGS": [4], "N_POINTS": 2, "TRACE_TIMES": [0.1, 1.0],
        "PROBE_COUNTS": [1, 4], "N_PROBE_DRAWS": 4, "FREE_LS": [8], "FREE_RTOLS": [1e-3, 1e-4], "N_FREE": 8,
        "EM_STEPS_SCAN": [50, 100],
    },
    "09_dm_mc": {
        "L": 8, "N_TRAIN": 64, "N_TEST": 32, "N_BURNIN": 10, "N_SPACING": 4, "CHANNELS": [8, 8, 8, 8], "EPOCHS": 1,
        "N_PROPOSALS": 64, "N_PROPOSALS_EM": 32, "N_EM_STEPS": 20, "LIK_RTOL": 1e-3, "N_PROBES": 2, "PATH_STEPS": 10, "GEN_BATCH": 64,
        "LIK_BATCH": 64, "N_CHAINS": 4, "N_THERM": 20, "N_MEASURE": 200, "CHAIN_BLOCKS": 8, "FREE_L": 8,
        "N_FREE": 2000, "FREE_EM_STEPS": [20, 100], "FREE_PATH_STEPS": [2, 10], "SCAN_KAPPAS": [0.21],
        "SCAN_LS": [8], "SCAN_EPOCHS": [1, 2], "N_SCAN": 32, "N_SCAN_LIK": 8, "FREE_ODE_RTOLS": [1e-3],
        "EQ_LS": [8], "EQ_BURNIN": 10, "EQ_SPACING": 2, "EQ_PER_CHAIN": 4, "EQ_N_PROPOSALS": 64,
        "EQ_CHAIN_BLOCKS": 8, "HYBRID_L": 8, "HYBRID_CYCLES": 8, "HYBRID_HMC": 2,
        "TILT_N": 2000, "POOL_K": 64, "POOL_N": 256, "POOL_REPEATS": 3,
        "TRAIN_STUDY_L": 8, "TRAIN_STUDY_CHANNELS": [8, 8, 8, 8], "TRAIN_STUDY_EPOCHS": [1, 2],
        "TRAIN_STUDY_N": 64, "GAP_TIMES": [0.05],
    },
    "10_u1_gauge": {
        "L": 4, "BETAS": [1.0, 3.0], "N_EXACT": 256, "N_CHAINS": 4, "N_THERM": 10, "N_MEASURE": 100,
        "BETA_DM": 3.0, "N_TRAIN": 128, "CHANNELS": [4, 4], "EPOCHS": 1, "N_GEN": 32, "N_EM_STEPS": 10,
        "MALA_STEPS": [0, 2], "N_PROPOSALS": 64, "PATH_STEPS": 5, "BETA_TRAIN": 1.0, "COND_BETAS": [3.0],
        "GEN_BATCH": 64, "N_SCAN": 32,
    },
}

# Wall-clock limit for one chapter under papermill, in seconds.
CHAPTER_TIMEOUT_S = int(os.environ.get("DMSQ_CHAPTER_TIMEOUT", "900"))
# ==================================================================================================

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.md"))
CHAPTER_IDS = [p.stem for p in CHAPTERS]
SYNC_HINT = "run `make sync` (jupytext --sync book/*.md) and commit both files"


def _config() -> dict:
    with open(ROOT / "_config.yml") as f:
        return yaml.safe_load(f)


def repository_url() -> str:
    return _config()["repository"]["url"].rstrip("/")


def _cells(nb, kinds=("code", "markdown", "raw")):
    return [(c.cell_type, c.source.strip()) for c in nb.cells if c.cell_type in kinds]


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _tags(cell):
    return list(cell.get("metadata", {}).get("tags", []))


def _parameter_names(cell) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(cell.source)):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return names


chapter = pytest.mark.parametrize("md", CHAPTERS, ids=CHAPTER_IDS)


def test_chapters_exist():
    assert CHAPTERS, "no chapters book/NN_name.md found"


def test_every_notebook_has_a_markdown_twin():
    orphans = [p.name for p in sorted(BOOK.glob("[0-9][0-9]_*.ipynb")) if not p.with_suffix(".md").exists()]
    assert not orphans, f"notebooks without their paired .md: {orphans}; {SYNC_HINT}"


def test_toc_lists_every_chapter():
    with open(ROOT / "_toc.yml") as f:
        toc = yaml.safe_load(f)
    files = {re.sub(r"\.(md|ipynb)$", "", e["file"]) for e in toc.get("chapters", [])}
    missing = [p.stem for p in CHAPTERS if f"book/{p.stem}" not in files]
    assert not missing, f"chapters missing from _toc.yml: {missing}"


def test_results_page_is_generated_from_the_chapters_outputs():
    """book/results.md must be exactly what book/results.yml and the committed notebooks give (run
    `make results` after executing a chapter), and every number of ours on it is a glued value."""
    from lib.display import results_page

    expected = results_page(BOOK / "results.yml", BOOK)
    page = BOOK / "results.md"
    assert page.exists() and page.read_text() == expected, "book/results.md is stale: run `make results`"


def test_results_page_refuses_a_value_no_chapter_computed(tmp_path):
    from lib.display import results_page

    spec = yaml.safe_load((BOOK / "results.yml").read_text())
    spec["sections"][0]["rows"][0]["ours"] = {"no_such_glue_key": ""}
    bad = tmp_path / "results.yml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(KeyError, match="no_such_glue_key"):
        results_page(bad, BOOK)
    # the "run" column of a row taken from a glued value: one the chapter does not store is refused too
    spec = yaml.safe_load((BOOK / "results.yml").read_text())
    spec["sections"][0]["rows"][0]["run"] = "no_such_run_key"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(KeyError, match="no_such_run_key"):
        results_page(bad, BOOK)


@chapter
def test_paired_notebook_agrees(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing; {SYNC_HINT}"
    nb_md, nb_ipynb = jupytext.read(md), jupytext.read(ipynb)
    formats = nb_md.metadata.get("jupytext", {}).get("formats", "")
    assert "ipynb" in formats, (f"{md.name} is not paired with a notebook (jupytext formats: {formats!r}); "
                                "set `formats: ipynb,md:myst` in its jupytext header")
    a, b = _cells(nb_md), _cells(nb_ipynb)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, (f"{md.name} and {ipynb.name} differ at cell {i} ({x[0]} vs {y[0]}):\n"
                        f"--- .md\n{x[1][:400]}\n--- .ipynb\n{y[1][:400]}\n{SYNC_HINT}")
    assert len(a) == len(b), f"{md.name} has {len(a)} cells, {ipynb.name} has {len(b)}; {SYNC_HINT}"


@chapter
def test_every_glued_value_in_the_prose_is_computed_by_a_cell(md):
    """Numbers in the prose come from cells through glue: every `{glue:text}`key`` the text uses must
    be stored by a cell of the committed notebook (otherwise the book shows nothing there)."""
    keys = set(re.findall(r"\{glue(?::[a-z]+)?\}`([^`:]+)", md.read_text()))
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    glued = {o["metadata"]["scrapbook"]["name"] for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}
    missing = sorted(keys - glued)
    assert not missing, (f"{md.name} uses glued values that no cell of {md.with_suffix('.ipynb').name} stores: "
                         f"{missing}; execute the chapter (make execute) and commit it")


@chapter
def test_no_progress_bar_is_stored_as_a_widget(md):
    """A progress bar saved as widget state renders as a frozen "training: 0%" line in the book;
    chapters are executed with DMSQ_PROGRESS=none (make execute), so none may be committed."""
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    bars = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
            and re.search(r"\d+%\|", str(o["data"].get("text/plain", "")))]
    assert not bars, f"{md.with_suffix('.ipynb').name}: progress-bar widgets in cells {bars}; re-execute with make execute"


@chapter
def test_one_parameters_cell(md):
    for path in (md, md.with_suffix(".ipynb")):
        if not path.exists():
            pytest.fail(f"{path.name} is missing; {SYNC_HINT}")
        nb = jupytext.read(path)
        tagged = [i for i, c in enumerate(_code_cells(nb)) if "parameters" in _tags(c)]
        assert len(tagged) == 1, (f"{path.name}: expected exactly one code cell tagged `parameters`, "
                                  f"found {len(tagged)} (code cells {tagged})")


@chapter
def test_setup_cell_names_the_repository(md):
    url = repository_url()
    for path in (md, md.with_suffix(".ipynb")):
        if not path.exists():
            pytest.fail(f"{path.name} is missing; {SYNC_HINT}")
        code = _code_cells(jupytext.read(path))
        assert code, f"{path.name} has no code cells"
        assert url in code[0].source, (f"{path.name}: the first code cell must be the setup cell and contain "
                                       f"the repository URL {url} (from _config.yml, repository.url)")


@chapter
def test_setup_cell_is_short_and_hidden(md):
    """The set-up (Colab bootstrap) is at most 15 lines and folded away in the rendered book (still
    run by papermill and Colab); the chapter's own code starts after it."""
    setup = _code_cells(jupytext.read(md))[0]
    lines = [line for line in setup.source.splitlines() if line.strip()]
    assert len(lines) <= 15, f"{md.name}: the set-up cell has {len(lines)} lines"
    assert "hide-cell" in _tags(setup), f"{md.name}: tag the set-up cell hide-cell"


@chapter
def test_no_code_cell_is_longer_than_80_lines(md):
    """Chapters narrate: a code cell of more than 80 non-blank lines belongs in lib or in two cells."""
    long = [(i, n) for i, c in enumerate(_code_cells(jupytext.read(md)))
            if (n := sum(1 for line in c.source.splitlines() if line.strip())) > 80]
    assert not long, f"{md.name}: code cells (index, non-blank lines) longer than 80 lines: {long}"


@chapter
def test_ci_parameters_are_declared(md):
    stem = md.stem
    assert stem in CI_PARAMETERS, (f"no CI parameters for chapter {stem!r}: add an entry "
                                   f"CI_PARAMETERS[{stem!r}] = {{...}} at the top of tests/test_book.py")
    nb = jupytext.read(md)
    cells = [c for c in _code_cells(nb) if "parameters" in _tags(c)]
    assert cells, f"{md.name} has no `parameters` cell"
    unknown = set(CI_PARAMETERS[stem]) - _parameter_names(cells[0])
    assert not unknown, f"CI_PARAMETERS[{stem!r}] sets names not in the chapter's parameters cell: {sorted(unknown)}"


def _papermill(nb_in: Path, nb_out: Path, params: dict, cwd: Path, env_extra: dict, timeout: int):
    params_file = nb_out.with_suffix(".params.json")
    params_file.write_text(json.dumps(params))
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, "-m", "papermill", str(nb_in), str(nb_out), "-k", "python3",
           "--cwd", str(cwd), "-f", str(params_file), "--no-progress-bar", "--log-level", "WARNING"]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr or b""
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
        pytest.fail(f"{nb_in.name} did not finish within {timeout} s under papermill "
                    f"(partial output in {nb_out})\n{err[-3000:]}")


def test_kernel_python3_is_this_interpreter(tmp_path):
    """papermill's kernel `python3` must run the same environment as the tests (the .venv)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys, os\nprefix = sys.prefix\nci = os.environ.get('DMSQ_CI')",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(sys.prefix)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "probe.ipynb", tmp_path / "probe.out.ipynb"
    nbformat.write(nb, src)
    r = _papermill(src, out, {}, tmp_path, {}, 300)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"].strip()
    assert os.path.realpath(printed) == os.path.realpath(sys.prefix), (
        f"kernel python3 runs {printed}, the tests run {sys.prefix}: register the venv's kernel with "
        "`.venv/bin/python -m ipykernel install --sys-prefix --name python3` (make venv does this)")


@pytest.mark.slow
@pytest.mark.book
@chapter
def test_chapter_runs_under_papermill(md, tmp_path):
    stem = md.stem
    if stem not in CI_PARAMETERS:
        pytest.fail(f"no CI parameters for chapter {stem!r}: add CI_PARAMETERS[{stem!r}] at the top of "
                    "tests/test_book.py")
    nb_in = md.with_suffix(".ipynb")
    assert nb_in.exists(), f"{nb_in.name} is missing; {SYNC_HINT}"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    nb_out = out_dir / nb_in.name
    env = {"DMSQ_CI": "1", "DMSQ_CACHE": os.environ["DMSQ_CACHE"], "MPLBACKEND": "Agg"}
    r = _papermill(nb_in, nb_out, CI_PARAMETERS[stem], BOOK, env, CHAPTER_TIMEOUT_S)
    assert r.returncode == 0, (f"{nb_in.name} failed under papermill with CI parameters "
                               f"{CI_PARAMETERS[stem]} (executed notebook: {nb_out}):\n{r.stderr[-6000:]}")
    _check_provenance(nbformat.read(nb_out, as_version=4))


LABEL_SAMPLER = {"HMC": "hmc", "DM": "dm"}


def _check_provenance(nb):
    """Cells tagged ``provenance`` print JSON records of table rows: label, ensemble file, slice,
    sampler, the rescaling and the numbers shown. Every row must be recomputable from the file its
    record names, and that file must hold what the label says (HMC rows from HMC ensembles, DM
    rows from generated ones) — the check that catches a 'DM' row computed from HMC data."""
    from lib.storage import load_ensemble
    from lib.storage.cache import default_cache_dir
    from lib.analysis.observables import rescaled_site_cumulants

    for cell in nb.cells:
        if cell.cell_type != "code" or "provenance" not in cell.metadata.get("tags", []):
            continue
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        records = json.loads(text)
        assert records, "a provenance cell printed no records"
        files = {}
        for rec in records:
            # records name the file by its cache key, relative to $DMSQ_CACHE (not the machine's path)
            ens = load_ensemble(default_cache_dir() / rec["file"])
            want = LABEL_SAMPLER[rec["label"].split()[0]]
            assert ens.metadata["sampler"] == want == rec["sampler"], (
                f"row {rec['label']!r} was computed from a {ens.metadata['sampler']!r} ensemble ({rec['file']})")
            orders = tuple(int(n) for n in rec["cumulants"])
            again = rescaled_site_cumulants(ens.configs[rec["start"]:rec["stop"]], rec["lo"], rec["hi"], orders,
                                            n_blocks=rec["n_blocks"], symmetrise=rec.get("symmetrised", False))
            for n in orders:
                assert np.allclose(again[n], rec["cumulants"][str(n)], rtol=1e-10, atol=0), (rec["label"], n)
            files.setdefault(want, set()).add(rec["file"])
        if "hmc" in files and "dm" in files:
            assert not files["hmc"] & files["dm"]


@pytest.mark.slow
@pytest.mark.book
def test_book_builds_without_warnings(built_book):
    """`jupyter-book build` with warnings as errors, into a temporary directory."""
    html, log, returncode = built_book
    warnings = [line for line in log.splitlines() if re.search(r"\bWARNING\b|\bERROR\b", line)]
    assert returncode == 0 and not warnings, "jupyter-book build failed or warned:\n" + "\n".join(
        warnings or log.splitlines()[-60:])
    assert (html / "index.html").exists()
    # MathJax ships with the book (no CDN): formulas render offline
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert 'src="../_static/mathjax/tex-chtml.js"' in (html / "book" / f"{CHAPTERS[0].stem}.html").read_text()
    url = repository_url()
    branch = _config()["repository"].get("branch", "main")
    for md in CHAPTERS:
        page = html / "book" / f"{md.stem}.html"
        assert page.exists(), f"{page.relative_to(html)} was not built"
        text = page.read_text()
        # The page must come from the .ipynb (only notebook pages get launch buttons), and the
        # Colab button must point at the notebook in the repository.
        colab = (f"https://colab.research.google.com/github/{url.split('github.com/', 1)[-1]}"
                 f"/blob/{branch}/book/{md.stem}.ipynb")
        assert colab in text, f"{page.name} has no Colab launch button to {colab}"


def test_provenance_check_catches_a_row_from_the_wrong_data(tmp_path, monkeypatch):
    """A 'DM' row computed from an HMC ensemble (the mistake in one published table) must fail."""
    import lib
    from lib.analysis.observables import rescaled_site_cumulants

    ens = lib.cached_hmc_ensemble(lib.Phi4(L=4, kappa=0.3, lam=0.022), 8, seed=1, n_burnin=2, n_spacing=2, eps=0.1,
                                  n_steps=5, cache_dir=tmp_path, progress_bar=False, verbose=False)
    k = rescaled_site_cumulants(ens.configs, -3.0, 3.0, (2, 4))
    monkeypatch.setenv("DMSQ_CACHE", str(tmp_path))  # records name files relative to the cache
    rec = {"file": ens.path.name, "sampler": "hmc", "start": 0, "stop": 8, "n_blocks": None, "lo": -3.0, "hi": 3.0,
           "cumulants": {str(n): list(k[n]) for n in (2, 4)}}

    def notebook(records):
        cell = nbformat.v4.new_code_cell("", metadata={"tags": ["provenance"]})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=json.dumps(records))]
        nb = nbformat.v4.new_notebook()
        nb.cells = [cell]
        return nb

    _check_provenance(notebook([{**rec, "label": "HMC reference"}]))  # honest row passes
    with pytest.raises(AssertionError, match="computed from a 'hmc' ensemble"):
        _check_provenance(notebook([{**rec, "label": "DM"}]))
    tampered = {**rec, "label": "HMC reference", "cumulants": {**rec["cumulants"], "2": [k[2][0] * 1.01, k[2][1]]}}
    with pytest.raises(AssertionError):
        _check_provenance(notebook([tampered]))
