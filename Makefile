# Quick start: `make grade` (grade your exercises/) and `make test` (the repository's own suite).
# Both create .venv on first use. The venv is built from Debian's /usr/bin/python3.11 when
# present, so the sandboxed worker can run it as an unprivileged user. Every target runs .venv's
# own binaries ($(BIN)/...): nothing needs an activated venv. The student loop, as in the release:
# `make check LESSON=NN`, `make submit LESSON=NN`, `make kernel`, `make lab`, `make notebooks LESSON=NN`.
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LESSON ?= all
SUBMISSION ?= .
OUT ?= grading-out
# Empty: torch from the default index. A CPU-only machine: the CPU wheel index from PyTorch's install page.
TORCH_INDEX ?=
KERNEL := llm-course

.PHONY: setup sandbox-tools grade test lint sync check submit kernel lab notebooks clean

setup: $(STAMP) sandbox-tools

# The sandbox's launcher: bubblewrap, installed when we are root and it is missing. A failed
# install is tolerated (the sandbox then uses util-linux `unshare`, or says it cannot run).
sandbox-tools:
	@if [ "$$(id -u)" = 0 ] && ! command -v bwrap >/dev/null 2>&1; then \
		echo "setup: installing bubblewrap (the worker sandbox)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } >/dev/null 2>&1 \
			|| echo "setup: could not install bubblewrap; the sandbox falls back to unshare"; \
	fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Results land in $(OUT)/lesson_NN/results.json, for one lesson or all. LESSON=8, 08 and lesson_08 are
# the same lesson: llm-grade's own normalisation names the folder (printf %02d would read 08 as octal).
LESSON_DIR = $(shell $(BIN)/python -c 'import sys; from graders.engine.lessons import normalise as n; a = sys.argv[1]; print("" if a == "all" else "lesson_" + n(a))' '$(LESSON)' 2>/dev/null || echo 'lesson_$(LESSON)')
grade: setup
	$(BIN)/llm-grade run --lesson $(LESSON) --submission $(SUBMISSION) --out $(OUT)/$(LESSON_DIR)

# The suite in two pytest runs: everything but `serial` spread over TEST_JOBS xdist workers (each
# grading is two processes, so at most one worker per core), then the `serial` tests (speed
# verdicts) alone, so no other grading shares the cores with a timing. TEST_JOBS=1: no xdist.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n > 4 ? 4 : n )))
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not serial" $(if $(filter-out 0 1,$(TEST_JOBS)),-n $(TEST_JOBS)) --durations=25; \
	spread=$$?; $(BIN)/python -m pytest -m serial --durations=10; serial=$$?; \
	test $$serial -eq 5 && serial=0; exit $$(( spread ? spread : serial ))  # 5: no serial test collected

lint: setup
	$(BIN)/ruff check .

sync: setup
	$(BIN)/llm-grade sync

# The student's self-check and submission zip (labkit reads LESSON as a decimal: 08 is eight).
check: setup
	$(BIN)/python -m labkit check '$(LESSON)'

submit: setup
	$(BIN)/python -m labkit submit '$(LESSON)'

kernel: setup
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "LLM course (.venv)"

lab: kernel
	$(BIN)/jupyter lab --ServerApp.root_dir=labs

# LESSON as a decimal (expr reads 08 as eight; printf %02d alone would read it as octal and fail).
notebooks: kernel
	@nn=$$(echo '$(LESSON)' | sed -E 's/^lesson_?//'); \
	case "$$nn" in [0-9]|[0-9][0-9]) ;; *) echo "notebooks: '$(LESSON)' is not a lesson number: give one, e.g. make notebooks LESSON=5" >&2; exit 2;; esac; \
	nn=$$(printf '%02d' "$$(expr "$$nn" + 0)"); set -- labs/lesson_$$nn/*.ipynb; \
	test -e "$$1" || { echo "notebooks: no notebook in labs/lesson_$$nn/ (is LESSON right?)" >&2; exit 2; }; \
	echo "$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.kernel_name=$(KERNEL) $$*"; \
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.kernel_name=$(KERNEL) "$$@"

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
