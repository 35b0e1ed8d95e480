"""edgekit's sampler against hand computations and against transformers' logits processors."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime.sampling import (
    Sampler,
    SamplingParams,
    apply_repeat_penalty,
    filter_mask,
    probabilities,
)

P4 = np.log(np.array([0.5, 0.3, 0.15, 0.05]))  # logits whose softmax is exactly these probabilities


def _kept(mask: np.ndarray) -> set[int]:
    return set(np.flatnonzero(mask).tolist())


def test_top_k_keeps_the_k_largest():
    assert _kept(filter_mask(np.array([1.0, 3.0, 2.0, 0.0]), top_k=2)) == {1, 2}
    assert _kept(filter_mask(np.array([1.0, 3.0, 2.0, 0.0]), top_k=1)) == {1}
    assert _kept(filter_mask(np.array([1.0, 3.0, 2.0, 0.0]), top_k=0)) == {0, 1, 2, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # cumulative 0.5, 0.8, 0.95, 1.0
    assert _kept(filter_mask(P4, top_p=0.45)) == {0}
    assert _kept(filter_mask(P4, top_p=0.75)) == {0, 1}
    assert _kept(filter_mask(P4, top_p=0.85)) == {0, 1, 2}
    assert _kept(filter_mask(P4, top_p=0.99)) == {0, 1, 2, 3}


def test_min_p_is_relative_to_the_top_probability():
    assert _kept(filter_mask(P4, min_p=0.2)) == {0, 1, 2}    # threshold 0.1
    assert _kept(filter_mask(P4, min_p=0.5)) == {0, 1}       # threshold 0.25
    assert _kept(filter_mask(P4, min_p=0.99)) == {0}


def test_filters_apply_in_order_and_renormalise():
    # top-k 2 leaves 0.5/0.8 and 0.3/0.8 = 0.625, 0.375: top-p 0.6 then keeps only the first
    assert _kept(filter_mask(P4, top_k=2, top_p=0.6)) == {0}
    # renormalised after top-k 3: cumulative 0.526, 0.842 (0.8 before) -> top-p 0.83 keeps two, not three
    assert _kept(filter_mask(P4, top_p=0.83)) == {0, 1, 2}
    assert _kept(filter_mask(P4, top_k=3, top_p=0.83)) == {0, 1}
    p = probabilities(P4, SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0))
    np.testing.assert_allclose(p, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0])


def test_temperature_scales_the_kept_logits():
    z = np.array([2.0, 1.0, 0.0, -1.0])
    p = probabilities(z, SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0))
    e = np.exp(z / 2.0)
    np.testing.assert_allclose(p, e / e.sum())
    g = probabilities(z, SamplingParams(temperature=0.0))
    assert g.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_repeat_penalty_divides_positive_and_multiplies_negative():
    out = apply_repeat_penalty(np.array([2.0, -1.0, 0.5, 3.0]), [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]  # once per distinct token; unseen tokens untouched
    # only the last repeat_last_n tokens count
    p = probabilities(np.array([2.0, 1.9]), SamplingParams(temperature=0.0, repeat_penalty=2.0, repeat_last_n=1),
                      recent=[0, 1])
    assert p.tolist() == [1.0, 0.0]
    p = probabilities(np.array([2.0, 1.9]), SamplingParams(temperature=0.0, repeat_penalty=2.0, repeat_last_n=2),
                      recent=[1, 0])
    assert p.tolist() == [1.0, 0.0]   # both penalised: 1.0 vs 0.95
    p = probabilities(np.array([2.0, 1.9]), SamplingParams(temperature=0.0, repeat_penalty=2.0, repeat_last_n=1),
                      recent=[1, 0])
    assert p.tolist() == [0.0, 1.0]   # only token 0 penalised: 1.0 < 1.9


def test_masks_match_transformers_processors():
    import torch
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    for _ in range(20):
        z = rng.normal(size=300) * 3
        t = torch.tensor(z[None])
        ids = torch.zeros((1, 1), dtype=torch.long)
        for k in (1, 5, 40):
            ref = torch.isfinite(TopKLogitsWarper(k)(ids, t.clone()))[0].numpy()
            assert (filter_mask(z, top_k=k) == ref).all()
        for top_p in (0.1, 0.5, 0.9):
            ref = torch.isfinite(TopPLogitsWarper(top_p)(ids, t.clone()))[0].numpy()
            assert (filter_mask(z, top_p=top_p) == ref).all()
        for min_p in (0.01, 0.1, 0.5):
            ref = torch.isfinite(MinPLogitsWarper(min_p)(ids, t.clone()))[0].numpy()
            assert (filter_mask(z, min_p=min_p) == ref).all()
        seen = rng.integers(0, 300, size=30)
        ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(seen[None]), t.clone())[0].numpy()
        np.testing.assert_allclose(apply_repeat_penalty(z, seen.tolist(), 1.3), ref, rtol=1e-12)


def test_seed_replays_and_draws_follow_the_distribution():
    z = np.log(np.array([0.5, 0.3, 0.2]))
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    s1, s2 = Sampler(params), Sampler(params)
    seq1, seq2 = [s1(z) for _ in range(200)], [s2(z) for _ in range(200)]
    assert seq1 == seq2
    s3 = Sampler(SamplingParams(**{**params.to_dict(), "seed": 43}))
    assert [s3(z) for _ in range(200)] != seq1
    draws = np.bincount([s1(z) for _ in range(20000)], minlength=3) / 20000
    np.testing.assert_allclose(draws, [0.5, 0.3, 0.2], atol=0.015)


def test_greedy_ignores_the_seed_and_invalid_settings_are_refused():
    z = np.array([0.1, 5.0, 0.2])
    assert Sampler(SamplingParams(temperature=0, seed=1))(z) == 1
    assert Sampler(SamplingParams(temperature=0, seed=2))(z) == 1
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1), dict(min_p=1.0), dict(max_tokens=0)):
        with pytest.raises(EdgekitError, match="invalid sampling setting"):
            SamplingParams(**bad)
