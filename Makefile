# drimbox: `make demo` runs the whole DRIM-M mesh on loopback, `make test` runs the test suites.
# Each target installs what it needs: the Python virtualenv and, when missing, Debian packages.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBS   := orthanc orthanc-dicomweb dcmtk dicom3tools chromium haproxy postgresql
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: venv system-deps demo test faults fuzz perf lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Installs only the Debian packages that are not there yet, so a ready machine needs no network.
system-deps:
	@missing=""; \
	for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: venv system-deps
	$(BIN)/drimbox demo

# The 20 slowest tests are listed at the end: the whole run must stay near 15 minutes on 2 cores.
test: venv system-deps
	$(BIN)/pytest -q --durations=20 $(PYTEST_ARGS) tests conformance

# The fault suite in full: every kill point, DRIMBOX_FAULTS_REPEAT times each (`make test` runs a subset).
faults: venv system-deps
	DRIMBOX_FAULTS_FULL=1 $(BIN)/pytest -q $(PYTEST_ARGS) tests/faults

# The long fuzzing run (tests/fuzz, hypothesis profile "fuzz"): FUZZ_EXAMPLES cases per target, stopped after
# FUZZ_SECONDS; failing cases are kept in .hypothesis/ and replayed first next time. `make test` runs a short one.
FUZZ_EXAMPLES ?= 2000
FUZZ_SECONDS  ?= 900
fuzz: venv
	DRIMBOX_FUZZ_PROFILE=fuzz DRIMBOX_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) timeout -s INT $(FUZZ_SECONDS) \
		$(BIN)/pytest -q -p no:cacheprovider --hypothesis-show-statistics $(PYTEST_ARGS) tests/fuzz

# The benchmark suite (about 5 minutes here, and about 12 more over the emulated WAN links: --wan, needs root);
# its report goes to perf/results/<date>/.
perf: venv system-deps
	@command -v curl >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq curl)
	$(BIN)/python -m perf --full --wan --out perf/results/$$(date +%Y-%m-%d)

# mypy's files (drimbox, tests, perf, conformance) are in pyproject.toml. `# fmt: skip` keeps a hand-aligned
# statement as written where it reads better (long f-string pages, aligned tables); everything else is ruff's format.
lint: venv
	$(BIN)/ruff check drimbox tests conformance perf
	$(BIN)/ruff format --check drimbox tests conformance perf
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
