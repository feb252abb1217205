"""Parity with the reference PyTorch model (transformers 4.x BertModel, relative_key_query).

The torch modules below re-create the reference's module layouts (MidiBert, the MLM, masker, token
and sequence heads) so their state dicts have the published names. Weights are random (and every
parameter is perturbed, so biases and LayerNorm affine terms are not trivially 0/1); after
conversion every output must agree within 1e-4 in float32.
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
import numpy as np
import pytest
import torch
import transformers
from torch import nn

from midibert_jax.commands import import_torch
from midibert_jax.model import config_io, models, torch_import
from midibert_jax.run import Run
from midibert_jax.tokenizer import vocab

ATOL = 1e-4
NUM_CLASSES = 5


# ----------------------------------------------------------------------------- the reference's layouts


class FieldEmbedding(nn.Module):
    def __init__(self, n_token: int, d_model: int):
        super().__init__()
        self.lut = nn.Embedding(n_token, d_model)
        self.d_model = d_model

    def forward(self, x):
        return self.lut(x) * math.sqrt(self.d_model)


class TorchMidiBert(nn.Module):
    def __init__(self, bert_config: transformers.BertConfig, emb_size: int = 256):
        super().__init__()
        self.bert = transformers.BertModel(bert_config)
        self.word_emb = nn.ModuleList(FieldEmbedding(n, emb_size) for n in vocab.VOCAB_SIZES)
        self.in_linear = nn.Linear(emb_size * len(vocab.VOCAB_SIZES), bert_config.hidden_size)
        # Dead code of the reference whose parameters stay in the state dict.
        self.attention_linear = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(bert_config.hidden_size, 256), nn.ReLU(), nn.Linear(256, 1)
        )

    def forward(self, tokens, attn_mask):
        x = torch.cat([emb(tokens[..., i]) for i, emb in enumerate(self.word_emb)], dim=-1)
        return self.bert(inputs_embeds=self.in_linear(x), attention_mask=attn_mask).last_hidden_state


class TorchMLM(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(hidden, n) for n in vocab.VOCAB_SIZES)


class TorchPretrain(nn.Module):
    def __init__(self, midibert: TorchMidiBert):
        super().__init__()
        self.midibert = midibert
        self.mask_lm = TorchMLM(midibert.in_linear.out_features)

    def forward(self, tokens, attn_mask):
        h = self.midibert(tokens, attn_mask)
        return [proj(h) for proj in self.mask_lm.proj]


class TorchMasker(nn.Module):
    def __init__(self, midibert: TorchMidiBert):
        super().__init__()
        self.midibert = midibert
        hidden = midibert.in_linear.out_features
        self.linear = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, 1), nn.Sigmoid())

    def forward(self, tokens, attn_mask):
        return self.linear(self.midibert(tokens, attn_mask))[..., 0]


class TorchToken(nn.Module):
    def __init__(self, midibert: TorchMidiBert, num_classes: int):
        super().__init__()
        self.midibert = midibert
        hidden = midibert.in_linear.out_features
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, tokens, attn_mask):
        return self.classifier(self.midibert(tokens, attn_mask))


class TorchPooling(nn.Module):
    def __init__(self, hidden: int, da: int = 128, r: int = 4):
        super().__init__()
        self.ws1 = nn.Linear(hidden, da, bias=False)
        self.ws2 = nn.Linear(da, r, bias=False)


class TorchSequence(nn.Module):
    def __init__(self, midibert: TorchMidiBert, num_classes: int):
        super().__init__()
        self.midibert = midibert
        hidden = midibert.in_linear.out_features
        self.attention = TorchPooling(hidden)
        self.classifier = nn.Sequential(nn.Linear(4 * hidden, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, tokens, attn_mask, include_pads: bool = True):
        h = self.midibert(tokens, attn_mask)
        scores = self.attention.ws2(torch.tanh(self.attention.ws1(h)))  # [B, L, r]
        if not include_pads:  # our default: PAD rows leave the pooling
            scores = scores.masked_fill(~attn_mask.bool()[..., None], float("-inf"))
        weights = torch.softmax(scores, dim=1).permute(0, 2, 1)
        pooled = torch.bmm(weights, h)
        return self.classifier(pooled.reshape(pooled.shape[0], -1))


# ----------------------------------------------------------------------------- fixtures


def _torch_models(size: str, position: str = "relative_key_query"):
    base = config_io.default_model_config(size)
    torch.manual_seed({"tiny": 0, "base": 1}[size])
    bert_config = transformers.BertConfig(
        hidden_size=base.hidden_size,
        num_hidden_layers=base.num_layers,
        num_attention_heads=base.num_heads,
        intermediate_size=base.mlp_dim,
        max_position_embeddings=base.max_len,
        position_embedding_type=position,
        vocab_size=16,  # BERT's word table is never used (inputs_embeds); keep it small
        attn_implementation="eager",
    )
    midibert = TorchMidiBert(bert_config, base.field_embed_dim)
    # The trap of transformers 5.x: relative_key_query silently dropped. Make sure the tables exist.
    has_tables = [hasattr(layer.attention.self, "distance_embedding") for layer in midibert.bert.encoder.layer]
    assert all(has_tables) == (position == "relative_key_query"), transformers.__version__
    wrappers = {
        "encoder": midibert,
        "pretrain": TorchPretrain(midibert),
        "masker": TorchMasker(midibert),
        "token": TorchToken(midibert, NUM_CLASSES),
        "sequence": TorchSequence(midibert, NUM_CLASSES),
    }
    gen = torch.Generator().manual_seed(7)
    unique = {id(p): p for wrapper in wrappers.values() for p in wrapper.parameters()}  # the encoder is shared
    with torch.no_grad():
        for p in unique.values():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    for wrapper in wrappers.values():
        wrapper.eval()
    return base, wrappers


def _tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """A padded batch: random regular ids, one MASK row, an EOS row, then PAD rows in sample 1."""
    rng = np.random.default_rng(seed)
    regular = np.asarray(vocab.VOCAB.num_regular)
    tokens = (rng.random((batch, length, 8)) * regular).astype(np.int32)
    tokens[0, 3] = vocab.MASK_ROW
    n_real = length // 2
    tokens[1, n_real] = vocab.EOS_ROW
    tokens[1, n_real + 1 :] = vocab.PAD_ROW
    return tokens


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apply(model, params, tokens, mask, method=None):
    return model.apply({"params": params}, tokens, mask, deterministic=True, method=method)


def _close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), theirs.detach().numpy().astype(np.float64)
    assert ours.shape == theirs.shape, what
    err = np.max(np.abs(ours - theirs))
    assert err < ATOL, f"{what}: max |diff| {err:.2e}"


SHAPES = {"tiny": (2, 24), "base": (2, 12)}  # base: a short sequence to stay fast


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_parity_encoder_and_every_head(size):
    base, torch_models = _torch_models(size)
    tokens = _tokens(*SHAPES[size])
    mask = tokens[..., 0] != vocab.PAD_ROW[0]
    t_tokens, t_mask = torch.from_numpy(tokens).long(), torch.from_numpy(mask).long()

    with torch.no_grad():
        expected = {
            "encoder": torch_models["encoder"](t_tokens, t_mask),
            "pretrain": torch_models["pretrain"](t_tokens, t_mask),
            "masker": torch_models["masker"](t_tokens, t_mask),
            "token": torch_models["token"](t_tokens, t_mask),
            "sequence_ref": torch_models["sequence"](t_tokens, t_mask, include_pads=True),
            "sequence": torch_models["sequence"](t_tokens, t_mask, include_pads=False),
        }

    conv = {kind: torch_import.convert(m.state_dict(), kind, base) for kind, m in torch_models.items()}
    for kind, c in conv.items():
        assert c.config.num_layers == base.num_layers and c.config.hidden_size == base.hidden_size, kind
        assert c.config.position_embedding == "relative_key_query" and c.config.max_len == base.max_len
        assert any(name.endswith("bert.pooler.dense.weight") for name in c.ignored), kind
        assert any("attention_linear" in name for name in c.ignored), kind
    config = conv["encoder"].config

    encoder = models.build_encoder(config)
    _close(_apply(encoder, conv["encoder"].params["encoder"], tokens, mask), expected["encoder"], "hidden states")

    pretrain_params = conv["pretrain"].params | {"masker": conv["masker"].params["masker"]}
    logits, scores = _apply(models.build_pretrain_model(config), pretrain_params, tokens, mask)
    for field, ours, theirs in zip(vocab.FIELDS, logits, expected["pretrain"]):
        _close(ours, theirs, f"recoverer {field}")
    _close(scores, expected["masker"], "masker scores")

    assert conv["token"].num_classes == NUM_CLASSES
    token_model = models.build_token_classifier(config, NUM_CLASSES)
    _close(_apply(token_model, conv["token"].params, tokens, mask), expected["token"], "token logits")

    for include_pads, key in ((True, "sequence_ref"), (False, "sequence")):
        config.sequence_pooling.include_pads = include_pads
        seq_model = models.build_sequence_classifier(config, NUM_CLASSES)
        _close(_apply(seq_model, conv["sequence"].params, tokens, mask), expected[key], f"sequence logits ({key})")


def test_parity_absolute_positions():
    base, torch_models = _torch_models("tiny", position="absolute")
    tokens = _tokens(2, 16, seed=1)
    mask = tokens[..., 0] != vocab.PAD_ROW[0]
    with torch.no_grad():
        expected = torch_models["encoder"](torch.from_numpy(tokens).long(), torch.from_numpy(mask).long())
    conversion = torch_import.convert(torch_models["encoder"].state_dict(), "encoder", base)
    assert conversion.config.position_embedding == "absolute"
    hidden = _apply(models.build_encoder(conversion.config), conversion.params["encoder"], tokens, mask)
    _close(hidden, expected, "hidden states (absolute)")


def test_import_command_roundtrip(tmp_path):
    base, torch_models = _torch_models("tiny")
    path = tmp_path / "pretrain_model.pth"
    torch.save({"epoch": 3, "state_dict": torch_models["pretrain"].state_dict()}, path)
    args = argparse.Namespace(
        checkpoint=str(path), kind="pretrain", out=str(tmp_path / "out"), num_heads=None, no_scan_layers=False
    )
    assert import_torch.run(args) == 0

    with Run.open(tmp_path / "out") as run:
        assert run.kind == "imported" and run.config.kind == "pretrain"
        config, params = run.config.model, run.params()
    assert config.size == "tiny" and config.num_heads == 4 and set(params) == {"encoder", "recoverer"}
    tokens = _tokens(*SHAPES["tiny"])
    mask = tokens[..., 0] != vocab.PAD_ROW[0]
    with torch.no_grad():
        expected = torch_models["pretrain"](torch.from_numpy(tokens).long(), torch.from_numpy(mask).long())
    logits = _apply(models.build_pretrain_model(config), params, tokens, mask, "recover")
    for field, ours, theirs in zip(vocab.FIELDS, logits, expected):
        _close(ours, theirs, f"recoverer {field} after import-torch")


def test_unknown_and_missing_entries_are_errors():
    base, torch_models = _torch_models("tiny")
    state = torch_models["token"].state_dict()
    with pytest.raises(ValueError, match="unexpected entries.*discriminator"):
        torch_import.convert({**state, "discriminator.weight": torch.zeros(3)}, "token", base)
    del state["classifier.3.bias"]
    with pytest.raises(KeyError, match="classifier.3.bias"):
        torch_import.convert(state, "token", base)
    # A DataParallel prefix is accepted.
    prefixed = {f"module.{k}": v for k, v in torch_models["masker"].state_dict().items()}
    assert set(torch_import.convert(prefixed, "masker", base).params) == {"encoder", "masker"}
