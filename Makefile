# lsbench — `make demo` and `make test` set up everything they need in a local .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LSB    := $(VENV)/bin/lsbench
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: install demo test test-fast lint perf clean

# torch/torchvision are pinned to the builds that work on CPU here (timm imports torchvision);
# numpy stays < 2 for bpy (the [gso] extra). `make test` covers every extra, so it installs them all.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev,gso,imagenet]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(LSB) generate mnist --out $(DEMO)/mnist-ls --train 1000 --test 500 --shard-size 250 --workers 2
	$(LSB) validate $(DEMO)/mnist-ls
	$(LSB) info $(DEMO)/mnist-ls
	$(LSB) preview $(DEMO)/mnist-ls --out $(DEMO)/mnist-ls-preview.png -n 20
	# locally scaled ImageNet on the photos bundled with scikit-image/matplotlib, offline backends
	$(LSB) generate imagenet --demo --offline --out $(DEMO)/imagenet-ls --train 16 --test 28 --workers 2
	$(LSB) validate $(DEMO)/imagenet-ls
	$(LSB) preview $(DEMO)/imagenet-ls --out $(DEMO)/imagenet-ls-preview.png -n 28
	# locally scaled GSO rendered with Blender from the embedded assets (pybullet_data meshes, studio-light HDRIs)
	$(LSB) generate gso --demo --out $(DEMO)/gso-ls --train 8 --test 10 --shard-size 5 --workers 2
	$(LSB) validate $(DEMO)/gso-ls
	$(LSB) preview $(DEMO)/gso-ls --out $(DEMO)/gso-ls-preview.png -n 10
	# the paper's protocol in small (the `cpu` budget, one seed): Aug, then InvL and DEC fine-tuned from
	# that Aug, on a 10-class 1-digit 64-px MNIST-LS; prints the leaderboard. Reruns skip finished runs.
	$(LSB) generate mnist --out $(DEMO)/mnist-ls-1d --digits 1 --size 64 --train 4000 --test 1000 --workers 2
	$(LSB) study run --name demo --data $(DEMO)/mnist-ls-1d --out $(DEMO)/study --archs resnet \
	  --methods aug,invl,dec --seeds 0 --budget cpu

lint: $(STAMP)
	$(VENV)/bin/ruff check lsbench tests perf tools
	$(VENV)/bin/lint-imports

test: $(STAMP) lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

perf: $(STAMP)
	$(PY) perf/generate_mnist.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
