# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
GENZOO := $(VENV)/bin/genzoo
DEMO_DIR := runs/demo

.PHONY: demo test test-slow chain lint bench mutants clean

$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV) (first run only)..."
	@# METEOR reads WordNet from Debian's wordnet-base; without it `meteor` is null, never an error.
	@test -f /usr/share/wordnet/data.noun || (command -v apt-get >/dev/null && \
		{ apt-get install -y -q wordnet-base >/dev/null 2>&1 || { apt-get update -q >/dev/null \
		2>&1 && apt-get install -y -q wordnet-base >/dev/null 2>&1; } || sudo -n apt-get install \
		-y -q wordnet-base >/dev/null 2>&1; } ) || echo "note: wordnet-base not installed (meteor: null)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(GENZOO) train gpt_shakespeare_char --variant cpu --workdir $(DEMO_DIR)
	$(GENZOO) eval --workdir $(DEMO_DIR)
	$(GENZOO) sample --workdir $(DEMO_DIR) --prompt "ROMEO:" --num 2 --max-new-tokens 120 --seed 0
	@echo ""
	@echo "checkpoint: $(DEMO_DIR)/checkpoints   metrics: $(DEMO_DIR)/metrics.jsonl"
	@echo "pictures:   $(DEMO_DIR)/plots/loss.png   TensorBoard events: $(DEMO_DIR)/tensorboard"
	@echo "your own text: $(GENZOO) train gpt_text_file --set data.path=FILE   (all: $(GENZOO) list)"

# One pytest worker per core (at most 4: each holds 8 simulated devices and its compiles); a
# module's tests stay on one worker, so a module fixture that trains runs is built once.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n auto --maxprocesses 4 --dist loadscope

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

# The text-to-image chain at CPU size: dVAE, CLIP, the judge, then DALL·E (links already trained are
# skipped), its evaluation table (seen / held-out, with and without guidance and reranking), a grid.
chain: $(STAMP)
	$(GENZOO) chain dalle_shapes --variant cpu
	$(GENZOO) eval --workdir runs/dalle_shapes --json
	$(GENZOO) sample --workdir runs/dalle_shapes --candidates 16 --keep 4 --guidance 3 \
		--out runs/dalle_shapes/grid.png

# Speed against PyTorch and XLA's matmul peak, then bits/char of whatever LM runs exist.
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/gpt_speed.py
	$(VENV)/bin/python benchmarks/gpt_train_throughput.py
	$(VENV)/bin/python benchmarks/family_speed.py
	$(VENV)/bin/python benchmarks/bits_per_char.py
	$(VENV)/bin/python benchmarks/int8_decode.py
	$(VENV)/bin/python benchmarks/fp16_gradients.py
	$(VENV)/bin/python benchmarks/char_wall.py --variant cpu --runs default,second --steps 300 \
		--out benchmarks/results/char_wall_cpu.json

# Plants known bugs one at a time (tests/mutants.py); slow, outside CI.
mutants: $(STAMP)
	$(VENV)/bin/python tests/mutants.py

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs
