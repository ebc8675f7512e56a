"""A caption tokenizer over a closed vocabulary and a small transformer caption encoder."""

from __future__ import annotations

import re

import torch
from torch import nn

PAD, UNK, NULL = "<pad>", "<unk>", "<null>"


def words(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


class CaptionTokenizer:
    """Word-level tokenizer; the vocabulary is built from training captions and saved with the run."""

    def __init__(self, vocab: list[str], max_length: int = 16):
        self.vocab = list(vocab)
        self.max_length = max_length
        self.index = {w: i for i, w in enumerate(self.vocab)}
        assert self.vocab[:3] == [PAD, UNK, NULL], "special tokens come first"

    @classmethod
    def from_captions(cls, captions, max_length: int = 16) -> "CaptionTokenizer":
        found = sorted({w for c in captions for w in words(c)})
        return cls([PAD, UNK, NULL, *found], max_length)

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """Token ids ``(B, max_length)``; an empty caption encodes as the null (unconditional) token."""
        out = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [self.index.get(w, 1) for w in words(c)][: self.max_length] or [2]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class CaptionEncoder(nn.Module):
    """Token embedding + learned positions + a small TransformerEncoder, trained with the UNet."""

    def __init__(self, vocab_size: int, *, dim: int = 64, layers: int = 2, heads: int = 4,
                 max_length: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(self.embed(tokens) + self.pos[:, : tokens.shape[1]]))
