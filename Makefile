# make test   set up a fresh machine (venv, pinned torch, build) and run the tests
# make demo   the embedded default: SSL pretraining on Fashion-MNIST on the CPU
# make bench  the CPU loss microbenchmarks (writes benchmarks/results/cpu/)
# make cmake  build the ops with CMake into build-cmake/ and load them
# make test-emulated  the CUDA kernels on the CPU under the emulator's checks (docs/cuda.md)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The GPU machine runs torch 2.11; this pin is the local and CI environment.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
DEPS := numpy pytest hypothesis pyyaml tqdm matplotlib pillow ninja cmake setuptools wheel
CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
export CUDA_HOME
# Two archs keep a 2-core build within minutes; override for other GPUs.
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export TORCH_CUDA_ARCH_LIST

.PHONY: venv build test test-emulated emulated cmake bench demo clean

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

test: build cmake emulated
	$(PY) -m pytest python_tests -q
	SSLEXT_EMULATED=1 $(PY) -m pytest python_tests/emulated -q

# lightly (a peer in the benchmark) lives in .bench-pkgs only, never in the test environment;
# its loss modules need nothing beyond torch.
bench: build
	[ -d .bench-pkgs/lightly ] || $(PIP) install -q --no-deps --target .bench-pkgs lightly
	PYTHONPATH=.bench-pkgs $(PY) benchmarks/bench_losses.py --device cpu --out benchmarks/results/cpu

demo: build
	@if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  echo "Installing Debian's dataset-fashion-mnist (needs root)..."; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist); \
	fi
	$(PY) -m sslext.demo

clean:
	rm -rf build build-cmake build-cmake.log build-emu build-emu.log sslext/*.so *.egg-info
