# Two entry points for a fresh machine with Python 3.11 and the package registries:
#   make report   install into .venv, then run the main job (benchmark report on the built-in scene)
#   make test     install into .venv, then run unit, parity and (smoke-mode) benchmark tests
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MPLBACKEND := Agg

.PHONY: install report test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/tensorf-bench report --preset quick

test: $(STAMP)
	$(BIN)/python -m tensorf_common.runtime $(BIN)/python -m pytest -q -p no:cacheprovider --benchmark-disable

clean:
	rm -rf $(VENV) build *.egg-info
