# beamline-servers: two commands do all the set-up on a fresh machine.
#   make demo   every simulator and server on 127.0.0.1, a scripted scenario, a summary
#   make test   ruff format --check, ruff check, and the pytest suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(shell cat setup.py pyproject.toml | cksum | cut -d' ' -f1)
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint pytest bench tools clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Debian tools the tests use, installed when missing: mandoc (man page lint),
# shellcheck (contrib/init.d), fitsverify (camerad's FITS files), systemd
# (systemd-analyze for contrib/systemd)
tools:
	@missing=""; \
	command -v mandoc >/dev/null 2>&1 || missing="$$missing mandoc"; \
	command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	command -v fitsverify >/dev/null 2>&1 || missing="$$missing fitsverify"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(PY) -m demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

pytest: $(STAMP) tools
	$(PY) -m pytest -q

test: lint pytest

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
