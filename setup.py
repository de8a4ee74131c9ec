"""Build of the sslext extension (sslext._C).

CUDA kernels are compiled whenever nvcc and a CUDA build of torch are present,
whether or not a GPU is visible, so a GPU-less build host still ships them.

Environment:
  SSLEXT_FORCE_CUDA=1   require the CUDA kernels (fail loudly if nvcc is missing)
  SSLEXT_FORCE_CPU=1    build the CPU kernels only
  TORCH_CUDA_ARCH_LIST  target architectures (default: the visible GPU's; without one 8.0;9.0+PTX)
  MAX_JOBS              parallel compile jobs (default: from cores and memory)

nvcc's CUDA major version must be torch's (torch.version.cuda): a mismatch stops
the build at once with both versions named, instead of failing deep in nvcc's log.
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import torch
from setuptools import setup
from setuptools.command.build_py import build_py
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
# SASS for A100 (sm_80, which also runs on every 8.x GPU) and H100/H200 (sm_90); +PTX
# embeds compute_90 PTX that the driver JIT-compiles on GPUs newer than 9.0
# (Blackwell), so a wheel built today still loads its kernels there.
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _nvcc():
    home = cpp_extension.CUDA_HOME
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _want_cuda():
    if _env_flag("SSLEXT_FORCE_CPU"):
        return False
    nvcc = _nvcc()
    if _env_flag("SSLEXT_FORCE_CUDA"):
        if torch.version.cuda is None:
            raise RuntimeError(
                "SSLEXT_FORCE_CUDA=1 but the installed torch is a CPU-only build "
                f"({torch.__version__}); install a CUDA build of torch first."
            )
        if nvcc is None:
            raise RuntimeError(
                "SSLEXT_FORCE_CUDA=1 but nvcc was not found: set CUDA_HOME to the "
                "CUDA toolkit (e.g. CUDA_HOME=/usr/local/cuda) or put nvcc on PATH."
            )
        return True
    return torch.version.cuda is not None and nvcc is not None


def _nvcc_version(nvcc):
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    for token in out.replace(",", " ").split():
        if token.startswith("V") and token[1:2].isdigit():
            return token[1:]
    return ""


def cuda_version_mismatch(nvcc_version, torch_cuda, nvcc="nvcc"):
    """The message that stops a build whose nvcc major version is not torch's, else None."""
    if not nvcc_version or not torch_cuda:
        return None
    have, want = nvcc_version.split(".")[0], torch_cuda.split(".")[0]
    if have == want:
        return None
    return (
        f"sslext: {nvcc} is CUDA {nvcc_version}, but torch {torch.__version__} was built with CUDA "
        f"{torch_cuda}; the CUDA kernels need a toolkit of the same major version. Either point CUDA_HOME "
        f"(or PATH) at a CUDA {want}.x toolkit, or build the CPU kernels only with SSLEXT_FORCE_CPU=1."
    )


def _default_max_jobs():
    # nvcc with the torch headers takes ~1.5 GB per job; never more jobs than cores.
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8
    return max(1, min(cores, int(mem_gb // 2)))


def extensions():
    with_cuda = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    define_macros = [("SSLEXT_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden"]
    extra = {"cxx": cxx_flags}
    if with_cuda:
        problem = cuda_version_mismatch(_nvcc_version(_nvcc()), torch.version.cuda, _nvcc())
        if problem:
            raise RuntimeError(problem)
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        if not archs:
            major, minor = torch.cuda.get_device_capability()
            archs = f"{major}.{minor}"
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros += [
            ("SSLEXT_WITH_CUDA", None),
            ("SSLEXT_CUDA_ARCHS", f'"{archs}"'),
            ("SSLEXT_CUDA_VERSION", f'"{_nvcc_version(_nvcc())}"'),
        ]
        extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    os.environ.setdefault("MAX_JOBS", str(_default_max_jobs()))
    return [
        ext_cls(
            name="sslext._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc", "include")],
            define_macros=define_macros,
            extra_compile_args=extra,
            py_limited_api=False,
        )
    ]


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension with one object directory for every kind of build.

    An editable install compiles in a fresh temporary directory each time, so
    `make build` (editable) and `make wheel` would each compile the CUDA kernels
    from scratch (minutes). With the objects always in build/temp.<platform>-<python>,
    ninja recompiles only what changed, and an unchanged compile command reuses
    the object another kind of build left there.
    """

    def finalize_options(self):
        super().finalize_options()
        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        self.build_temp = os.path.join(ROOT, "build", f"temp.{tag}")


class BuildPy(build_py):
    """Also copies configs/ (every recipe and sweep file) into the package as
    sslext/_configs, so an installed sslext runs a shipped config by name from
    any folder (sslext.app.config.resolve_config_path); a source checkout reads
    configs/ itself."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "sslext", "_configs")
        for src in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True):
            out = os.path.join(dest, os.path.relpath(src, os.path.join(ROOT, "configs")))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copyfile(src, out)


# pip (setuptools.build_meta) and `python setup.py` both run this file as __main__;
# python_tests/test_packaging.py loads it under another name to test its checks.
if __name__ == "__main__":
    setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtension, "build_py": BuildPy},
    )
