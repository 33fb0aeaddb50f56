"""Sampler filters on hand-computed cases."""

import numpy as np

from fitllm.sampling import SamplingParams, make_sampler, min_p, repeat_penalty, top_k, top_p

L = np.log(np.array([0.5, 0.25, 0.15, 0.1], np.float32))


def kept(x):
    return np.flatnonzero(np.isfinite(x)).tolist()


def test_top_k():
    assert kept(top_k(L, 2)) == [0, 1]
    assert kept(top_k(L, 0)) == [0, 1, 2, 3]


def test_top_p():
    assert kept(top_p(L, 0.5)) == [0]
    assert kept(top_p(L, 0.7)) == [0, 1]
    assert kept(top_p(L, 0.76)) == [0, 1, 2]
    assert kept(top_p(L, 1.0)) == [0, 1, 2, 3]


def test_min_p():
    assert kept(min_p(L, 0.29)) == [0, 1, 2]  # 0.15 >= 0.29 * 0.5
    assert kept(min_p(L, 0.49)) == [0, 1]


def test_repeat_penalty():
    x = np.array([2.0, -2.0, 1.0], np.float32)
    np.testing.assert_allclose(repeat_penalty(x, [0, 1, 1], 2.0), [1.0, -4.0, 1.0])


def test_greedy_and_seeded_sampling():
    greedy = make_sampler(SamplingParams(temperature=0.0), np.random.default_rng(0))
    assert greedy(L, []) == 0
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [make_sampler(p, np.random.default_rng(5))(L, []) for _ in range(3)]
    b = [make_sampler(p, np.random.default_rng(5))(L, []) for _ in range(3)]
    assert a == b
    s = make_sampler(p, np.random.default_rng(1))
    counts = np.bincount([s(L, []) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.15, 0.1], atol=0.03)
