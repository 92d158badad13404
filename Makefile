# The two commands of the README. Each sets up what it needs first (deploy/setup-debian.sh).
VENV ?= .venv
BIN := $(VENV)/bin
# test workers: each test module runs whole on one worker (its fixtures built once); two keep
# both cores busy while a test waits on a server or a browser (18.7 min against 27.5 serially here)
WORKERS ?= 2
SETUP_STAMP := $(VENV)/.facevoice-setup

.PHONY: demo test check lint setup clean

demo: $(SETUP_STAMP)
	$(BIN)/facevoice demo --out demo

test: $(SETUP_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile

# the inner loop: lint and the tests that start no server or browser and train nothing (tests/conftest.py, `slow`)
check: $(SETUP_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(SETUP_STAMP)
	$(BIN)/ruff check .

setup $(SETUP_STAMP): pyproject.toml deploy/setup-debian.sh study/web/package-lock.json
	VENV=$(VENV) bash deploy/setup-debian.sh
	@touch $(SETUP_STAMP)

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
