# Two commands on a fresh machine (see README):  make book   and   make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED := $(wildcard ../shared/data/mnist.npz)
# the data directory: $RECOLLECT_DATA, else ../shared/data when it is there (CI), else the library default
export RECOLLECT_DATA ?= $(if $(SHARED),$(abspath ../shared/data),)
# on these machines pip is configured with a local CPU-only torch wheel that torchvision cannot load
# against: install torch and torchvision together from the registry
PIP_ENV := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null

# the kernels papermill and nbval start import the package from the checkout
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH),)
# portable CPU arithmetic for smoke runs, read when Python starts (recollect/portable.env says why)
PORTABLE := env $(shell grep -E '^[A-Z_]+=' recollect/portable.env)

.PHONY: venv book test unit smoke clean paper-book dry-run plan
venv: $(VENV)/.installed
# disk a fresh install needs while pip runs, in GB (measured 2026-12-01 on x86_64: about 8 GB at the
# peak, 5.2 GB in the venv after; torch's CUDA build is most of it). A machine with less stops here
# with a message instead of half-way through pip; VENV_GB=0 skips the check.
VENV_GB ?= 8
$(VENV)/.installed: requirements.txt
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt "$(VENV_GB)" ]; then \
	  echo "make venv: only $$free GB of disk free here, and installing requirements.txt needs about $(VENV_GB) GB while pip runs (5.2 GB stay in $(VENV)). Free some disk (an old clone with its .venv holds about 5 GB) and run make again, or skip this check with VENV_GB=0." >&2; \
	  exit 1; \
	fi
	python3 -m venv $(VENV)
	$(PIP_ENV) $(VENV)/bin/pip install -q --no-cache-dir --upgrade pip
	$(PIP_ENV) $(VENV)/bin/pip install -q --no-cache-dir -r requirements.txt
	touch $@

## the book, from the stored outputs of the chapters and the results overview generated from results/
## (no GPU, no dataset): _build/html
book: venv
	$(PY) -m recollect overview
	$(VENV)/bin/jupyter-book build . --builder html

## the whole test suite: unit tests, then nbval re-executes every chapter's smoke copy (empty cache)
test: venv
	RECOLLECT_CACHE=$$(mktemp -d) $(PORTABLE) $(PY) -m pytest -p no:cacheprovider --durations=15 tests --nbval --nbval-current-env \
	    --nbval-sanitize-with tests/nbval-sanitize.cfg

## regenerate the smoke regression copies (after changing a chapter)
smoke: venv
	$(PORTABLE) $(PY) -m recollect smoke

## render the chapters that have paper-profile results, from results/ (CPU; never trains)
paper-book: venv
	$(PY) -m recollect render

## every paper-profile item at its paper shapes for a step or a few (its dry config), on the CPU:
## shape errors show here instead of on the GPU (`recollect plan --count` records the FLOPs and
## launches per step of the probes, which the plan's estimates use)
dry-run: venv
	$(PY) -m recollect dry-run

## every paper-profile item, its state and estimated GPU time
plan: venv
	$(PY) -m recollect plan

clean:
	rm -rf _build

## open the built book (make book first) in headless Chromium, offline, as file:// and served on
## 127.0.0.1: every equation typeset by the book's own MathJax, every figure loaded (installs Debian's
## chromium with apt-get when missing and run as root)
.PHONY: browser-check
browser-check:
	python3 tests/browser_check.py --html _build/html --require-status --strict-tables
	python3 tests/browser_check.py --html _build/html --http --require-status --strict-tables
