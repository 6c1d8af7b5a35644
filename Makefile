PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DATA ?= ../shared/data

.PHONY: venv demo real test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,align,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m launch.pipeline --config=configs/demo.py --workdir=runs/demo

# The paper's lineage on real photos (LFW View 2 + a restricted identity set), read in place from $(DATA).
# ARGS: more pipeline flags, e.g. ARGS=--config.finetune.total_steps=300 (the optional transfer step).
real: $(STAMP)
	FACEJAX_DATA=$(DATA) $(BIN)/python -m launch.pipeline --config=configs/real_faces.py --workdir=runs/real $(ARGS)

# Two pytest workers (each file's tests and module fixtures stay in one); the 15 slowest tests are printed, so
# the suite can be kept short on the CPU at hand.
test: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=15

bench: $(STAMP)
	$(BIN)/python -m launch.benchmark --all --json_out=runs/bench/models.json

clean:
	rm -rf $(VENV) runs
