"""Precision is decided in one place: bfloat16 only where it is native, unless asked for."""

import contextlib
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from nanobard import hardware
from nanobard.config import ModelConfig
from nanobard.hardware import CpuInfo, autocast_context, resolve_precision
from nanobard.model.gpt import GPT
from nanobard.train.optim import make_optimizer
from tests.fixtures import tcfg

AVX2 = CpuInfo(
    arch="x86_64", model="test", capability="AVX2", flags=("avx2",), onednn_max_isa="", threads=2
)
AVX512_BF16 = CpuInfo(
    arch="x86_64",
    model="test",
    capability="AVX512",
    flags=("avx2", "avx512f", "avx512_bf16"),
    onednn_max_isa="",
    threads=2,
)


@pytest.fixture
def cpu(monkeypatch):
    def use(info):
        monkeypatch.setattr(hardware, "cpu_info", lambda: info)
        hardware._warn_once.cache_clear()

    return use


def test_native_bf16_needs_the_flags_the_capability_and_onednn():
    assert AVX512_BF16.native_bf16 and AVX512_BF16.kind == "avx512-bf16"
    assert not AVX2.native_bf16 and AVX2.kind == "avx2"
    emulated = CpuInfo(**{**AVX512_BF16.__dict__, "capability": "AVX2", "onednn_max_isa": "AVX2"})
    assert not emulated.native_bf16 and emulated.kind == "avx2"
    capped = CpuInfo(**{**AVX512_BF16.__dict__, "onednn_max_isa": "AVX512_CORE"})
    assert not capped.native_bf16 and capped.kind == "avx512"
    amx = CpuInfo(**{**AVX512_BF16.__dict__, "flags": ("avx512f", "amx_bf16")})
    assert amx.native_bf16 and amx.kind == "amx"
    assert CpuInfo("aarch64", "m", "DEFAULT", ("asimd", "bf16"), "", 4).native_bf16
    assert not CpuInfo("aarch64", "m", "DEFAULT", ("asimd",), "", 4).native_bf16


def test_a_cpu_without_bf16_never_autocasts_to_bf16_unless_asked(cpu, caplog):
    cpu(AVX2)
    dev = torch.device("cpu")
    assert resolve_precision("auto", dev) == torch.float32
    assert isinstance(autocast_context(dev, "auto"), contextlib.nullcontext)
    assert tcfg().dtype == "auto"  # the default asks the hardware
    muon = make_optimizer(
        GPT(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)),
        tcfg(optimizer="muon"),
        dev,
    ).optimizers[0]
    assert muon.ns_dtype == torch.float32  # Newton-Schulz too
    with caplog.at_level(logging.WARNING, logger="nanobard.hardware"):
        # asked: it still runs
        assert resolve_precision("bfloat16", dev, "autocast") == torch.bfloat16
        resolve_precision("bfloat16", dev, "autocast")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "emulates bfloat16" in warnings[0]  # one line, saying why


def test_a_cpu_with_native_bf16_takes_it_for_auto(cpu, caplog):
    cpu(AVX512_BF16)
    dev = torch.device("cpu")
    assert resolve_precision("auto", dev) == torch.bfloat16
    assert isinstance(autocast_context(dev, "auto"), torch.autocast)
    assert resolve_precision("float32", dev) == torch.float32
    with caplog.at_level(logging.WARNING):
        resolve_precision("bfloat16", dev)
    assert caplog.records == []


def test_the_emulation_variables_switch_native_bf16_off():
    code = (
        "import json; from nanobard.hardware import cpu_info; "
        "print(json.dumps(cpu_info().as_dict()))"
    )
    env = {**hardware.emulation_env("avx2"), "PATH": "/usr/bin:/bin"}
    info = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["capability"] == "AVX2" and info["native_bf16"] is False and info["kind"] == "avx2"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("float16", "cpu")


def test_generation_precision_follows_the_memory_bound_rule(cpu):
    from nanobard.hardware import generation_dtype

    cpu(AVX2)  # decoding reads weights: bfloat16 pays even without native bfloat16 arithmetic
    assert generation_dtype("auto", "cpu") == torch.bfloat16
    assert (
        generation_dtype("float32", "cpu") == torch.float32
        and generation_dtype("int8", "cpu") == torch.int8
    )
    with pytest.raises(ValueError, match="int8 is for generating on a CPU"):
        generation_dtype("int8", "meta")


@pytest.mark.skipif(
    not hasattr(torch.backends.cuda, "cudnn_sdp_enabled"), reason="torch without cuDNN attention"
)
def test_decoding_on_cuda_keeps_cudnn_attention_out():
    from nanobard.hardware import decode_attention

    # nothing changes on a CPU
    assert isinstance(decode_attention(torch.device("cpu")), contextlib.nullcontext)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    # sets torch's flags only: no GPU needed to check them
    with decode_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_named_device_that_is_absent_is_refused_in_one_line():
    from nanobard.errors import ConfigError
    from nanobard.hardware import pick_device

    with pytest.raises(ConfigError, match="--device cuda: torch sees no CUDA GPU"):
        pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu") and pick_device("auto").type in ("cpu", "mps")


# a child that trains a little GPT and reports the page faults of its last steps
_FAULTS_CHILD = """
import json, resource, torch
from nanobard.config import ModelConfig
from nanobard.hardware import keep_freed_memory
from nanobard.model.gpt import GPT
kept = keep_freed_memory()
torch.manual_seed(0)
m = GPT(ModelConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=128))
x = torch.randint(0, 65, (8, 64))
for i in range(10):
    if i == 5:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    m(x, x).loss.backward()
f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
for i in range(6):  # a block above glibc's largest mmap threshold, as a pretrained model's logits
    if i == 2:
        g0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
g = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - g0
print(json.dumps({"kept": kept, "faults_per_step": f / 5, "faults_per_64mb": g / 4}))
"""


def _child_faults(env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if k != hardware.SYSTEM_MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", _FAULTS_CHILD], env={**base, **env},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_each_step():
    # with glibc's defaults this model's step faults ~1,300 pages in (the heap's top is trimmed
    # and grown again every step); kept, a step reuses what the last one freed
    kept = _child_faults({})
    assert kept["kept"] is True
    assert kept["faults_per_step"] < 300, kept  # 0-50 here
    assert kept["faults_per_64mb"] < 100, kept  # mmapped afresh it would be 16,384 pages
    assert _child_faults({hardware.SYSTEM_MALLOC_ENV: "1"})["kept"] is False
