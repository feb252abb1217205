"""Position information inside attention: BERT's relative key-query terms and rotary embeddings.

Relative key-query (REFERENCE.md §5.1) adds, before the 1/sqrt(d) scaling,

    rel[b, h, l, r] = q[b, l, h] . E[l - r + M - 1] + k[b, r, h] . E[l - r + M - 1]

where E is a per-layer distance table of 2*M - 1 rows (M = max_len). The reference gathers E into an
[L, L, d] tensor and contracts it with q and k (hundreds of MB per layer at L = 1024). Here each term is
one matmul against the 2L - 1 table rows that can occur, [.., L, d] x [d, 2L - 1], and the result is
shifted into place with a reshape-and-slice ("skewing", Music Transformer / Transformer-XL), so no
[L, L, d] tensor exists and the backward pass needs nothing beyond q, k and the table.
"""

from __future__ import annotations

import jax.numpy as jnp


def skew(x: jnp.ndarray) -> jnp.ndarray:
    """[..., L, 2L-1] -> [..., L, L] with out[..., l, r] = x[..., l, r + L - 1 - l].

    Row l is shifted left by L - 1 - l. Flattening the rows and re-reading them with stride 2L - 2
    (after dropping the first L - 1 entries) performs all the shifts at once, with no gather.
    """
    length, width = x.shape[-2], x.shape[-1]
    if width != 2 * length - 1:
        raise ValueError(f"skew expects [..., L, 2L-1], got {x.shape}")
    if length == 1:
        return x
    lead = x.shape[:-2]
    flat = x.reshape(*lead, length * width)
    flat = flat[..., length - 1 : length - 1 + length * (2 * length - 2)]
    return flat.reshape(*lead, length, 2 * length - 2)[..., :length]


def relative_key_query_scores(
    query: jnp.ndarray, key: jnp.ndarray, table: jnp.ndarray, max_len: int
) -> jnp.ndarray:
    """BERT's relative key-query score terms, [B, H, L, L] float32.

    Args:
      query, key: [batch, length, heads, head_dim].
      table: [2 * max_len - 1, head_dim]; row i holds distance i - (max_len - 1).
      max_len: the table's max_len (length must not exceed it).
    """
    length = query.shape[1]
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds the relative table's max_len {max_len}")
    # Rows for distances -(L-1) .. L-1: window[j] is distance j - (L - 1).
    window = table[max_len - length : max_len + length - 1].astype(query.dtype)
    # q term: with the window reversed, column j is distance (L-1) - j; skew puts distance l - r at [l, r].
    q_rel = jnp.einsum("blhd,jd->bhlj", query, window[::-1], preferred_element_type=jnp.float32)
    # k term: key row r needs distance l - r at column l; skewing the natural order gives [r, l], then transpose.
    k_rel = jnp.einsum("brhd,jd->bhrj", key, window, preferred_element_type=jnp.float32)
    return skew(q_rel) + jnp.swapaxes(skew(k_rel), -1, -2)


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
