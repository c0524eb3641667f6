import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

from quadapter.evaluation import perplexity, strided_windows


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).eval()


def reference_perplexity(model, ids, context, stride):
    """HF guide's loop, one window at a time, summing exact per-token NLLs with log_softmax."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        trg_len = end - prev_end
        window = ids[begin:end].unsqueeze(0)
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0, :-1].double(), dim=-1)
        targets = window[0, 1:]
        token_nll = -logp.gather(1, targets[:, None])[:, 0]
        scored = token_nll[-trg_len:] if begin > 0 else token_nll
        nll += scored.sum().item()
        count += len(scored)
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


@pytest.mark.parametrize("n,context,stride,batch", [(300, 64, 64, 4), (300, 64, 32, 3), (257, 64, 17, 8),
                                                    (50, 64, 64, 2), (129, 32, 1, 16)])
def test_matches_naive_window_loop(model, n, context, stride, batch):
    ids = torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(n))
    ppl, scored = perplexity(model, ids, context, stride, batch_size=batch)
    ref_ppl, ref_scored = reference_perplexity(model, ids, context, stride)
    assert scored == ref_scored
    assert ppl == pytest.approx(ref_ppl, rel=1e-6)


@pytest.mark.parametrize("context,stride", [(64, 64), (64, 16), (64, 47)])
def test_the_head_runs_only_where_a_token_is_scored(model, context, stride):
    ids = torch.randint(0, 97, (300,), generator=torch.Generator().manual_seed(2))
    rows = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: rows.append(out.shape[:-1].numel()))
    try:
        _, scored = perplexity(model, ids, context, stride, batch_size=4)
    finally:
        hook.remove()
    assert sum(rows) == scored


class IgnoresLogitsToKeep(torch.nn.Module):
    """A causal LM outside transformers: returns logits for every position whatever it is asked."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, **kwargs):
        return self.model(ids)


def test_a_model_without_logits_to_keep_gives_the_same_result(model):
    ids = torch.randint(0, 97, (300,), generator=torch.Generator().manual_seed(3))
    (ppl, scored), (ref, ref_scored) = (perplexity(m, ids, 64, 16) for m in (IgnoresLogitsToKeep(model), model))
    assert ppl == pytest.approx(ref, rel=1e-6) and scored == ref_scored


def test_batch_size_does_not_change_the_result(model):
    ids = torch.randint(0, 97, (400,), generator=torch.Generator().manual_seed(1))
    results = {perplexity(model, ids, 64, 16, batch_size=b)[0] for b in (1, 5, 64)}
    assert max(results) - min(results) < 1e-4 * max(results)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 600), context=st.integers(2, 96), data=st.data())
def test_windows_score_each_token_once_and_all_when_they_overlap(n, context, data):
    stride = data.draw(st.integers(1, context))
    windows = strided_windows(n, context, stride)
    scored = [p for w in windows for p in range(w.score_from, w.end)]
    # a window starting where the previous one ended has no history for its first token
    prev_ends = [0] + [w.end for w in windows[:-1]]
    unscorable = {w.begin for w, prev_end in zip(windows, prev_ends) if w.begin >= prev_end}
    assert scored == [p for p in range(n) if p not in unscorable]
    if stride < context:
        assert scored == list(range(1, n))
    for w in windows:
        assert 0 < w.end - w.begin <= context and w.begin < w.score_from <= w.end
        # every scored token sees at least context - stride tokens of history (or all there is)
        assert w.score_from - w.begin >= min(context - stride, w.score_from)


@pytest.mark.parametrize("stride", [0, -1, 65])
def test_bad_stride_is_rejected(stride):
    with pytest.raises(ValueError, match="stride"):
        strided_windows(100, 64, stride)
