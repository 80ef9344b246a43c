# Two commands from a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake
SHARED_NPZ ?= ../shared/data/breastmnist.npz
# The local copy where there is one; without it the workflow downloads the official file (a
# variable naming a missing file made it an input nothing could produce, and `make dry-run` failed).
ifneq ($(wildcard $(SHARED_NPZ)),)
export MEDCLASSIFY_BREASTMNIST_NPZ ?= $(abspath $(SHARED_NPZ))
endif

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint dry-run unit e2e bench clean-results system-deps test-cluster e2e-and-cluster

$(STAMP): requirements-data.txt requirements-train.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: run make PYTHON=python3.11 …"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "medclassify needs Python 3.11 or \
	later (its pinned packages need it); $(PYTHON) is $$($(PYTHON) --version 2>&1): run make PYTHON=python3.11 …"; \
	exit 1; }
	@# A .venv that does not run Python 3.11 or later (made by an older one, whose pip found no
	@# wheels, or whose Python is gone) is made anew; a working one is updated in place, and a
	@# linked one (a worktree's) is only installed into, never made or cleared.
	@if [ -L $(VENV) ]; then echo "$(VENV) is a link: installing into $$(readlink $(VENV))"; \
	elif ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  if [ -e $(VENV) ]; then echo "$(VENV) does not run Python 3.11 or later: making it anew"; fi; rm -rf $(VENV); fi
	[ -L $(VENV) ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE) --cores all
	$(SNAKEMAKE) --report results/report.zip
	@echo
	@echo "Results: results/demo/ (metrics: results/demo/baseline/evaluation/metrics.json)"
	@echo "Report:  results/report.zip (unzip it and open report/report.html)"

lint: $(STAMP)
	$(SNAKEMAKE) --lint
	$(BIN)/snakefmt --check .

dry-run: $(STAMP)
	$(SNAKEMAKE) -n --quiet
	$(SNAKEMAKE) -n --quiet --configfile config/breastmnist.yaml

# loadscope hands each worker whole modules: a module's fixtures (trained models, caches) are built
# once, not again whenever the worker returns to the module after tests of another one.
unit: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadscope -m "not slow and not cluster"

# Debian packages the tests drive: Chromium (the HTML report is opened in a real browser).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# loadgroup: the tests that share a workflow run or a module fixture stay on one worker (see
# tests/conftest.py; tests/test_xdist_grouping.py checks that the grouping holds). Two workers
# on a 2-core machine: a third made the slow session slower (529 s against 514 s), its training
# processes contending for the cores.
E2E_PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadgroup

e2e: $(STAMP) system-deps
	$(E2E_PYTEST) -m "slow"

# The cluster tests against a private one-node Slurm: start-slurm.sh installs slurm-wlm and munge
# when missing (as root) and starts the daemons; they are stopped, by their PIDs, whatever the
# tests did. The cluster run is compared with the local demo run that the end-to-end tests make.
SLURM_DIR ?= /tmp/medclassify-slurm
define with_slurm
	tests/cluster/start-slurm.sh $(SLURM_DIR)
	source $(SLURM_DIR)/env.sh && $(1); \
	  status=$$?; tests/cluster/stop-slurm.sh $(SLURM_DIR); exit $$status
endef

test-cluster: $(STAMP)
	$(call with_slurm,$(BIN)/python -m pytest -q -m cluster tests/test_cluster.py)

# End to end and cluster in one session: one local demo run serves both.
e2e-and-cluster: $(STAMP) system-deps
	$(call with_slurm,$(E2E_PYTEST) -m "slow or cluster")

# Every test in one session: the unit tests fill the time in which the Slurm demo test waits
# on status checks. Groups go out in conftest.py's order (demo run and longest modules first).
# 10 min 10 s to 11 min 56 s on an idle 2-core machine (stop 37; 14 min 44 s before test_models built
# one backbone per family), 6 min 51 s for 1040 tests on a day the same machine ran twice as fast
# (stop 39); when it took 12 min 59 s, `unit` then `e2e-and-cluster` took 14 min 53 s.
test: lint dry-run $(STAMP) system-deps
	$(call with_slurm,$(E2E_PYTEST) --no-loadscope-reorder)

# The benchmarks of the project's goals. bench/epoch_selection.py and bench/tta.py are recipe
# gates (hours of cross-validation), run by hand as their docstrings say.
BENCHMARKS = preprocess dry_run validate train_input mixed_precision accuracy
bench: $(STAMP)
	@for name in $(BENCHMARKS); do echo "== bench/$$name.py"; $(BIN)/python bench/$$name.py || exit 1; done

clean-results:
	rm -rf results .snakemake
