import pytest
import torch

from nanobard.config import ConfigError
from nanobard.model.sampling import (
    HFDecoder,
    SamplingConfig,
    filter_logits,
    generate_ids,
    pick_token,
    sampling_probs,
    stream_text,
)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert torch.isinf(filter_logits(logits, top_k=2)[2:]).all()
    assert not torch.isinf(filter_logits(logits, top_k=2)[:2]).any()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.25 >= 0.7
    assert (~torch.isinf(filter_logits(logits, top_p=0.1))).tolist() == [True, False, False, False]


def test_greedy_and_seeded_sampling():
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert pick_token(logits, SamplingConfig(temperature=0.0), torch.Generator()) == 1
    cfg = SamplingConfig(temperature=1.0, seed=5)
    a = [pick_token(logits, cfg, torch.Generator().manual_seed(5)) for _ in range(20)]
    b = [pick_token(logits, cfg, torch.Generator().manual_seed(5)) for _ in range(20)]
    assert a == b
    # at a very low temperature sampling becomes greedy
    g = torch.Generator().manual_seed(0)
    assert {pick_token(logits, SamplingConfig(temperature=0.01), g) for _ in range(50)} == {1}


def test_sampling_probs_is_the_distribution_pick_token_draws_from():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    cfg = SamplingConfig(temperature=2.0, top_k=3)
    probs = sampling_probs(logits, cfg)
    assert probs[3] == 0 and abs(probs.sum().item() - 1) < 1e-6
    want = torch.softmax(logits[:3] / 2.0, -1)
    assert torch.allclose(probs[:3], want)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([pick_token(logits, cfg, g) for _ in range(3000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.03)
    tied = torch.log(torch.tensor([0.4, 0.2, 0.2, 0.2]))  # top-2 keeps all three tied at 0.2
    g = torch.Generator().manual_seed(0)
    drawn = {pick_token(tied, SamplingConfig(top_k=2), g) for _ in range(300)}
    assert drawn == {0, 1, 2, 3} and sampling_probs(tied, SamplingConfig(top_k=2)).min() > 0
    greedy = sampling_probs(logits, SamplingConfig(temperature=0.0))
    assert greedy.tolist() == [1.0, 0.0, 0.0, 0.0]
    coldest = sampling_probs(logits * 30, SamplingConfig(temperature=0.01))
    assert torch.isfinite(coldest).all() and coldest[0] == 1.0
    with pytest.raises(ConfigError, match="at least 0.01"):
        SamplingConfig(temperature=1e-39)  # logits / 1e-39 would be inf: NaN probabilities


def test_stream_text_waits_for_complete_utf8():
    pieces = {1: b"\xe2", 2: b"\x82", 3: b"\xac", 4: b"!"}
    decode = lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")  # noqa: E731
    assert list(stream_text(decode, iter([1, 2, 3, 4]))) == ["€", "!"]


class _NoCache:
    """Re-runs the whole sequence every step: the reference for the cached decoder."""

    def __init__(self, model):
        self.model, self.ids = model, []

    def start(self, ids):
        self.ids = list(ids)
        return self.model(input_ids=torch.tensor([self.ids])).logits[0, -1]

    def advance(self, tok):
        self.ids.append(tok)
        return self.model(input_ids=torch.tensor([self.ids])).logits[0, -1]


def test_hf_decoder_cache_matches_full_recompute():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=60, n_positions=64)
    ).eval()
    for cfg in (
        SamplingConfig(temperature=0.0),
        SamplingConfig(temperature=1.0, top_p=0.9, seed=2),
    ):
        a = list(generate_ids(HFDecoder(m), [5, 6, 7], 20, cfg))
        b = list(generate_ids(_NoCache(m), [5, 6, 7], 20, cfg))
        assert a == b


def test_several_strategies_of_one_prompt_decode_in_one_batch_as_one_by_one():
    """complete_many: each row its own config and seeded generator, the same picks as
    TextGenerator.complete (past the context too, where both restart from the last half), and a
    row that meets a stop id stops while the others go on."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanobard.model.sampling import STRATEGIES, TextGenerator, complete_many

    torch.manual_seed(0)
    m = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=60, n_positions=16)
    ).eval()
    batches = []

    class Counting(HFDecoder):
        def _run_rows(self, rows):
            batches.append(len(rows))
            return super()._run_rows(rows)

    def gen(stop=None):
        return TextGenerator("tiny", lambda s: [ord(c) % 60 for c in s], lambda ids: ",".join(
            map(str, ids)), lambda: HFDecoder(m), stop, lambda: Counting(m))  # fmt: skip

    cfgs = [STRATEGIES["greedy"], STRATEGIES["top_k"], STRATEGIES["temperature"]]
    one_by_one = [gen().complete("ROMEO:", 30, c) for c in cfgs]
    assert complete_many(gen(), [("ROMEO:", c) for c in cfgs], 30) == one_by_one
    assert set(batches) == {3} and len(batches) == 30  # 30 tokens, 30 passes of 3 rows
    stop = int(one_by_one[1].split(",")[4])  # the top-k row's fifth token stops it
    stopped = complete_many(gen({stop}), [("ROMEO:", c) for c in cfgs], 30)
    assert stopped == [gen({stop}).complete("ROMEO:", 30, c) for c in cfgs]
    assert len(stopped[1].split(",")) <= 5 < len(stopped[0].split(","))
    firsts = {int(t.split(",")[0]) for t in one_by_one}  # every row stops at once
    batches.clear()
    assert complete_many(gen(firsts), [("ROMEO:", c) for c in cfgs], 30) == [
        gen(firsts).complete("ROMEO:", 30, c) for c in cfgs
    ]
    assert len(batches) == 1  # no pass after the last row stopped


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompts_of_unequal_length_decode_in_one_batch_as_one_by_one(arch):
    """complete_many over several prompts: the shorter ones left-padded, the padding masked out
    and their positions counted from their own first token, so each row picks what it picks
    alone (float32), in one pass per token for all the rows."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from nanobard.model.sampling import STRATEGIES, TextGenerator, complete_many

    torch.manual_seed(0)
    if arch == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=60))
    else:
        m = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    m.eval()
    batches = []

    class Counting(HFDecoder):
        def _run_rows(self, rows):
            batches.append(len(rows))
            return super()._run_rows(rows)

    gen = TextGenerator("tiny", lambda s: [ord(c) % 60 for c in s], lambda ids: ",".join(
        map(str, ids)), lambda: HFDecoder(m), None, lambda: Counting(m))  # fmt: skip
    rows = [(p, STRATEGIES[s]) for p in ("ROMEO:\n", "To be, or not", "K") for s in
            ("greedy", "top_k", "temperature")]  # fmt: skip
    got = complete_many(gen, rows, 12)
    assert got == [gen.complete(p, 12, c) for p, c in rows]
    assert batches == [9] * 12  # the prompts together, then one pass per token
