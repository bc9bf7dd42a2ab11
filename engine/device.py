"""Which device trains, in which precision and with which attention kernels: one answer for
preflight, training and commands.

The decisions are pure functions of what the machine reports (``precision_for`` takes a compute
capability, ``attention_backends`` a config value, a capability and whether cuDNN attention was
proven here) so they are tested without a GPU; the few lines that ask CUDA itself stay next to
them and run only when the device is CUDA.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from engine.errors import ConfigError

ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"


def pick_device(choice: str) -> torch.device:
    """"auto": CUDA when there is a GPU, else the CPU; an explicit "cuda" without a GPU is an
    error (a run asked for a GPU must not train for days on the CPU by surprise)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[training] device = \"cuda\" but no CUDA device is available "
                          "(use \"auto\" or \"cpu\")")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def cpu_has_fast_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_for(choice: str, device_type: str, capability: tuple[int, int] | None = None,
                  fast_cpu_bf16: bool = False) -> str:
    """"fp32" | "bf16" | "fp16" for training.precision ``choice`` on a device.

    ``capability`` is the CUDA compute capability (major, minor). bf16 is native from sm80
    (Ampere) on; before that torch emulates it (slowly, and attention falls back to the math
    kernel), so "auto" takes fp16 with a GradScaler there, and an explicit "bf16" is refused.
    """
    cuda = device_type == "cuda"
    native_bf16 = capability is not None and tuple(capability) >= (8, 0)
    if choice == "auto":
        if cuda:
            return "bf16" if native_bf16 else "fp16"
        return "bf16" if fast_cpu_bf16 else "fp32"
    if choice == "fp16" and not cuda:
        raise ConfigError("[training] precision = \"fp16\" needs a CUDA device; on the CPU use "
                          "\"bf16\" or \"fp32\"")
    if choice == "bf16" and cuda and not native_bf16:
        major, minor = capability or (0, 0)
        raise ConfigError(f"[training] precision = \"bf16\": this GPU (compute capability "
                          f"{major}.{minor}) has no native bfloat16, which needs 8.0 or newer; "
                          "use \"fp16\" or \"auto\"")
    return choice


AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(choice: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """("fp32" | "bf16" | "fp16", autocast dtype or None) on this machine's ``device``."""
    capability = None
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
    fast_cpu = device.type == "cpu" and choice == "auto" and cpu_has_fast_bf16()
    precision = precision_for(choice, device.type, capability, fast_cpu)
    return precision, AMP_DTYPES[precision]


def enable_tf32(device: torch.device, precision: str) -> bool:
    """fp32 training on CUDA multiplies in TF32 (10-bit mantissa inputs, fp32 accumulation: what
    every fp32 recipe on Ampere and newer uses, several times faster). True when switched on."""
    if device.type != "cuda" or precision != "fp32":
        return False
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    return True


# training.attention -> the SDPA kernels allowed (None: torch chooses among all of them)
ATTENTION_CHOICES = ("auto", "math", "no-cudnn")
# cuDNN attention, preferred on H100/H200 (sm90+) by torch >= 2.11, has given NaN gradients with
# an explicit mask at some lengths (pytorch #196678), and nearly every training batch has padding
# and so a mask: there "auto" leaves cuDNN out until benchmarks/gpu_check.py has proven it on
# this GPU, torch and cuDNN, and recorded that in the proof file
CUDNN_RISK_CAPABILITY = (9, 0)
ATTENTION_PROOF_ENV = "TRANSFORMER_TUI_ATTENTION_PROOF"  # the proof file's path, if not the default


def attention_backends(choice: str, capability: tuple[int, int] | None = None,
                       cudnn_proven: bool = False) -> list | None:
    """The kernels ``choice`` allows on a CUDA device of ``capability`` (None: not CUDA)."""
    from torch.nn.attention import SDPBackend

    no_cudnn = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if choice == "auto":
        if capability is not None and tuple(capability) >= CUDNN_RISK_CAPABILITY \
                and not cudnn_proven:
            return no_cudnn
        return None
    if choice == "math":
        return [SDPBackend.MATH]
    if choice == "no-cudnn":
        return no_cudnn
    raise ConfigError(f"[training] attention = {choice!r}: one of {', '.join(ATTENTION_CHOICES)}")


def attention_proof_path(environ=os.environ) -> Path:
    """Where gpu_check.py records whether cuDNN attention passed on this machine."""
    if environ.get(ATTENTION_PROOF_ENV):
        return Path(environ[ATTENTION_PROOF_ENV]).expanduser()
    cache = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "transformer-tui" / "attention-proof.json"


def attention_proof_key(device: torch.device | int | None = None) -> dict[str, str]:
    """What a proof holds for: the GPU's name, torch and cuDNN (either may change the kernel)."""
    return {"gpu": torch.cuda.get_device_name(device), "torch": str(torch.__version__),
            "cudnn": str(torch.backends.cudnn.version())}


def cudnn_attention_proven(key: dict[str, str], path: Path | None = None) -> bool:
    """The proof file says cuDNN attention passed gpu_check.py for ``key`` (this machine)."""
    try:
        proof = json.loads((path or attention_proof_path()).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(proof, dict) and proof.get("passed") is True and proof.get("key") == key


def allowed_attention(choice: str, device: torch.device | None = None) -> list | None:
    """attention_backends on this machine: on CUDA (``device``, default the current one) with
    its capability and, on sm90+, its proof (a small file, read at each call)."""
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if choice != "auto" or not cuda:
        return attention_backends(choice)
    capability = tuple(torch.cuda.get_device_capability(device))
    proven = (capability >= CUDNN_RISK_CAPABILITY
              and cudnn_attention_proven(attention_proof_key(device)))
    return attention_backends(choice, capability, proven)


def attention_context(choice: str, device: torch.device | None = None):
    """The context every forward (and so its backward) runs in for training.attention."""
    backends = allowed_attention(choice, device)
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)


_allocator_set_here = False  # this process set PYTORCH_CUDA_ALLOC_CONF itself


def use_expandable_segments(environ=os.environ) -> str | None:
    """Before CUDA starts: let the allocator grow segments instead of caching blocks per batch
    shape (our batch shapes vary, which fragments the cache). Returns what to tell the user, or
    None when the user set PYTORCH_CUDA_ALLOC_CONF: theirs is kept."""
    global _allocator_set_here
    if environ is os.environ and _allocator_set_here:
        return _ALLOCATOR_NOTICE
    if ALLOC_CONF_ENV in environ:
        return None
    environ[ALLOC_CONF_ENV] = EXPANDABLE
    _allocator_set_here = _allocator_set_here or environ is os.environ
    return _ALLOCATOR_NOTICE


_ALLOCATOR_NOTICE = (f"CUDA allocator: {ALLOC_CONF_ENV}={EXPANDABLE} (variable batch shapes "
                     f"fragment the default cache; set {ALLOC_CONF_ENV} yourself to choose)")
