"""What this machine computes fast, decided in one place.

Every path that chooses a precision asks here: training autocast, Muon's orthogonalisation,
fine-tuning, generation ``--dtype``, the benchmarks. ``"auto"`` means "bfloat16 where it is native,
float32 elsewhere":

- **CPU**: bfloat16 matrix multiplication is native only with AVX-512 BF16 or AMX (x86) or the
  Armv8.6 BF16 extension. Without it torch emulates bfloat16: on an AVX2-only CPU a 1024² bfloat16
  matmul runs at ~1 GFLOP/s against ~70 in float32, so ``auto`` must never pick it there.
  ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` (used to emulate an older CPU) are honoured.
- **CUDA**: bfloat16 where the GPU supports it (Ampere and newer).
- **MPS** (Apple GPUs): float32; bfloat16 support depends on the macOS version and gains little at
  these model sizes.

An explicit ``bfloat16`` on a device without native support still runs, after one warning line.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from nanobard.errors import ConfigError, NanobardError

logger = logging.getLogger(__name__)

_sdpa_kernel: Callable[..., contextlib.AbstractContextManager] | None
try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as _sdpa_kernel

    _DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
except ImportError:  # pragma: no cover
    _sdpa_kernel = None


Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
_FLAGS_OF_INTEREST = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "amx_bf16",
    "amx_tile",
    "bf16",
    "asimd",
    "sve",
)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch will use it."""

    arch: str  # x86_64, aarch64, arm64
    model: str  # the marketing name, where the OS says
    capability: str  # torch.backends.cpu.get_cpu_capability(): AVX512, AVX2, DEFAULT, ...
    flags: tuple[
        str, ...
    ]  # the instruction-set flags that decide precision (subset of /proc/cpuinfo)
    onednn_max_isa: str  # $ONEDNN_MAX_CPU_ISA, or "" when unset
    threads: int  # torch intra-op threads

    @property
    def native_bf16(self) -> bool:
        """Does this CPU multiply bfloat16 matrices in hardware, as torch is configured here?"""
        if self.arch in ("aarch64", "arm64"):
            return "bf16" in self.flags
        if not ("avx512_bf16" in self.flags or "amx_bf16" in self.flags):
            return False
        if not self.capability.upper().startswith("AVX512"):  # e.g. ATEN_CPU_CAPABILITY=avx2
            return False
        isa = self.onednn_max_isa.upper()
        return isa in ("", "ALL", "DEFAULT") or any(
            k in isa for k in ("BF16", "AMX", "FP16", "AVX10")
        )

    @property
    def kind(self) -> str:
        """A short name for benchmark tables: avx512-bf16, avx512, avx2, arm64-bf16, ..."""
        if self.arch in ("aarch64", "arm64"):
            return "arm64-bf16" if self.native_bf16 else "arm64"
        cap = self.capability.lower()
        if self.native_bf16:
            return "amx" if "amx_bf16" in self.flags else "avx512-bf16"
        if cap.startswith("avx512"):
            return "avx512"
        return cap or "unknown"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "native_bf16": self.native_bf16, "kind": self.kind}


def _cpu_flags_and_model() -> tuple[tuple[str, ...], str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # macOS, Windows: no /proc
        return (), platform.processor() or platform.machine()
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return tuple(f for f in _FLAGS_OF_INTEREST if f in flags), model or platform.machine()


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU, read once per process."""
    flags, model = _cpu_flags_and_model()
    return CpuInfo(
        arch=platform.machine().lower(),
        model=model,
        capability=torch.backends.cpu.get_cpu_capability(),
        flags=flags,
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        threads=torch.get_num_threads(),
    )


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, then Apple MPS, else CPU. A device named but absent is refused
    here, in one line, rather than by the first tensor sent to it."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:  # torch's message lists every backend it was built to know
            raise ConfigError(
                f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                "use --device auto or cpu"
            )
        if device.type == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ):
            raise ConfigError(
                f"--device {name}: Apple's MPS backend is not available here; "
                "use --device auto or cpu"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device: torch.device | str) -> bool:
    """Is bfloat16 compute native (fast) on this device?"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_info().native_bf16
    return False  # mps and others: float32


def _why_not_bf16(device: torch.device) -> str:
    if device.type == "cpu":
        c = cpu_info()
        return (
            f"this CPU ({c.kind}, torch capability {c.capability}) has no AVX-512 BF16 or AMX, "
            "so torch emulates bfloat16: matmuls run tens of times slower than float32"
        )
    return f"{device.type} has no fast bfloat16 here"


@functools.cache
def _warn_once(device_type: str, what: str) -> None:
    logger.warning(
        "bfloat16 %s was asked for, but %s; use auto or float32 unless you are testing this",
        what,
        _why_not_bf16(torch.device(device_type)),
    )


def resolve_precision(
    requested: str, device: torch.device | str, what: str = "compute"
) -> torch.dtype:
    """``auto`` / ``float32`` / ``bfloat16`` -> the torch dtype to use on ``device``.

    ``what`` names the use in the one-line warning an explicit, non-native ``bfloat16`` gets.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    if requested == "float32":
        return torch.float32
    if requested == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if not native_bf16(device):
        _warn_once(device.type, what)
    return torch.bfloat16


GENERATION_PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "int8")


def scoring_dtype(device: torch.device | str) -> torch.dtype:
    """The matmuls' precision for scoring a pretrained model (bits per character): bfloat16 where
    the device runs it natively (AMX, AVX-512 BF16, a GPU with bf16), float32 elsewhere (emulated
    bfloat16 is slower). Measured on an AMX Xeon, SmolLM2-135M on 20,000 characters: 13.3 s in
    float32, 5.6 s under bfloat16 autocast, 1.6041 vs 1.6043 bits/char."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def generation_dtype(requested: str, device: torch.device | str) -> torch.dtype:
    """The weights' precision for generating text (``torch.int8``: weight-only int8, quantize.py).

    Generating one token multiplies a vector by every weight matrix once: on a CPU that is bound
    by reading the weights, not by arithmetic, so bfloat16 weights (half the bytes) are faster on
    any CPU, native bfloat16 or not (measured: 10.7M model, 500 tokens, 188 -> 388 tokens/s with
    AVX2 only, 187 -> 313 with AVX-512 BF16; the issue's AVX2 laptop: 133 -> 182), and int8
    (a quarter of the bytes) faster still. ``auto`` is bfloat16 on a CPU and on a GPU that has
    it, float32 elsewhere; ``float32`` (the CLI's default) gives the same text on every machine."""
    device = torch.device(device)
    if requested not in GENERATION_PRECISIONS:
        raise ConfigError(
            f"--dtype must be one of {', '.join(GENERATION_PRECISIONS)}, got {requested!r}"
        )
    if requested == "int8":
        if device.type != "cpu":
            raise ConfigError("--dtype int8 is for generating on a CPU; on a GPU use bfloat16")
        return torch.int8
    if requested == "auto":
        return torch.bfloat16 if device.type == "cpu" or native_bf16(device) else torch.float32
    return torch.float32 if requested == "float32" else torch.bfloat16


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when ``precision`` resolves to bfloat16 on ``device``, else nothing."""
    if resolve_precision(precision, device, "autocast") == torch.bfloat16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decode_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """Attention kernels for decoding one token at a time (the key length grows by one per token).

    On CUDA, torch may pick cuDNN's attention for bfloat16, which builds an execution plan for each
    new shape: measured on an H200 (torch 2.11), the 10.7M model decoded 35 tokens/s with bfloat16
    weights against 574 in float32, and the bfloat16 process held 450 MB more host memory (cuDNN's
    libraries). Decoding therefore asks for flash / memory-efficient / math kernels only. This
    remedy is reasoned from those two measurements, not yet re-measured on a GPU."""
    if device.type != "cuda" or _sdpa_kernel is None:
        return contextlib.nullcontext()
    return _sdpa_kernel(_DECODE_BACKENDS)


def attention_precision(q: torch.Tensor) -> contextlib.AbstractContextManager:
    """Scaled dot-product attention on a CPU runs in float32, autocast or not: torch's CPU flash
    attention is 2-3x slower in bfloat16 than in float32 at the sizes trained here (forward +
    backward, batch 16 x 4 heads x 64 positions: 6.7 ms against 2.2 ms on an AVX-512 BF16 CPU), so
    the caller casts q, k, v to float32 inside this context, which keeps autocast from casting them
    back. Elsewhere (CUDA, MPS) attention follows the model's precision."""
    if q.is_cpu and torch.is_autocast_enabled("cpu"):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# host memory

SYSTEM_MALLOC_ENV = "NANOBARD_SYSTEM_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # the most glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep the memory a training step frees for the next step, instead of handing
    it back to the kernel and faulting fresh, zeroed pages in at the next one.

    A step frees and re-allocates every activation. With glibc's defaults the heap's top is
    trimmed when enough of it is free, so each step pays page faults again: ~2,800 a step for
    a 2 x 192 model at batch 8 x 128, almost none after this call. Measured on a 2-core Intel
    Xeon with AMX (``benchmarks/profile_step.py --phases``, bfloat16, three alternating rounds):
    ``cpu-10min`` 82.6 -> 77.9 ms a step, ``quick`` 44.9 -> 43.3 ms (medians). The cost: the
    process keeps the memory it freed (up to 1 GiB at the heap's top) instead of returning it:
    ``finetune_stage.py``'s peak 3.28 -> 3.56 GB, with 40 -> 51 steps in its 150 s (13.7M page
    faults -> 0.87M). Called by the commands that train, the benchmark scripts and the
    notebooks' ``start()``, never at import, nor by ``nanobard serve``; only where the
    C library is glibc (a no-op on macOS, Windows, musl), and not when
    ``NANOBARD_SYSTEM_MALLOC=1``. Returns whether the setting was made."""
    if os.environ.get(SYSTEM_MALLOC_ENV) == "1" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: a trim threshold alone freezes it at 128 KiB, and then every
    # activation is mmapped afresh (2.2x slower steps, measured)
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return False
    # and no mmap at all, so blocks above 32 MiB (a pretrained model's logits: 4 x 256 tokens x
    # 49,152 in float32 is 200 MB) come from the kept heap too; glibc still falls back to mmap
    # when the heap cannot grow
    mallopt(_M_MMAP_MAX, 0)
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def describe(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Everything a benchmark table or a report needs to say which machine produced a number."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cpu": cpu_info().as_dict(),
        "cpu_count": os.cpu_count(),
        "native_bf16": native_bf16(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def emulation_env(kind: str) -> dict[str, str]:
    """Environment variables that make torch behave like an older CPU (``avx2``: no AVX-512, so no
    native bfloat16). Checked by measuring: a bfloat16 matmul becomes ~100x slower under them."""
    if kind != "avx2":
        raise ValueError(f"can only emulate 'avx2', not {kind!r}")
    return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


# --------------------------------------------------------------------------------------------
# out of memory


class OutOfMemory(NanobardError):
    """An allocation the device refused; the message says how much and which flags lower it."""

    exit_code = 1

    def __init__(self, what: str, lower: str = "") -> None:
        self.what = what
        super().__init__(f"{what}; {lower}" if lower else what)

    def with_hint(self, lower: str) -> OutOfMemory:
        """The same failure with a caller's own flags to lower it (the study's)."""
        return OutOfMemory(self.what, lower)


_UNITS = {"b": 1, "bytes": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}  # fmt: skip
# "you tried to allocate 68719476736 bytes" (CPU), "Tried to allocate 2.00 GiB" (CUDA, MPS)
_ASKED = re.compile(
    r"(?:tried to|unable to) allocate\s+([\d.]+)\s*(bytes|[KMGT]i?B|B)\b", re.IGNORECASE
)


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def _memory_of(device: torch.device | str) -> str:
    """How much memory the device has and has free, for the message ('' when unknown)."""
    kind = torch.device(device).type
    try:
        if kind == "cuda":
            free, total = torch.cuda.mem_get_info(torch.device(device))
        else:  # the CPU (and MPS, which shares it): the kernel's own count
            fields = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
            total = int(fields["MemTotal"].split()[0]) * 1024
            free = int(fields["MemAvailable"].split()[0]) * 1024
    except Exception:  # noqa: BLE001 - no figure is better than a second error in the message
        return ""
    return f"it has {_gib(total)}, {_gib(free)} free now"


def out_of_memory(exc: BaseException, device: torch.device | str, lower: str) -> OutOfMemory | None:
    """A one-line ``OutOfMemory`` for an exception that is an allocation the device refused (the
    CPU allocator's "can't allocate memory", CUDA's and MPS's out of memory, Python's and NumPy's
    MemoryError); None for anything else. ``device``: where the work ran (the message's own words
    win: a CPU allocation can fail in a CUDA run). ``lower``: the flags that lower the memory
    needed, with their values."""
    text = str(exc)
    if not (
        isinstance(exc, (torch.OutOfMemoryError, MemoryError))
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
    ):
        return None
    m = _ASKED.search(text)
    asked = f" of {_gib(float(m.group(1)) * _UNITS[m.group(2).lower()])}" if m else ""
    if "CUDA" in text:
        device = device if torch.device(device).type == "cuda" else "cuda"
    elif "MPS" in text:
        device = "mps"
    elif "DefaultCPUAllocator" in text or isinstance(exc, MemoryError):
        device = "cpu"
    where = "the CPU" if torch.device(device).type == "cpu" else str(device)
    mem = _memory_of(device)
    return OutOfMemory(
        f"out of memory: an allocation{asked} on {where} failed{f' ({mem})' if mem else ''}", lower
    )
