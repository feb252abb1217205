"""Random masking inputs shared by test_masking and multidevice/test_sharded_masking."""

import numpy as np

from midibert_jax.tokenizer import vocab
from midibert_jax.train import masking

B, L = 16, 128
NUM_REGULAR = np.asarray(vocab.VOCAB.num_regular)

BASE = masking.MaskingConfig(
    policy="adversarial",
    ratio_min=0.1,
    ratio_max=0.3,
    cap=0.15,
    random_ratio=0.15,
    mask_prob=0.8,
    random_prob=0.1,
    eval_seed=0,
    reference_pads_as_candidates=False,
    reference_random_any_token=False,
)


def make_tokens(seed, b=B, length=L, min_len=8):
    """Regular random tokens with a random number of trailing pads per example; returns (tokens, nonpad)."""
    rs = np.random.RandomState(seed)
    tokens = rs.randint(0, NUM_REGULAR, size=(b, length, 8)).astype(np.int32)
    lengths = rs.randint(min_len, length + 1, size=b)
    lengths[0] = length  # one full window
    nonpad = np.arange(length)[None, :] < lengths[:, None]
    tokens[~nonpad] = np.asarray(vocab.PAD_ROW)
    return tokens, nonpad


def random_batch(seed=0):
    """(tokens, nonpad, scores [B, L], frozen [B, L], index [B]) of one random batch."""
    tokens, nonpad = make_tokens(seed)
    rs = np.random.RandomState(seed + 100)
    scores = rs.uniform(size=(B, L)).astype(np.float32)
    frozen = rs.uniform(size=(B, L)) < 0.3
    return tokens, nonpad, scores, frozen, np.arange(B, dtype=np.int32) + 1000
