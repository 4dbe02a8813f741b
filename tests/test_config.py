"""The presets: the readable ones build GPT-2's architecture (so a learner's model exports and
matches what the notebooks teach); the record ones may use the speed-run options."""

import pytest

from nanobard.config import PRESETS, ModelConfig
from nanobard.model.export import ExportError, check_gpt2_architecture

READABLE = ("quick", "seed", "gpu", "baby", "lesson")


@pytest.mark.parametrize("name", READABLE)
def test_readable_presets_build_gpt2s_architecture(name):
    m = PRESETS[name].model
    check_gpt2_architecture(m)  # raises for rotary, qk_norm or relu2
    assert (m.pos_encoding, m.activation, m.qk_norm, m.zero_init) == (
        "learned",
        "gelu",
        False,
        False,
    )


def test_the_fast_preset_is_the_lesson_model_with_rotary_positions_and_qk_norm():
    fast, lesson = PRESETS["fast"].model, PRESETS["lesson"].model
    assert fast.pos_encoding == "rotary" and fast.qk_norm and fast.qk_norm_type == "layer"
    with pytest.raises(ExportError, match="rotary"):
        check_gpt2_architecture(fast)
    same_shape = ("block_size", "n_layer", "n_head", "n_embd")
    assert [getattr(fast, k) for k in same_shape] == [getattr(lesson, k) for k in same_shape]
    assert set(PRESETS) >= {*READABLE, "fast", "cpu-10min"}
    assert ModelConfig().pos_encoding == "learned" and not ModelConfig().qk_norm  # the defaults


def test_finetune_config_refuses_an_empty_lora_layer_count():
    from nanobard.config import ConfigError, FinetuneConfig

    assert FinetuneConfig(lora_r=8, lora_layers=3).lora_layers == 3
    with pytest.raises(ConfigError, match="lora_layers must be at least 1"):
        FinetuneConfig(lora_r=8, lora_layers=0)


def test_finetune_config_refuses_lora_plus_below_1_or_without_adapters():
    from nanobard.config import ConfigError, FinetuneConfig

    assert FinetuneConfig(lora_r=8, lora_plus=16).lora_plus == 16
    with pytest.raises(ConfigError, match="lora_plus must be at least 1"):
        FinetuneConfig(lora_r=8, lora_plus=0.5)
    with pytest.raises(ConfigError, match="lora_plus needs LoRA adapters"):
        FinetuneConfig(lora_r=0, lora_plus=4)
