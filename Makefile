# The two commands of the README. Each sets up what it needs first (deploy/setup-debian.sh).
VENV ?= .venv
BIN := $(VENV)/bin
SETUP_STAMP := $(VENV)/.facevoice-setup

.PHONY: demo test lint setup clean

demo: $(SETUP_STAMP)
	$(BIN)/facevoice demo --out demo

test: $(SETUP_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(SETUP_STAMP)
	$(BIN)/ruff check .

setup $(SETUP_STAMP): pyproject.toml deploy/setup-debian.sh study/web/package-lock.json
	VENV=$(VENV) bash deploy/setup-debian.sh
	@touch $(SETUP_STAMP)

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
