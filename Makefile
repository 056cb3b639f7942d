# Diffusion models as stochastic quantisation in lattice field theory — build and test.
#
#   make book      create .venv if needed, then build the HTML book into _build/html
#                  (renders the committed notebooks; executes nothing)
#   make test      create .venv if needed, then run the whole test suite
#   make sync      re-pair book/*.md (jupytext) with their .ipynb
#   make execute CHAPTER=book/02_lattice_phi4_hmc.ipynb
#                  re-execute one chapter in place at its default (full-scale) parameters;
#                  PARAMS='-p EPOCHS 40 -y "CHANNELS: [16, 32, 64, 128]"' runs it at other values
#                  (papermill's flags; the chapter's scale table then lists what differs)
#   make results   regenerate book/results.md from book/results.yml and the committed notebooks
#   make clean     remove build outputs (keeps .venv; `make distclean` removes it too)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := book

PYTHON3    ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# torch is installed on its own, first, and only if the venv cannot import it. On a machine with
# no torch an unpinned `torch` pulls a multi-GB CUDA build; override e.g. with
#   make TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cpu'
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.dmsq-installed
CHAPTERS_MD := $(wildcard book/[0-9][0-9]_*.md)
CHAPTER    ?=
PYTEST_ARGS ?=
PARAMS     ?=

.PHONY: venv book test sync execute results clean distclean

define STRIP_PAPERMILL
import sys, nbformat
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
nb.metadata.pop("papermill", None)
# the injected parameters cell is kept (the values this run used; papermill replaces it on the
# next run), with a note for a reader who opens the notebook to run it at the defaults
NOTE = ("# The values this notebook was last executed with, injected by papermill (the scale table\n"
        "# below lists those that differ from the defaults). Delete this cell to run the chapter at\n"
        "# the defaults in the cell above: the paper's scale, meant for a GPU.\n")
for c in nb.cells:
    if "injected-parameters" in c.metadata.get("tags", []) and not c.source.startswith(NOTE):
        c.source = NOTE + c.source
for cell in nb.cells:
    for key in ("papermill", "execution"):
        cell.metadata.pop(key, None)
    if cell.metadata.get("tags") == []:
        del cell.metadata["tags"]
nbformat.write(nb, path)
endef
export STRIP_PAPERMILL

venv: $(STAMP)

$(STAMP): requirements.txt tests/requirements.txt
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON3) -m venv $(VENV); }
	@if $(PY) -c 'import torch' 2>/dev/null; then \
	  echo "torch already importable in $(VENV): $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "installing $(TORCH_SPEC)"; $(PY) -m pip install --quiet $(TORCH_SPEC); \
	fi
	$(PY) -m pip install --quiet -r requirements.txt -r tests/requirements.txt
	@# A kernel named python3 inside the venv that runs the venv's interpreter, so that
	@# papermill -k python3 and jupyter-book use it whatever else is on the machine.
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@touch $@

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going --all
	@echo "book built: _build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

sync: $(STAMP)
	@test -n "$(CHAPTERS_MD)" || { echo "no chapters book/NN_name.md to sync"; exit 0; }; \
	$(VENV)/bin/jupytext --sync $(CHAPTERS_MD)

results: $(STAMP)
	$(PY) -c "import pathlib, lib.display as d; pathlib.Path('book/results.md').write_text(d.results_page('book/results.yml', 'book'))"
	@echo "wrote book/results.md"

define CHECK_EXECUTE
import ast, shlex, sys, nbformat, yaml
path, params = sys.argv[1], sys.argv[2]
try:
    nb = nbformat.read(path, as_version=4)
except (OSError, ValueError) as exc:
    sys.exit(f"make execute: cannot read CHAPTER={path} ({type(exc).__name__}); give a book/NN_name.ipynb")
cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
if len(cells) != 1:
    sys.exit(f"make execute: {path} has {len(cells)} cells tagged parameters, not one")
known = {t.id for node in ast.walk(ast.parse(cells[0].source)) if isinstance(node, ast.Assign)
         for t in node.targets if isinstance(t, ast.Name)}
words, given = shlex.split(params), []
for flag, value in zip(words, words[1:]):
    if flag in ("-p", "--parameters", "-r", "--parameters_raw"):
        given.append(value)
    elif flag in ("-y", "--parameters_yaml"):
        given.extend((yaml.safe_load(value) or {}).keys())
unknown = sorted(set(given) - known)
if unknown:
    sys.exit(f"make execute: {path} has no parameter(s) {', '.join(unknown)}; its parameters cell defines "
             + ", ".join(sorted(known)))
endef
export CHECK_EXECUTE

execute: $(STAMP)
	@test -n "$(CHAPTER)" || { echo "usage: make execute CHAPTER=book/NN_name.ipynb"; exit 2; }
	@test -f "$(CHAPTER)" || { echo "make execute: no chapter $(CHAPTER) (give book/NN_name.ipynb)"; exit 2; }
	@$(PY) -c "$$CHECK_EXECUTE" $(CHAPTER) '$(PARAMS)'
	@# executed into a temporary file that replaces the chapter only when the whole run succeeded, so an
	@# interrupt or an error never leaves the committed notebook with half its outputs
	@# DMSQ_PROGRESS=none: no progress widgets stored in the notebook (they render as frozen bars)
	cd $(dir $(CHAPTER)) && DMSQ_PROGRESS=none $(abspath $(VENV))/bin/papermill $(notdir $(CHAPTER)) .executing-$(notdir $(CHAPTER)) -k python3 $(PARAMS) || { rm -f .executing-$(notdir $(CHAPTER)); exit 1; }
	@# drop papermill's timing metadata so that the paired .md (and diffs) stay clean
	$(PY) -c "$$STRIP_PAPERMILL" $(dir $(CHAPTER)).executing-$(notdir $(CHAPTER))
	mv $(dir $(CHAPTER)).executing-$(notdir $(CHAPTER)) $(CHAPTER)
	$(VENV)/bin/jupytext --sync $(CHAPTER)

clean:
	rm -rf _build .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
