"""Position information inside attention: BERT's relative key-query terms and rotary embeddings.

Relative key-query (REFERENCE.md §5.1) adds, before the 1/sqrt(d) scaling,

    rel[b, h, l, r] = q[b, l, h] . E[l - r + M - 1] + k[b, r, h] . E[l - r + M - 1]

where E is a per-layer distance table of 2*M - 1 rows (M = max_len). The reference gathers E into an
[L, L, d] tensor and contracts it with q and k (hundreds of MB per layer at L = 1024). Here the queries
(keys) are taken in blocks of c consecutive rows; a block only meets the L + c - 1 distances of its rows,
so each block is one matmul against those table rows, [c, d] x [d, L + c - 1], and the result is shifted
into place with a reshape-and-slice ("skewing", Music Transformer / Transformer-XL). No [L, L, d] tensor
exists, the backward pass needs nothing beyond q, k and the table, and the work is (L + c) / 2L of
multiplying every row by all 2L - 1 distances (c = L, one block, is that unblocked form).
"""

from __future__ import annotations

import jax.numpy as jnp

# Rows per block of the relative terms: small enough that (L + c) / 2L is close to 1/2 at L >= 512,
# large enough that each block's matmul stays efficient.
RELATIVE_BLOCK = 128


def skew(x: jnp.ndarray, length: int | None = None) -> jnp.ndarray:
    """[..., c, L+c-1] -> [..., c, L] with out[..., i, r] = x[..., i, r + c - 1 - i] (default L = c).

    Row i is shifted left by c - 1 - i. Flattening the rows and re-reading them with stride L + c - 2
    (after dropping the first c - 1 entries) performs all the shifts at once, with no gather.
    """
    rows, width = x.shape[-2], x.shape[-1]
    length = rows if length is None else length
    if width != length + rows - 1:
        raise ValueError(f"skew to length {length} expects [..., c, {length} + c - 1], got {x.shape}")
    if rows == 1:
        return x
    lead = x.shape[:-2]
    flat = x.reshape(*lead, rows * width)
    flat = flat[..., rows - 1 : rows - 1 + rows * (width - 1)]
    return flat.reshape(*lead, rows, width - 1)[..., :length]


def block_size(length: int, block: int = RELATIVE_BLOCK) -> int:
    """The largest divisor of `length` that is at most `block`; `length` (one block) if that is 1 or under block / 4.

    (Blocks of one row would gather the [L, L, d] tensor this module avoids.)
    """
    best = max(c for c in range(1, min(block, length) + 1) if length % c == 0)
    return best if best > 1 and best >= min(block, length) // 4 else length


def _blocked_term(x: jnp.ndarray, window: jnp.ndarray, c: int) -> jnp.ndarray:
    """[B, L, H, d] rows x their distance rows -> [B, H, L, L]: out[l, r] = x[l] . window[(L - 1) + l - r].

    `window` holds the 2L - 1 rows of distances -(L - 1) .. L - 1 (row j: distance j - (L - 1)).
    """
    batch, length, heads, dim = x.shape
    n, width = length // c, length + c - 1
    # Block b (rows l = b c + i) meets distances b c - (L - 1) .. b c + c - 1: window rows b c .. b c + width - 1,
    # taken in reverse so that column j is distance b c + c - 1 - j and the skew puts l - r at [i, r].
    rows = (jnp.arange(n) * c)[:, None] + jnp.arange(width - 1, -1, -1)[None, :]
    rel = jnp.einsum(
        "bnchd,njd->bhncj", x.reshape(batch, n, c, heads, dim), window[rows], preferred_element_type=jnp.float32
    )
    return skew(rel, length).reshape(batch, heads, length, length)


def relative_key_query_scores(
    query: jnp.ndarray, key: jnp.ndarray, table: jnp.ndarray, max_len: int, block: int = RELATIVE_BLOCK
) -> jnp.ndarray:
    """BERT's relative key-query score terms, [B, H, L, L] float32.

    Args:
      query, key: [batch, length, heads, head_dim].
      table: [2 * max_len - 1, head_dim]; row i holds distance i - (max_len - 1).
      max_len: the table's max_len (length must not exceed it).
      block: rows per block (see `block_size`); the values do not depend on it.
    """
    length = query.shape[1]
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds the relative table's max_len {max_len}")
    c = block_size(length, block)
    # Rows for distances -(L-1) .. L-1: window[j] is distance j - (L - 1).
    window = table[max_len - length : max_len + length - 1].astype(query.dtype)
    # The key term at [r, l] needs distance l - r, i.e. the query term's formula with the table reversed.
    return _blocked_term(query, window, c) + jnp.swapaxes(_blocked_term(key, window[::-1], c), -1, -2)


def rotary(x: jnp.ndarray, max_wavelength: float) -> jnp.ndarray:
    """Rotary position embedding of [batch, length, heads, head_dim] at positions 0..L-1 (half-split form)."""
    length, head_dim = x.shape[1], x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rope needs an even head_dim, got {head_dim}")
    half = head_dim // 2
    inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # [L, half]
    sin = jnp.sin(angles)[None, :, None, :]
    cos = jnp.cos(angles)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
