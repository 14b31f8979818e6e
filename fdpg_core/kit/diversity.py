"""Diversity metrics on a set of samples: Distinct-n and Self-BLEU-n (written from the definitions).

Inputs are lists of token sequences: ``list[list[int]]`` (token ids) or ``list[list[str]]``
(word tokens). Plain strings are rejected (iterating a str would give characters): split first.

Distinct-n (corpus level): |distinct n-grams over all samples| / |all n-grams over all samples|.

Self-BLEU-n: each sample in turn is the hypothesis and all the *other* samples are its references;
the score is the mean sentence-BLEU over hypotheses (Zhu et al. 2018, Texygen). Sentence BLEU-n:

    BLEU = BP · exp( (1/n) Σ_{k=1..n} log p_k ),    BP = 1 if c > r else exp(1 − r/c)
    p_k  = Σ_g min(count_hyp(g), max_ref count_ref(g)) / max(1, Σ_g count_hyp(g))   (g: k-grams)

c = hypothesis length, r = the reference length closest to c (ties: the shorter one).
Smoothing (as NLTK's ``SmoothingFunction().method1``, which Texygen's Self-BLEU uses): a p_k with no
clipped match becomes ε / max(1, #k-grams) with ε = ``epsilon`` (0.1); ε = 0 means no smoothing (BLEU
is then 0 as soon as one p_k is 0). As in NLTK, a hypothesis with no unigram match scores 0, and an
empty hypothesis scores 0.
"""
from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from typing import Hashable, Sequence

__all__ = ["distinct_n", "self_bleu"]


def _as_token_lists(token_seqs) -> list[tuple[Hashable, ...]]:
    """Validate and convert to a list of tuples of hashable tokens (tensor rows via ``.tolist()``)."""
    if isinstance(token_seqs, str) or not isinstance(token_seqs, Sequence) and not hasattr(token_seqs, "tolist"):
        raise ValueError("token_seqs must be a list of token sequences (list[list[int]] or list[list[str]])")
    out = []
    for i, seq in enumerate(token_seqs):
        if isinstance(seq, str):
            raise ValueError(
                f"token_seqs[{i}] is a str ({seq[:30]!r}...); pass token lists, e.g. [s.split() for s in texts]"
            )
        if hasattr(seq, "tolist"):  # torch / numpy rows
            seq = seq.tolist()
        try:
            out.append(tuple(seq))
        except TypeError:
            raise ValueError(f"token_seqs[{i}] is not a sequence of tokens: {seq!r}") from None
    return out


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    return n


def _ngrams(seq: tuple, k: int) -> Counter:
    """Counter of the k-grams of one sequence (empty if len(seq) < k)."""
    return Counter(seq[i:i + k] for i in range(len(seq) - k + 1))


def distinct_n(token_seqs, n: int) -> float:
    """|distinct n-grams| / |n-grams|, both pooled over all samples; 0.0 if there is no n-gram."""
    n = _check_n(n)
    seqs = _as_token_lists(token_seqs)
    counts = Counter()
    for seq in seqs:
        counts.update(_ngrams(seq, n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def self_bleu(
    token_seqs,
    n: int = 4,
    max_samples: int | None = 500,
    *,
    epsilon: float = 0.1,
    seed: int = 0,
) -> float:
    """Mean sentence BLEU-n of each sample against all the others (see the module docstring).

    max_samples: if there are more samples, a random subset of this size is scored (drawn with
    ``random.Random(seed)``, so the result is deterministic); None scores all (cost O(N·L) here,
    thanks to the top-2 trick below).
    epsilon: smoothing of zero n-gram precisions (NLTK method1); 0 disables smoothing.
    """
    n = _check_n(n)
    if not (isinstance(epsilon, (int, float)) and 0.0 <= epsilon < 1.0):
        raise ValueError(f"epsilon must be in [0, 1); got {epsilon!r}")
    seqs = _as_token_lists(token_seqs)
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 2:
            raise ValueError(f"max_samples must be an integer >= 2 or None; got {max_samples!r}")
        if len(seqs) > max_samples:
            idx = sorted(random.Random(seed).sample(range(len(seqs)), max_samples))
            seqs = [seqs[i] for i in idx]
    N = len(seqs)
    if N < 2:
        raise ValueError(f"self_bleu needs at least 2 samples (each is scored against the others); got {N}")

    # 1. k-gram counts per sample, and for every k-gram the two largest counts over samples:
    #    max over the *other* samples = top1, unless this sample is the unique holder of top1 -> top2.
    counts = [[_ngrams(s, k) for s in seqs] for k in range(1, n + 1)]  # [k-1][i] Counter
    top = []  # per k: dict g -> [top1 count, index of top1, top2 count]
    for per_sample in counts:
        best: dict = {}
        for i, c in enumerate(per_sample):
            for g, m in c.items():
                b = best.get(g)
                if b is None:
                    best[g] = [m, i, 0]
                elif m > b[0]:
                    best[g] = [m, i, b[0]]
                elif m > b[2]:
                    b[2] = m
        top.append(best)

    # 2. Closest reference length among the others (ties -> shorter), by bisection on the
    #    sorted distinct lengths (the hypothesis' own length counts only if another sample has it).
    lengths = [len(s) for s in seqs]
    n_with_length = Counter(lengths)
    distinct = sorted(n_with_length)
    scores = []
    for i in range(N):
        c = lengths[i]
        if c == 0:
            scores.append(0.0)
            continue
        if n_with_length[c] >= 2:
            r = c
        else:
            j = bisect.bisect_left(distinct, c)                   # distinct[j] == c (this sample)
            cands = [distinct[j - 1]] if j > 0 else []
            cands += [distinct[j + 1]] if j + 1 < len(distinct) else []
            r = min((abs(L - c), L) for L in cands)[1]
        # 3. Clipped precisions p_k.
        log_p_sum = 0.0
        zero_unigram = False
        for k in range(n):
            hyp = counts[k][i]
            total = max(1, sum(hyp.values()))
            match = 0
            for g, m in hyp.items():
                t1, who, t2 = top[k][g]
                max_ref = t2 if who == i else t1
                match += min(m, max_ref)
            if match == 0:
                if k == 0:
                    zero_unigram = True
                    break
                if epsilon == 0.0:
                    log_p_sum = -math.inf
                    break
                log_p_sum += math.log(epsilon / total)            # method1 smoothing
            else:
                log_p_sum += math.log(match / total)
        if zero_unigram or log_p_sum == -math.inf:
            scores.append(0.0)
            continue
        bp = 1.0 if c > r else math.exp(1.0 - r / c)              # brevity penalty
        scores.append(bp * math.exp(log_p_sum / n))               # BP · exp((1/n) Σ log p_k)
    return sum(scores) / N
