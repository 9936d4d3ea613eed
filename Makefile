# Two commands on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
BUDGET ?= full

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first, pinned to the wheels this machine carries
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	# the test extra and the optional integrations, which `make test` tests with the real packages
	$(PY) -m pip install --quiet -e ".[test,lightning]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ebcompress prune --recipe quickstart --out runs/quickstart --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	@test -d $(FMNIST) || { echo "Fashion-MNIST missing: installing Debian's dataset-fashion-mnist"; \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	$(PY) benchmarks/run_all.py --budget $(BUDGET)

clean:
	rm -rf $(VENV) runs build dist *.egg-info
