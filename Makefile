PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The oneDNN convolution custom call (facejax.inference.optimize.onednn), compiled against the installed oneDNN.
ONEDNN := facejax/inference/optimize/onednn_conv.so
INSTALL := $(STAMP) $(ONEDNN)

DATA ?= ../shared/data

.PHONY: venv demo real test bench clean

venv: $(INSTALL)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,align,bench,onednn]'
	touch $(STAMP)

$(ONEDNN): facejax/inference/optimize/onednn_conv.cc $(STAMP)
	$(BIN)/python -c 'from facejax.inference.optimize import onednn; onednn.build()'

demo: $(INSTALL)
	$(BIN)/python -m launch.pipeline --config=configs/demo.py --workdir=runs/demo

# The paper's lineage on real photos (LFW View 2 + a restricted identity set), read in place from $(DATA).
# ARGS: more pipeline flags, e.g. ARGS=--config.finetune.total_steps=300 (the optional transfer step).
real: $(INSTALL)
	FACEJAX_DATA=$(DATA) $(BIN)/python -m launch.pipeline --config=configs/real_faces.py --workdir=runs/real $(ARGS)

# Two pytest workers (each file's tests and module fixtures stay in one); the 15 slowest tests are printed, so
# the suite can be kept short on the CPU at hand.
test: $(INSTALL)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=15

bench: $(INSTALL)
	$(BIN)/python -m launch.benchmark --all --json_out=runs/bench/models.json

clean:
	rm -rf $(VENV) runs
