"""Building blocks shared by the encoder and heads: initializers, Dense, LayerNorm, constraints.

Every parameter is created through `nn.with_logical_partitioning`, so it carries logical axis names
(`embed`, `mlp`, `heads`, `kv`, `vocab`, ...) that the config's rules map to mesh axes. Two init
families exist because the reference mixes them (REFERENCE.md §5.1): BERT's own weights are N(0, 0.02)
with zero biases; the custom modules (field embeddings, input projection, heads) use PyTorch's
defaults, Embedding ~ N(0, 1) and Linear weight and bias ~ U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Any


def torch_uniform(fan_in: int) -> Initializer:
    """PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weight and bias alike."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def boxed(init: Initializer, names: Sequence[str | None]) -> Initializer:
    """`init` whose parameter carries the logical axis `names` (one per dimension)."""
    return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jnp.ndarray, names: Sequence[str | None]) -> jnp.ndarray:
    """Sharding constraint in logical names; a no-op without a mesh and rules in context."""
    return nn.with_logical_constraint(x, tuple(names))


class Dense(nn.Module):
    """y = x . kernel + bias, contracting the last `n_in` axes of x; kernel [*in_dims, *features].

    Like nn.DenseGeneral, but the initializer receives the full kernel shape, so the logical names
    (one per kernel dimension) stay valid when a mesh is active (DenseGeneral initializes a flattened
    2-D kernel and reshapes it, which breaks the sharding constraint of a 3-D named kernel).
    """

    features: tuple[int, ...]
    names: tuple[str | None, ...]
    kernel_init: Initializer
    bias_init: Initializer
    n_in: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        in_dims = tuple(x.shape[x.ndim - self.n_in :])
        if len(self.names) != self.n_in + len(self.features):
            raise ValueError(f"{len(self.names)} axis names for a kernel of {in_dims + self.features}")
        kernel = self.param("kernel", boxed(self.kernel_init, self.names), in_dims + self.features, self.param_dtype)
        contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
        if self.use_bias:
            names = self.names[self.n_in :]
            bias = self.param("bias", boxed(self.bias_init, names), self.features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def dense(
    features: int | Sequence[int],
    names: Sequence[str | None],
    *,
    torch_fan_in: int | None = None,
    stddev: float = 0.02,
    n_in: int = 1,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    name: str | None = None,
) -> Dense:
    """A Dense whose kernel has logical axes `names` (inputs then outputs).

    With `torch_fan_in` it is initialised like a PyTorch Linear of that fan-in; otherwise like a BERT
    Linear (N(0, stddev), zero bias). The bias takes the output names.
    """
    features = (features,) if isinstance(features, int) else tuple(features)
    if torch_fan_in is not None:
        kernel_init = bias_init = torch_uniform(torch_fan_in)
    else:
        kernel_init, bias_init = nn.initializers.normal(stddev), nn.initializers.zeros
    return Dense(
        features=features,
        names=tuple(names),
        kernel_init=kernel_init,
        bias_init=bias_init,
        n_in=n_in,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def layer_norm(eps: float, *, dtype: Any, param_dtype: Any, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over `embed` with exact (two-pass) variance, as PyTorch computes it."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=boxed(nn.initializers.ones, ("embed",)),
        bias_init=boxed(nn.initializers.zeros, ("embed",)),
        name=name,
    )


@jax.custom_vjp
def _apply_keep(x: jnp.ndarray, keep: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(keep, x * scale.astype(x.dtype), jnp.zeros((), x.dtype))


def _apply_keep_fwd(x, keep, scale):
    return _apply_keep(x, keep, scale), (keep, scale)


def _apply_keep_bwd(res, g):
    keep, scale = res
    return jnp.where(keep, g * scale.astype(g.dtype), jnp.zeros((), g.dtype)), None, None


_apply_keep.defvjp(_apply_keep_fwd, _apply_keep_bwd)


def dropout_keep(rng: jax.Array, rate: float, shape: Sequence[int]) -> jnp.ndarray:
    """bool keep mask of inverted dropout with drop probability `rate` (to within 2^-17).

    Each element is decided by 16 random bits, not the 32 of a float uniform: two elements per
    uint32 draw halves the random-number work, which on CPU cost as much as a layer's attention
    matmuls (the [B, H, L, L] attention-dropout masks). The last axis is split in two halves of
    the draw so the mask shards like `shape`; with an odd last axis it falls back to 32 bits.
    """
    shape = tuple(shape)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if not shape or shape[-1] % 2:
        return jax.random.bernoulli(rng, 1.0 - rate, shape)
    bits = jax.random.bits(rng, (*shape[:-1], shape[-1] // 2), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(shape)
    return halves >= jnp.uint16(round(rate * 65536))


class Dropout(nn.Module):
    """Inverted dropout that keeps only its bool mask for the backward pass.

    Same semantics as nn.Dropout (rng collection 'dropout'); nn.Dropout's select would keep an
    activation-sized float buffer of zeros alive per call as a residual as well.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = dropout_keep(self.make_rng("dropout"), self.rate, x.shape)
        return _apply_keep(x, keep, jnp.asarray(1.0 / (1.0 - self.rate), jnp.float32))


# Activations with hand-written backward passes: each keeps one array for the backward pass, where
# autodiff of the textbook formula keeps two to four (softmax: exp and probs; exact GELU: four
# [B, L, mlp] intermediates). At L = 1024 this is most of the activation memory of a layer.


@jax.custom_vjp
def softmax(x: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the last axis; the backward pass needs only the output."""
    x = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    e = jnp.exp(x)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _softmax_fwd(x):
    p = softmax(x)
    return p, p


def _softmax_bwd(p, g):
    return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@jax.custom_vjp
def gelu(x: jnp.ndarray) -> jnp.ndarray:
    """Exact (erf) GELU, as BERT's 'gelu'; the backward pass needs only the input."""
    xf = x.astype(jnp.float32)
    return (0.5 * xf * (1.0 + jax.lax.erf(xf / math.sqrt(2.0)))).astype(x.dtype)


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    xf = x.astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(xf / math.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * xf * xf) / math.sqrt(2.0 * math.pi)
    return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)
