# make test   set up a fresh machine (venv, pinned torch, build) and run the tests
# make demo   the embedded default: SSL pretraining on Fashion-MNIST on the CPU
# make bench  the CPU loss microbenchmarks (writes benchmarks/results/cpu/)
# make science-sweep  train every cell of the CPU study still missing (hours; resumable), then science-report
# make docs-check  run the runnable code blocks of README.md and docs/*.md (make test runs them too)
# make cmake  build the ops with CMake into build-cmake/ and load them
# make wheel  build the wheel (dist/), check its CUDA archs and PTX
# make test-install  install that wheel (not editable) into a fresh venv and smoke-test it
# make test-torch211  build CPU+CUDA kernels against torch 2.11 (the GPU machine's) and run the op tests
# make test-emulated  the CUDA kernels on the CPU under the emulator's checks (docs/cuda.md)
# make fuzz   10,000 calls of every op with one bad argument, CPU build (python_tests/fuzz_ops.py)
# make fuzz-emulated  the same on the emulated CUDA build, under its memcheck
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The GPU machine runs torch 2.11; this pin is the local and CI environment.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
DEPS := numpy pytest hypothesis pyyaml tqdm matplotlib pillow ninja cmake setuptools wheel timm tensorboard webdataset \
	ruff clang-format
CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
export CUDA_HOME
# TORCH_CUDA_ARCH_LIST is left to setup.py: the visible GPU's arch, or without a GPU
# 8.0;9.0+PTX (docs/install.md). Set it in the environment to build for other GPUs.

.PHONY: venv build lint format science-sweep science-report test test-emulated fuzz fuzz-emulated emulated cmake bench bench-lightly demo docs-check clean wheel test-install test-torch211

venv: $(VENV)/.deps-installed
$(VENV)/.deps-installed: Makefile
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN) $(DEPS)
	touch $@

# Rebuilt only when a source, setup.py or pyproject.toml changed (a CUDA build takes minutes).
SSLEXT_SOURCES := $(shell find csrc -type f) setup.py pyproject.toml
build: $(VENV)/.sslext-built
$(VENV)/.sslext-built: $(VENV)/.deps-installed $(SSLEXT_SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import sslext, json; print('sslext build:', json.dumps(sslext.build_info()))"
	touch $@

cmake: venv
	TORCH_PREFIX=$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)'); \
	NVRTC=$$(ls $(VENV)/lib/python3*/site-packages/nvidia/cu1*/lib/libnvrtc.so.* 2>/dev/null | head -n1); \
	$(VENV)/bin/cmake -S . -B build-cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	  -DCMAKE_PREFIX_PATH="$$TORCH_PREFIX" \
	  $${CUDA_HOME:+-DCMAKE_CUDA_COMPILER=$$CUDA_HOME/bin/nvcc -DCUDA_TOOLKIT_ROOT_DIR=$$CUDA_HOME} \
	  $${NVRTC:+-DCUDA_nvrtc_LIBRARY=$$NVRTC} > build-cmake.log 2>&1 || { tail -40 build-cmake.log; exit 1; }
	$(VENV)/bin/cmake --build build-cmake -j $$(nproc) >> build-cmake.log 2>&1 || { tail -40 build-cmake.log; exit 1; }
	$(PY) -c "import torch; torch.ops.load_library('build-cmake/libsslext_ops.so'); \
	  print('cmake build loads:', torch.ops.sslext.build_info())"

# The emulated-CUDA build: csrc/cuda/*.cu compiled as host C++ against csrc/emu
# into sslext/_C_emu.so (needs GCC, no CUDA toolkit); SSLEXT_EMULATED=1 loads it.
emulated: sslext/_C_emu.so
sslext/_C_emu.so: $(VENV)/.deps-installed $(SSLEXT_SOURCES)
	$(VENV)/bin/cmake -S csrc/emu -B build-emu -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	  -DSSLEXT_PYTHON=$(abspath $(PY)) > build-emu.log 2>&1 || { tail -40 build-emu.log; exit 1; }
	$(VENV)/bin/cmake --build build-emu -j $$(nproc) >> build-emu.log 2>&1 || { tail -40 build-emu.log; exit 1; }

# Its parity tests compare with the CPU build, hence `build`.
test-emulated: build emulated
	SSLEXT_EMULATED=1 $(PY) -m pytest python_tests/emulated -q

# make test runs a 300-case sample of the fuzz (python_tests/test_fuzz.py); these run
# FUZZ_CASES, each op call in a worker process so that a crash is a failure, not a lost run.
FUZZ_CASES ?= 10000
fuzz: build
	SSLEXT_FUZZ_CASES=$(FUZZ_CASES) $(PY) -m pytest python_tests/test_fuzz.py -q -s -p no:cacheprovider

fuzz-emulated: build emulated
	SSLEXT_EMULATED=1 SSLEXT_FUZZ_CASES=$(FUZZ_CASES) $(PY) -m pytest python_tests/test_fuzz.py -q -s \
	  -p no:cacheprovider

# The formatting and lint gate: ruff (pyproject.toml) and clang-format (.clang-format).
CSRC := $(shell git ls-files 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'csrc/*.h' 2>/dev/null)
lint: $(VENV)/.deps-installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CSRC)

format: $(VENV)/.deps-installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CSRC)

test: lint build cmake emulated test-install
	$(PY) -m pytest python_tests -q
	SSLEXT_EMULATED=1 $(PY) -m pytest python_tests/emulated -q

# One build serves both packaging checks: the wheel is built once, its extension is
# checked for SASS/PTX, and that same file is what the fresh venv installs.
# build/lib.* is cleared first: setuptools copies modules into it without removing
# old ones, so a deleted module would otherwise ship in the wheel.
WHEEL_DIR := dist
SSLEXT_PY := $(shell find sslext -name '*.py') $(shell find configs -name '*.yaml')
wheel: $(WHEEL_DIR)/.built
$(WHEEL_DIR)/.built: $(VENV)/.deps-installed $(SSLEXT_SOURCES) $(SSLEXT_PY)
	rm -rf $(WHEEL_DIR) build/lib.*
	@echo "building the wheel (a CUDA build takes minutes)..."
	time $(PIP) wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) .
	EXPECT=$$([ -n "$$CUDA_HOME" ] && $(PY) -c 'import torch, sys; sys.exit(torch.version.cuda is None)' \
	  && echo --expect-cuda); \
	$(PY) python_tests/check_wheel_archs.py $(WHEEL_DIR)/sslext-*.whl $$EXPECT
	touch $@

# A fresh venv gets sslext only from the wheel (not editable). It sees $(VENV)'s
# site-packages through a .pth line so that torch (GBs) is not installed twice: a
# plain path line in a .pth only appends that directory to sys.path; the .pth files
# inside it are not processed, so the editable install of `make build` (activated
# by its own .pth) stays invisible there, and the fresh venv's own site-packages
# come first. The smoke test runs with `python -I` from an empty directory and
# fails unless sslext is imported from the fresh venv. pip installs without
# --no-deps and without an index, so the wheel's dependencies must be satisfied too.
test-install: wheel
	set -e; TMP=$$(mktemp -d); trap 'rm -rf "$$TMP"' EXIT; \
	$(PY) -m venv --without-pip "$$TMP/venv"; \
	SITE=$$("$$TMP/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$$SITE/sslext-test-deps.pth"; \
	$(PIP) --python "$$TMP/venv/bin/python" install -q --no-index $(WHEEL_DIR)/sslext-*.whl; \
	cd "$$TMP" && "$$TMP/venv/bin/python" -I $(abspath python_tests/install_smoke.py)

# The GPU machine runs torch 2.11 (TORCH_PIN above is newer): build the extension against
# it, CPU and CUDA kernels, the way benchmarks/gpu_check.sh does (pip install -e with
# SSLEXT_FORCE_CUDA=1), and run the core op tests on the CPU, so the first GPU run cannot
# fail on a build or API difference. PyPI's torch 2.11 wheel is the CUDA 13.0 build, so it
# matches nvcc 13. The build runs in a copy of the sources: its .so must not replace the
# one `make build` put into the source tree. Not a prerequisite of `test` (.ci/run runs it
# after); 290 s in a fresh clone on the 2-core build machine (docs/dev/testing.md).
VENV211 ?= .venv-torch211
TORCH211_PIN := torch==2.11.0
TORCH211_ARCHS ?= 9.0
$(VENV211)/.deps-installed: Makefile
	[ -x $(VENV211)/bin/python ] || python3 -m venv $(VENV211)
	$(VENV211)/bin/python -m pip install -q --upgrade pip
	$(VENV211)/bin/python -m pip install -q $(TORCH211_PIN) numpy pytest hypothesis pyyaml ninja setuptools wheel
	touch $@

test-torch211: $(VENV211)/.deps-installed
	set -e; PY211=$(abspath $(VENV211))/bin/python; TMP=$$(mktemp -d); \
	trap '$$PY211 -m pip uninstall -q -y sslext >/dev/null 2>&1; rm -rf "$$TMP"' EXIT; \
	git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$$TMP"; \
	cd "$$TMP"; \
	echo "building against $$($$PY211 -c 'import torch; print(torch.__version__)') (CUDA_HOME=$${CUDA_HOME:-none})..."; \
	time env $${CUDA_HOME:+SSLEXT_FORCE_CUDA=1} TORCH_CUDA_ARCH_LIST="$(TORCH211_ARCHS)" \
	  $$PY211 -m pip install -q --no-build-isolation --no-deps -e . > build.log 2>&1 || { tail -40 build.log; exit 1; }; \
	$$PY211 -c "import sslext, json; i = sslext.build_info(); print('torch 2.11 build:', json.dumps(i)); \
	  assert i['torch_version'].startswith('2.11.'), i; assert i['with_cuda'] == bool('$$CUDA_HOME'), i"; \
	$$PY211 -m pytest -q -p no:cacheprovider python_tests/test_ops.py python_tests/test_losses.py python_tests/test_compile.py

# lightly (a peer in the benchmark) lives in .bench-pkgs only, never in the test environment;
# its loss modules need nothing beyond torch.
bench: build
	[ -d .bench-pkgs/lightly ] || $(PIP) install -q --no-deps --target .bench-pkgs lightly
	PYTHONPATH=.bench-pkgs $(PY) benchmarks/bench_losses.py --device cpu --out benchmarks/results/cpu

# sslext.compat.lightly against the lightly release it mirrors: parity and CPU speedup.
bench-lightly: build
	[ -d .bench-pkgs/lightly ] || $(PIP) install -q --no-deps --target .bench-pkgs 'lightly==1.6.*'
	PYTHONPATH=.bench-pkgs $(PY) benchmarks/bench_lightly_compat.py --out benchmarks/results/cpu

STUDY := configs/sweeps/seed_question_cpu

# The whole CPU study, resumable: finished cells are skipped, so a stopped run picks up
# where it left off. Order matters: the tuning must finish before the best-lr sweep can
# be written (study lr --write-sweep refuses while tuning cells are left). Hours of CPU:
# run it under `nice -n 19` in the background (cells inherit the niceness; docs/sweeps.md).
science-sweep: build
	for s in "" _tune_val _methods; do $(PY) -m sslext.app.sweeps.run run $(STUDY)$$s.yaml --no-report || exit 1; done
	$(PY) -m sslext.app.sweeps.study lr --tuning $(STUDY)_tune_val.yaml --test $(STUDY).yaml \
	  --write-sweep $(STUDY)_best_lr.yaml --out benchmarks/results/science/study
	[ ! -f $(STUDY)_best_lr.yaml ] || $(PY) -m sslext.app.sweeps.run run $(STUDY)_best_lr.yaml --no-report
	for s in _budget10 _budget30; do $(PY) -m sslext.app.sweeps.run run $(STUDY)$$s.yaml --no-report || exit 1; done
	$(MAKE) science-report

# The CPU study's tables and plots from its committed cell records (no training):
# each sweep's own report, then the lr table (tuned on val, reported on test), the
# compare.pairs table and the budget trend (benchmarks/results/science/study/).
science-report: build
	for s in "" _tune_val _budget10 _budget30 _methods; do $(PY) -m sslext.app.sweeps.run report $(STUDY)$$s.yaml; done
	$(PY) -m sslext.app.sweeps.study lr --tuning $(STUDY)_tune_val.yaml --test $(STUDY).yaml \
	  $$([ -f $(STUDY)_best_lr.yaml ] && echo --test $(STUDY)_best_lr.yaml) \
	  --write-sweep $(STUDY)_best_lr.yaml --out benchmarks/results/science/study
	$(PY) -m sslext.app.sweeps.study pairs --sweep $(STUDY).yaml --out benchmarks/results/science/study
	$(PY) -m sslext.app.sweeps.study budget --sweep 3=$(STUDY).yaml --sweep 10=$(STUDY)_budget10.yaml \
	  --sweep 30=$(STUDY)_budget30.yaml --rows vicreg_tico_b09 vicreg_tico_b09_graph \
	  --out benchmarks/results/science/study

docs-check: build
	$(PY) python_tests/docs_check.py

# Fashion-MNIST: Debian's dataset-fashion-mnist if installed, else data/ (downloaded there
# once by torchvision when the network is reachable); no root needed.
demo: build
	$(PY) -m sslext.app.demo --compare-precision

clean:
	rm -rf build build-cmake build-cmake.log build-emu build-emu.log dist sslext/*.so *.egg-info
