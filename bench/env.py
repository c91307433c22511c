"""The environment a figure was measured in, stored beside every record. Torch is imported only
when an environment is taken (the git helpers here serve torch-free commands too)."""
from __future__ import annotations

import os
import platform
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


@cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    }
    if device == "cuda":
        env |= {
            "gpu": torch.cuda.get_device_name(),
            "gpu_driver": _gpu_driver(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return env
