"""Distinct-n and Self-BLEU on hand-computed examples and against a naive reference implementation."""
import math
import random
from collections import Counter

import pytest
import torch

from fdpg_core.kit.diversity import distinct_n, self_bleu


def test_distinct_n_hand_computed():
    seqs = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(seqs, 1) == pytest.approx(4 / 6)   # {1,2,3,4} of 6 unigrams
    assert distinct_n(seqs, 2) == pytest.approx(3 / 4)   # (1,2),(2,3),(1,2),(2,4)
    assert distinct_n(seqs, 3) == pytest.approx(2 / 2)
    assert distinct_n(seqs, 4) == 0.0                    # no 4-gram at all
    words = [["the", "cat", "the", "cat"], ["a", "dog"]]
    assert distinct_n(words, 1) == pytest.approx(4 / 6)
    assert distinct_n(words, 2) == pytest.approx(3 / 4)  # (the,cat) twice, (cat,the), (a,dog)
    assert distinct_n([[7, 7, 7, 7]], 2) == pytest.approx(1 / 3)
    assert distinct_n(torch.tensor([[1, 2], [2, 1]]), 1) == pytest.approx(2 / 4)  # tensor rows


def test_distinct_n_errors():
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        distinct_n([[1, 2]], 0)
    with pytest.raises(ValueError, match="split"):
        distinct_n(["a whole sentence", "another"], 1)


def _naive_bleu(hyp, refs, n, eps=0.1):
    """Sentence BLEU-n written out the slow way (clipped counts, closest ref length, method1 smoothing)."""
    if len(hyp) == 0:
        return 0.0
    log_sum = 0.0
    for k in range(1, n + 1):
        grams = [tuple(hyp[i:i + k]) for i in range(len(hyp) - k + 1)]
        counts = Counter(grams)
        clipped = 0
        for g, c in counts.items():
            max_ref = max(Counter(tuple(r[i:i + k]) for i in range(len(r) - k + 1))[g] for r in refs)
            clipped += min(c, max_ref)
        denom = max(1, len(grams))
        if clipped == 0:
            if k == 1:
                return 0.0
            if eps == 0:
                return 0.0
            log_sum += math.log(eps / denom)
        else:
            log_sum += math.log(clipped / denom)
    c = len(hyp)
    r = sorted((abs(len(x) - c), len(x)) for x in refs)[0][1]
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_sum / n)


def _naive_self_bleu(seqs, n, eps=0.1):
    return sum(_naive_bleu(h, seqs[:i] + seqs[i + 1:], n, eps) for i, h in enumerate(seqs)) / len(seqs)


def test_self_bleu_hand_computed():
    # p1 = 3/4, p2 = 2/3, equal lengths (BP = 1): √(½) for both hypotheses
    assert self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]], 2) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    # brevity penalty: hyp [1,2] vs ref of length 4: p1 = 1, BP = e^{1−4/2}; hyp [1,2,3,4]: p1 = ½, BP = 1
    assert self_bleu([[1, 2], [1, 2, 3, 4]], 1) == pytest.approx((math.exp(-1) + 0.5) / 2, rel=1e-12)
    # clipping: "the the the" against "the cat": p1 = 1/3
    assert self_bleu([["the"] * 3, ["the", "cat"]], 1) == pytest.approx((1 / 3 + 1 / 2 * math.exp(1 - 3 / 2)) / 2)


def test_self_bleu_identical_and_disjoint():
    s = [5, 3, 8, 1, 9, 2, 7]
    assert self_bleu([s, s, s], 4) == pytest.approx(1.0, rel=1e-12)
    disjoint = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert self_bleu(disjoint, 4) == 0.0
    assert self_bleu(disjoint, 1) == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("eps", [0.1, 0.0])
def test_self_bleu_matches_naive_reference(n, eps):
    rng = random.Random(n)
    seqs = [[rng.randrange(5) for _ in range(rng.randrange(0, 9))] for _ in range(12)]
    seqs += [seqs[0][:], seqs[1][:4]]  # duplicates and prefixes exercise the top-2 counts and length ties
    got = self_bleu(seqs, n, max_samples=None, epsilon=eps)
    assert got == pytest.approx(_naive_self_bleu(seqs, n, eps), rel=1e-12, abs=1e-15)
    assert 0.0 <= got <= 1.0


def test_self_bleu_subsampling_and_errors():
    rng = random.Random(0)
    seqs = [[rng.randrange(6) for _ in range(8)] for _ in range(30)]
    assert self_bleu(seqs, 3, max_samples=30) == self_bleu(seqs, 3, max_samples=None)
    sub = self_bleu(seqs, 3, max_samples=10, seed=1)
    assert sub == self_bleu(seqs, 3, max_samples=10, seed=1)           # deterministic
    idx = sorted(random.Random(1).sample(range(30), 10))
    assert sub == pytest.approx(_naive_self_bleu([seqs[i] for i in idx], 3))
    with pytest.raises(ValueError, match="at least 2"):
        self_bleu([[1, 2, 3]], 2)
    with pytest.raises(ValueError, match="split"):
        self_bleu(["a b c", "a b d"], 2)
    with pytest.raises(ValueError, match="max_samples"):
        self_bleu(seqs, 2, max_samples=1)
