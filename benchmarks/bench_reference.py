r"""The reference implementation's adversarial pre-training step in PyTorch, for timing beside ours.

    python benchmarks/bench_reference.py --size tiny --steps 3      # time it alone
    (bench_pretrain.py runs it with --serve, round robin with our step, in the same run)

Written from ../shared/design/REFERENCE.md §5-§6 (not copied), doing what the reference does, the way it
does it, so that its speed is the reference's:
  * model: 8 field embeddings (vocab_f x 256) scaled by sqrt(256), concatenated, Linear(2048 -> hidden),
    then transformers' BertModel(position_embedding_type='relative_key_query') on inputs_embeds with the
    attention mask Bar != PAD of the clean input; 8 Linear(hidden -> vocab_f) recoverer heads; the masker
    head Dropout -> Linear(hidden, 256) -> ReLU -> Linear(256, 1) -> Sigmoid on the same (shared) encoder;
  * step: masker forward on the clean batch (train mode, keeps its graph), scores x mask book; per example
    in a Python loop, n_b = min(floor(U(0.1, 0.3) * book row sum), floor(0.15 L)), top-n_b by score, 80%
    all-MASK octuples, 10% random octuples (each field uniform over its whole vocabulary), 10% unchanged;
    recoverer forward on the corrupted batch; loss = sum_i w_i [mean CE_i over the selected positions +
    mean CE_i over all B L positions] (w_i = 1/8, the first epoch); the masker MSE with its per-example
    loop (k = floor(0.3 n_b) highest / lowest summed-CE positions among the MASK + random ones, with the
    reference's sign flip of the score tensor on every iteration); one backward of the sum; gradient
    clipping at 3.0 of the model (encoder + heads) and of the masker (encoder + masker head); three
    AdamW optimisers (encoder, recoverer heads, masker head; lr 1e-4, weight decay 0.01, eps 1e-6).
Random token batches (the last eighth of each window padded) and a mask book with ~10% zeros, as
bench_pretrain.py feeds our step.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
import transformers
from torch import nn

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.model import SIZES  # noqa: E402  (plain data; imports no jax)
from step_server import CASES, serve  # noqa: E402

# Per-field vocabulary sizes, regular-value counts and PAD / MASK ids (REFERENCE.md §1.1: PAD = regular count,
# MASK = PAD + 1), in column order.
VOCAB_SIZES = (262, 134, 135, 262, 134, 38, 260, 55)
NUM_REGULAR = (256, 128, 129, 256, 128, 32, 254, 49)
PAD_ROW = NUM_REGULAR
MASK_ROW = tuple(r + 1 for r in NUM_REGULAR)
FIELD_EMBED = 256


class OctupleBert(nn.Module):
    """The reference's MidiBert: field embeddings x sqrt(256) -> in_linear -> HF BertModel (relative key-query)."""

    def __init__(self, size: str, max_len: int):
        super().__init__()
        layers, hidden, heads, mlp = SIZES[size]
        config = transformers.BertConfig(
            max_position_embeddings=max_len,
            position_embedding_type="relative_key_query",
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=mlp,
            attn_implementation="eager",
        )
        self.bert = transformers.BertModel(config)
        self.word_emb = nn.ModuleList(nn.Embedding(v, FIELD_EMBED) for v in VOCAB_SIZES)
        self.in_linear = nn.Linear(len(VOCAB_SIZES) * FIELD_EMBED, hidden)
        self.hidden = hidden

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = [emb(tokens[..., i]) * math.sqrt(FIELD_EMBED) for i, emb in enumerate(self.word_emb)]
        x = self.in_linear(torch.cat(embeds, dim=-1))
        return self.bert(inputs_embeds=x, attention_mask=attention_mask).last_hidden_state


class Recoverer(nn.Module):
    """MidiBert + 8 linear MLM heads (no transform layer, no tying)."""

    def __init__(self, bert: OctupleBert):
        super().__init__()
        self.midibert = bert
        self.heads = nn.ModuleList(nn.Linear(bert.hidden, v) for v in VOCAB_SIZES)

    def forward(self, tokens, attention_mask):
        h = self.midibert(tokens, attention_mask)
        return [head(h) for head in self.heads]


class Masker(nn.Module):
    """The shared MidiBert + Dropout -> Linear(hidden, 256) -> ReLU -> Linear(256, 1) -> Sigmoid."""

    def __init__(self, bert: OctupleBert):
        super().__init__()
        self.midibert = bert
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(bert.hidden, 256), nn.ReLU(), nn.Linear(256, 1))

    def forward(self, tokens, attention_mask):
        return torch.sigmoid(self.head(self.midibert(tokens, attention_mask))).squeeze(-1)


def _adamw(params):
    cls = getattr(transformers, "AdamW", None)  # the reference's (deprecated) optimiser while transformers has it
    if cls is not None:
        return cls(params, lr=1e-4, weight_decay=0.01, eps=1e-6, no_deprecation_warning=True)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, eps=1e-6)


class ReferenceStep:
    """One adversarial pre-training step of the reference on a fixed random batch (call it to run a step)."""

    def __init__(self, size: str, batch: int, length: int, seed: int = 0):
        torch.manual_seed(seed)
        self.length = length
        bert = OctupleBert(size, length)
        self.model = Recoverer(bert)
        self.masker = Masker(bert)
        self.model.train()
        self.masker.train()
        self.optimizers = [
            _adamw(bert.parameters()),
            _adamw(self.model.heads.parameters()),
            _adamw(self.masker.head.parameters()),
        ]
        rng = np.random.default_rng(seed)
        tokens = (rng.random((batch, length, 8)) * np.asarray(NUM_REGULAR)).astype(np.int64)
        tokens[:, length - length // 8:] = PAD_ROW
        self.tokens = torch.from_numpy(tokens)
        self.index = torch.arange(batch)
        self.book = torch.from_numpy((rng.random((4 * batch, length)) >= 0.1).astype(np.float32))
        self.weights = [1.0 / 8] * 8
        self.params = sum(p.numel() for p in self.model.parameters()) + sum(
            p.numel() for p in self.masker.head.parameters())

    def _corrupt(self, x: torch.Tensor, p: torch.Tensor):
        """The per-example top-k and 80/10/10 loops; returns the corrupted input and both masks."""
        batch, length = p.shape
        cap = int(0.15 * length)
        x = x.clone()
        loss_mask = torch.zeros(batch, length)
        real_mask = torch.zeros(batch, length)
        counts = []
        for b in range(batch):
            n = min(int(np.random.uniform(0.1, 0.3) * self.book[self.index[b]].sum().item()), cap)
            counts.append(n)
            chosen = torch.topk(p[b].detach(), n).indices
            n_mask, n_random = round(0.8 * n), round(0.1 * n)
            for j, pos in enumerate(chosen.tolist()):
                if j < n_mask:
                    x[b, pos] = torch.tensor(MASK_ROW)
                    real_mask[b, pos] = 1
                elif j < n_mask + n_random:
                    x[b, pos] = torch.tensor([np.random.randint(v) for v in VOCAB_SIZES])
                    real_mask[b, pos] = 1
                loss_mask[b, pos] = 1
        return x, loss_mask, real_mask, counts

    def _masker_loss(self, p, score, real_mask, counts):
        """The per-example MSE toward 1 on the hardest and 0 on the easiest corrupted positions."""
        losses = []
        for b in range(p.shape[0]):
            score = -score  # the reference flips the sign of the whole tensor on every iteration
            k = int(0.3 * counts[b])
            if k == 0:
                continue
            row = score[b] * real_mask[b]
            high = torch.topk(row, k).indices
            low = torch.topk(torch.where(real_mask[b] > 0, score[b], torch.inf), k, largest=False).indices
            losses.append(nn.functional.mse_loss(p[b, high], torch.ones(k))
                          + nn.functional.mse_loss(p[b, low], torch.zeros(k)))
        return torch.stack(losses).mean() if losses else p.sum() * 0

    def __call__(self) -> dict:
        x = self.tokens
        attention_mask = (x[..., 0] != PAD_ROW[0]).long()
        p = self.masker(x, attention_mask) * self.book[self.index]
        corrupted, loss_mask, real_mask, counts = self._corrupt(x, p)
        logits = self.model(corrupted, attention_mask)
        recover, score = 0.0, 0.0
        for i, (w, out) in enumerate(zip(self.weights, logits)):
            ce = nn.functional.cross_entropy(out.transpose(1, 2), x[..., i], reduction="none")  # [B, L]
            recover = recover + w * ((ce * loss_mask).sum() / loss_mask.sum() + ce.mean())
            score = score + w * ce.detach()
        loss = recover + self._masker_loss(p, score, real_mask, counts)
        for opt in self.optimizers:
            opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 3.0)
        nn.utils.clip_grad_norm_(self.masker.parameters(), 3.0)
        for opt in self.optimizers:
            opt.step()
        return {"loss": float(loss.detach())}


def matmul_gflops(n: int = 1024, reps: int = 5) -> float:
    """float32 n^3 matmul GFLOP per CPU second of this process (shows whether an ISA cap took effect)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        c = time.process_time()
        a @ b
        times.append(time.process_time() - c)
    return 2 * n**3 / 1e9 / statistics.median(times)


def setup(case: str):
    size, batch, length = CASES[case]
    torch.set_grad_enabled(True)
    step = ReferenceStep(size, batch, length)
    info = {"implementation": "reference (PyTorch)", "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "params": step.params, "matmul_gflops_per_cpu_s": matmul_gflops()}
    return step, info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(CASES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="serve steps to bench_pretrain.py on stdin/stdout")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(lambda: setup(args.size))
    step, info = setup(args.size)
    print(info)
    step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t)
    _, batch, length = CASES[args.size]
    median = statistics.median(times)
    print(f"reference {args.size}: {median:.2f} s/step ({batch * length / median:.0f} tokens/s), loss {out['loss']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
