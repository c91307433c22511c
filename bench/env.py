"""The environment a figure was measured in, stored beside every record, and the kernel path it
implies. Torch is imported only when an environment is taken (the git helpers and kernel_path serve
torch-free commands too).

Kernel path. CPU kernels are chosen per instruction set, so the same seed trains to the same bits
only on the same path (/work/shared/REFERENCES.md, "Reproducibility across CPUs"): ATen picks
`torch.backends.cpu.get_cpu_capability()` (capped by ATEN_CPU_CAPABILITY), oneDNN and MKL pick
their own kernels from the CPU's instruction-set flags and vendor, capped by ONEDNN_MAX_CPU_ISA
(DNNL_MAX_CPU_ISA) and MKL_ENABLE_INSTRUCTIONS (MKL_CBWR fixes MKL's path outright). oneDNN's
effective ISA is not exposed by torch, so the record holds what decides it: the CPU's flags, its
vendor and the caps set. The BLAS and oneDNN builds come from `torch.__config__.show()`. On CUDA
the GPU, its compute capability, CUDA, cuDNN and the TF32 / reduced-precision flags select the
kernels. KERNEL_PATH names the fields that must all match for two runs to be bit-comparable (the
thread count too: it changes the order of floating-point sums).
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import cache
from pathlib import Path

import seqbench

CODE = Path(seqbench.__file__).resolve().parent  # the folder the running package comes from


def output(*argv: str, cwd: Path = CODE, timeout: float = 30) -> str | None:
    """What a command prints (stripped), or None where it is missing or fails."""
    try:
        out = subprocess.run(argv, check=False, cwd=cwd, capture_output=True, text=True,
                             timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git(root: Path, *argv: str) -> str | None:
    """`git -C root ARGV...` output, or None outside a checkout (or without git)."""
    return output("git", "-C", str(root), *argv)


def _command(*argv: str) -> str | None:
    """First line a command prints, or None where it is missing, fails or prints nothing."""
    out = output(*argv, timeout=5)
    return out.splitlines()[0] if out else None


@cache
def _git_commit() -> str | None:
    return _command("git", "rev-parse", "HEAD")


@cache
def _gpu_driver() -> str | None:
    return _command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")


def _cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


# x86 and Arm CPU flags that oneDNN and MKL dispatch on (the rest of /proc/cpuinfo's flags do not
# select a floating-point kernel)
ISA_FLAGS = ("avx", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve",
             "sve2", "bf16", "i8mm")
# environment variables that cap (or fix) the CPU kernel path, recorded where set
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
            "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE")
# the record's env fields that select kernels: two runs are bit-comparable only when all match
KERNEL_PATH = ("device", "torch", "threads", "cpu_capability", "isa_caps", "cpu_vendor",
               "cpu_isa_flags", "blas", "blas_version", "onednn", "mkldnn", "gpu",
               "gpu_capability", "cuda", "cudnn", "tf32_matmul", "tf32_cudnn",
               "float32_matmul_precision", "fp16_reduced_precision", "bf16_reduced_precision")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity; os.cpu_count() where the platform
    has none), at least 1."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, len(cores) if cores is not None else os.cpu_count() or 1)


def kernel_path(env: dict) -> dict:
    """The fields of a stored environment that select its kernels (None where not recorded)."""
    return {name: env.get(name) for name in KERNEL_PATH}


@cache
def _cpuinfo() -> dict[str, str]:
    """The first value of each /proc/cpuinfo field ({} where there is none)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep:
                out.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return out


def cpu_isa(info: dict[str, str]) -> tuple[str | None, list[str]]:
    """(vendor, the ISA_FLAGS present) from /proc/cpuinfo fields (x86 `vendor_id` and `flags`, Arm
    `CPU implementer` and `Features`)."""
    flags = set((info.get("flags") or info.get("Features") or "").split())
    vendor = info.get("vendor_id") or info.get("CPU implementer")
    return vendor, [f for f in ISA_FLAGS if f in flags]


def build_info(show: str) -> dict:
    """BLAS, its version and oneDNN's version from `torch.__config__.show()` (None where absent)."""
    def find(pattern):
        m = re.search(pattern, show)
        return m.group(1) if m else None

    return {"blas": find(r"BLAS_INFO=(\w+)"),
            "blas_version": find(r"Math Kernel Library Version ([\w.]+)")
            or find(r"OpenBLAS ([\w.]+)"),
            "onednn": find(r"(?:MKL-DNN|oneDNN) v([\w.]+)")}


@cache
def _build_info() -> dict:
    import torch

    return build_info(torch.__config__.show())


def environment(device: str) -> dict:
    """Versions, hardware and the flags that change numerics or speed."""
    import torch

    env = {
        "seqbench": seqbench.__version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "device": device,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)},
        **_build_info(),
    }
    env["cpu_vendor"], env["cpu_isa_flags"] = cpu_isa(_cpuinfo())
    if device == "cuda":
        env |= {
            "gpu": torch.cuda.get_device_name(),
            "gpu_capability": "{}.{}".format(*torch.cuda.get_device_capability()),
            "gpu_driver": _gpu_driver(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "fp16_reduced_precision":
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
            "bf16_reduced_precision": getattr(
                torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", None),
        }
    return env
