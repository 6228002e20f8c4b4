"""A compact BERT encoder in torch that loads a package's ``model.safetensors`` and ``config.json``.

Why not ``transformers.BertModel``: its current attention and masking code exports to a graph that
ONNX Runtime's transformer optimiser cannot fuse (no ``Attention``/``SkipLayerNormalization``
nodes), and the torchscript exporter bakes in shapes that break parity. This module writes the
encoder the classic way (additive ``-10000`` mask, explicit softmax attention, erf GELU), which
exports with dynamic batch and sequence axes and fuses into ORT's BERT kernels. Its output is the
sentence embedding of sentence-transformers (mean pooling over real tokens, then L2
normalisation); parity against the reference implementation is checked at export time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    """The fields of a HF ``config.json`` this encoder needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("model_type", "bert") != "bert":
            raise ValueError(f"{path}: only BERT encoders with erf GELU are supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.head_dim = h // self.heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, h)
        self.out_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q = self._split(self.query(x))
        k = self._split(self.key(x))
        v = self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + additive_mask, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(x.shape[0], x.shape[1], self.heads * self.head_dim)
        x = self.attn_norm(self.attn_out(ctx) + x)
        hidden = nn.functional.gelu(self.intermediate(x))
        return self.out_norm(self.output(hidden) + x)


class SentenceEncoder(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation: ``(input_ids, attention_mask) -> (B, H)``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.embed_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        token_types = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_types)
        )
        x = self.embed_norm(x)
        mask = attention_mask.to(x.dtype)
        additive = (1.0 - mask[:, None, None, :]) * -10000.0
        for layer in self.layers:
            x = layer(x, additive)
        weights = mask.unsqueeze(-1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


def _state_from_hf(tensors: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Rename HF BERT tensor names to this module's names (the pooler head is not used)."""
    out = {
        "word_embeddings.weight": tensors["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": tensors["embeddings.position_embeddings.weight"],
        "token_type_embeddings.weight": tensors["embeddings.token_type_embeddings.weight"],
        "embed_norm.weight": tensors["embeddings.LayerNorm.weight"],
        "embed_norm.bias": tensors["embeddings.LayerNorm.bias"],
    }
    names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "out_norm": "output.LayerNorm",
    }
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{part}"] = tensors[f"encoder.layer.{i}.{theirs}.{part}"]
    return out


def load_encoder(model_dir: Path) -> SentenceEncoder:
    """Build the encoder from ``model_dir/config.json`` and ``model_dir/model.safetensors``.

    Raises ``KeyError``/``ValueError``/``OSError`` on a malformed or missing file; the exporter
    turns these into :class:`~streamcascade.errors.ModelFileError`.
    """
    from safetensors.torch import load_file

    cfg = BertConfig.from_file(model_dir / "config.json")
    model = SentenceEncoder(cfg)
    tensors = load_file(str(model_dir / "model.safetensors"))
    model.load_state_dict(_state_from_hf(tensors, cfg), strict=True)
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
