import os

import pytest
import torch

from nanobard.hf.pretrained import (
    EMBEDDED,
    PretrainedError,
    choose,
    embedded_gguf_path,
    load_pretrained,
)


def test_auto_without_hub_picks_the_embedded_model(monkeypatch):
    monkeypatch.setattr("nanobard.hf.pretrained.in_hf_cache", lambda repo: False)
    name, reason = choose("auto")
    assert name == EMBEDDED and "HF_HUB_OFFLINE" in reason


def test_auto_prefers_cached_gpt2(monkeypatch):
    monkeypatch.setattr("nanobard.hf.pretrained.in_hf_cache", lambda repo: repo == "gpt2")
    assert choose("auto")[0] == "gpt2"


def test_explicit_gpt2_offline_is_a_one_line_error():
    with pytest.raises(PretrainedError) as e:
        load_pretrained("gpt2")
    msg = str(e.value)
    assert "\n" not in msg and EMBEDDED in msg and "local" in msg


def test_incomplete_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PretrainedError, match="incomplete: missing model.safetensors"):
        load_pretrained(str(tmp_path))


def test_embedded_gguf_is_installed():
    p = embedded_gguf_path()
    assert p.name.endswith(".gguf") and p.stat().st_size > 90_000_000


@pytest.mark.slow
def test_embedded_model_loads_scores_and_generates():
    from nanobard.hf.pretrained import hf_generator
    from nanobard.model.evaluate import score_hf
    from nanobard.model.sampling import SamplingConfig

    pre = load_pretrained(EMBEDDED)  # the first call in a session dequantizes into the cache
    assert 134_000_000 < pre.num_params < 135_000_000
    from nanobard.hf.pretrained import _load_gguf, embedded_folder

    assert embedded_folder().startswith(os.environ["NANOBARD_CACHE"])
    direct, tok = _load_gguf(embedded_gguf_path())  # what loading the GGUF file itself gives
    ids = tok("To be, or not to be", return_tensors="pt").input_ids
    assert (
        ids.tolist() == pre.tokenizer("To be, or not to be", return_tensors="pt").input_ids.tolist()
    )
    with torch.no_grad():
        # the cached folder is the same model
        assert torch.equal(direct(ids).logits, pre.model(ids).logits)
    assert not getattr(pre.model, "is_quantized", False)  # dequantized: trainable
    s = score_hf(
        pre.model, pre.tokenizer, "To be, or not to be, that is the question. " * 4, "smollm2"
    )
    # a real pretrained model, far below uniform (~15 bits/token)
    assert 0.2 < s.bits_per_char < 3.0
    text = hf_generator(EMBEDDED, loaded=pre).complete(
        "The capital of France is", 6, SamplingConfig(temperature=0)
    )
    assert "Paris" in text
