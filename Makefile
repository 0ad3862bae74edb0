# Everyday commands. `make test` is what CI runs (see .ci/run).
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: deps install build test test-unit test-purepython test-ns fuzz fuzz-ci fuzz-coverage bench bench-e2e demo down docs docs-serve cli-docs pictures top-screenshot clean sdist

deps:               ## system tools the lab and tests use (apt, when root and missing)
	scripts/install-system-deps

install: deps       ## the package, its C extension built in place, the test and docs tools, matplotlib
	$(PYTHON) -m pip install -q -e '.[test,bench,docs]'

build:              ## rebuild the C extension in place after editing csrc/ or *.pyx
	@$(PYTHON) -c 'import Cython, setuptools' 2>/dev/null || $(PYTHON) -m pip install -q 'Cython>=3.1' setuptools
	$(PYTHON) setup.py -q build_ext --inplace

test: install build ## every test: unit tests, and namespace tests when run as root; the unit tests again with hyperplane.Nat the reference model
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)
	HYPERPLANE_PUREPYTHON=1 $(PYTHON) -m pytest -q tests/unit $(PYTEST_ARGS)

test-purepython: build  ## the unit tests with HYPERPLANE_PUREPYTHON=1 (hyperplane.Nat is the model)
	HYPERPLANE_PUREPYTHON=1 $(PYTHON) -m pytest -q tests/unit $(PYTEST_ARGS)

test-unit: build
	$(PYTHON) -m pytest -q tests/unit $(PYTEST_ARGS)

test-ns: build
	$(PYTHON) -m pytest -q tests/ns $(PYTEST_ARGS)

FUZZ_SECONDS ?= 60
fuzz:               ## coverage-guided fuzzing of the C core (libFuzzer, ASan+UBSan), FUZZ_SECONDS in all
	scripts/install-fuzz-deps
	fuzz/run --seconds $(FUZZ_SECONDS)

fuzz-ci:            ## the short bounded fuzz run CI does
	$(MAKE) fuzz FUZZ_SECONDS=40

fuzz-coverage:      ## line / branch coverage of csrc/ reached by the kept fuzz corpora
	scripts/install-fuzz-deps
	fuzz/run --coverage

bench: build        ## micro-benchmarks of the C core beside the reference model
	$(PYTHON) -m pytest bench/test_micro.py --benchmark-only --benchmark-columns=min,median,ops,rounds -q

BENCH_ARGS ?=
bench-e2e: build    ## end to end (root): Hyperplane beside kernel routing and nftables NAT
	$(PYTHON) -m hyperplane bench $(BENCH_ARGS)

demo: install build ## the built-in default lab, traffic through it, then down
	hyperplane demo

down:
	hyperplane down

docs:               ## the documentation site into site/, strictly (a broken link fails)
	@$(PYTHON) -c 'import mkdocs, material, mkdocstrings' 2>/dev/null || $(PYTHON) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

cli-docs:           ## docs/cli.md regenerated from the parser (a unit test fails when it is stale)
	$(PYTHON) -m hyperplane.clidocs > docs/cli.md

docs-serve:         ## the site on http://127.0.0.1:8000/, rebuilt as pages change
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs serve

pictures:           ## docs/pictures/ redrawn from the reference model (graphviz dot, matplotlib)
	$(PYTHON) -m hyperplane.teach.pictures

top-screenshot:     ## docs/pictures/top-*.svg, .txt: `hyperplane top` under tmux following a curl (root)
	HP_TOP_SCREENSHOT=docs/pictures $(PYTHON) -m pytest -q tests/ns/test_top.py

sdist:
	$(PYTHON) -m pip install -q build && $(PYTHON) -m build --sdist

clean:
	rm -rf build dist site *.egg-info hyperplane/_core.c hyperplane/*.so
