# All set-up happens here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-distributed lint bench clean gpu-check gpu-check-prepare bench-docs

$(VENV)/.installed: pyproject.toml requirements/constraints.txt requirements/packaged.txt requirements/packaged-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements/constraints.txt -e ".[data,test,quant,trl,tensorboard]"
	$(PIP) install -c requirements/constraints.txt -r requirements/packaged.txt
	$(PIP) install --no-deps -r requirements/packaged-nodeps.txt
	touch $@

# DeepSpeed, the optional extra balora[deepspeed] (sdist, no op built at install: DS_BUILD_OPS=0). Its first
# CPU run compiles one small communication op with g++ (about 2 minutes), installed here when missing.
$(VENV)/.deepspeed: $(VENV)/.installed
	command -v g++ >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq g++; }
	DS_BUILD_OPS=0 $(PIP) install -c requirements/constraints.txt -e ".[deepspeed]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/balora compare --config experiments/demo.yaml

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q -m "not distributed"

# 2 CPU processes (gloo) against one: DDP, FSDP2 (configs/fsdp2.yaml), DeepSpeed ZeRO-2/3 (docs/distributed.md).
test-distributed: $(VENV)/.deepspeed
	DS_ACCELERATOR=cpu $(PY) -m pytest -q -m distributed tests/test_distributed.py

bench: $(VENV)/.installed
	$(VENV)/bin/balora bench --model tiny --device cpu

# docs/benchmarks.md, regenerated from the committed JSON in docs/bench/ (numbers are never typed in).
bench-docs: $(VENV)/.installed
	$(PY) scripts/make_benchmarks.py

# The one-shot GPU check (docs/benchmarks.md): `make gpu-check-prepare` here writes $(GPU_CHECK_DIR)/, carry
# that folder to the GPU machine and run `make gpu-check` there (its python3 has torch, transformers, peft
# and accelerate; no venv). `make gpu-check DEVICE=cpu` is the same script on the CPU, micro shape.
GPU_CHECK_DIR ?= .gpu-check
OUT           ?= gpu-check-out
DEVICE        ?= cuda
CHECK_PY       = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check-prepare: $(VENV)/.installed
	PYTHONPATH=src $(PY) scripts/gpu_check_prepare.py --data $(GPU_CHECK_DIR)

$(GPU_CHECK_DIR)/manifest.json:
	$(MAKE) gpu-check-prepare

gpu-check: $(if $(filter cpu,$(DEVICE)),$(GPU_CHECK_DIR)/manifest.json)
	PYTHONPATH=src $(CHECK_PY) scripts/gpu_check.py --device $(DEVICE) --data $(GPU_CHECK_DIR) --out $(OUT)

clean:
	rm -rf $(VENV) build *.egg-info
