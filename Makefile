# Quick start: `make grade` (grade your exercises/) and `make test` (the repository's own suite).
# Both create .venv on first use. The venv is built from Debian's /usr/bin/python3.11 when
# present, so the sandboxed worker can run it as an unprivileged user.
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LESSON ?= all
SUBMISSION ?= .
OUT ?= grading-out

.PHONY: setup grade test lint sync kernel clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Results land in $(OUT)/lesson_NN/results.json, for one lesson or all.
grade: setup
	$(BIN)/llm-grade run --lesson $(LESSON) --submission $(SUBMISSION) \
		--out $(if $(filter all,$(LESSON)),$(OUT),$(OUT)/lesson_$(shell printf %02d $(LESSON)))

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

sync: setup
	$(BIN)/llm-grade sync

kernel: setup
	$(BIN)/python -m ipykernel install --user --name llm-course --display-name "LLM course (.venv)"

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
