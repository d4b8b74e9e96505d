# Every target makes .venv itself on a fresh machine.
PY     ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job on the embedded default, offline on CPU: train on scikit-learn's handwritten digits,
# evaluate on the held-out quarter, then classify held-out digits saved as PNG files and extract features.
DEMO := runs/demo
demo: venv
	$(BIN)/inceptionv3 train digits --out $(DEMO) --arch inception_v3 --image-size 75 --overwrite
	$(BIN)/inceptionv3 evaluate digits --weights $(DEMO)/best.safetensors --plot $(DEMO)/confusion.png
	$(BIN)/python -m inceptionv3.demo write-digits $(DEMO)/heldout --count 12
	$(BIN)/inceptionv3 predict $(DEMO)/heldout --weights $(DEMO)/best.safetensors --top-k 3
	$(BIN)/inceptionv3 predict $(DEMO)/heldout --weights $(DEMO)/best.safetensors --format json > $(DEMO)/predictions.json
	$(BIN)/python -m inceptionv3.demo check $(DEMO)/predictions.json
	$(BIN)/inceptionv3 features $(DEMO)/heldout --weights $(DEMO)/best.safetensors --out $(DEMO)/heldout_features.npz

# Test files spread over one worker process per core (each test computes on one thread).
test: venv
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: venv
	$(BIN)/python benchmarks/bench_inference.py

# docs/cli.md from the command's parsers (torch-free: any Python >= 3.10 runs it, no .venv needed).
docs:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) scripts/cli_reference.py

clean:
	rm -rf runs .pytest_cache
