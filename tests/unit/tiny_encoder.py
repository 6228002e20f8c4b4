"""A tiny BERT encoder (random weights, the real tokenizer), split for the fine-tuned stage.

Fine-tuning MiniLM in unit tests would take minutes; this encoder has the same architecture at a
width of 32 and two layers, so every path of the stage (export, parity, training, snapshots)
runs for real in seconds. Its weights are random (seeded, initialised as BERT's are); its texts'
embeddings still differ by their words, which is all a head needs to learn the tests' topics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

_EXPORTS: dict[str, Path] = {}
#: The tiny encoder's width.
HIDDEN = 32


def tiny_weights(folder: Path, seed: int = 0) -> Path:
    """``config.json``, ``model.safetensors`` and ``tokenizer.json`` of a tiny BERT."""
    import torch
    from safetensors.torch import load_file, save_file

    from streamcascade.onnx_exports.encoder import BertConfig, SentenceEncoder
    from streamcascade.onnx_exports.manifest import model_spec

    source = model_spec("minilm-l6").source_dir()
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    cfg = BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=2 * HIDDEN,
                     max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12)
    torch.manual_seed(seed)
    model = SentenceEncoder(cfg)
    # Small layer weights (BERT's initialisation), so that a text's embedding is led by its
    # words' embeddings; those are MiniLM's own, projected to the small width, so that words
    # keep some of their meaning and topics are told apart as a real encoder tells them apart.
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)
    words = load_file(str(source / "model.safetensors"))["embeddings.word_embeddings.weight"]
    projection = torch.randn(words.shape[1], cfg.hidden_size) / cfg.hidden_size**0.5
    with torch.no_grad():
        model.word_embeddings.weight.copy_(words @ projection)
        model.position_embeddings.weight.zero_()
        model.token_type_embeddings.weight.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**cfg.__dict__, "model_type": "bert",
                                                    "hidden_act": "gelu"}))
    # Under the names of a Hugging Face BERT checkpoint, which the encoder's loader reads.
    names = {"query": "attention.self.query", "key": "attention.self.key",
             "value": "attention.self.value", "attn_out": "attention.output.dense",
             "attn_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
             "output": "output.dense", "out_norm": "output.LayerNorm"}
    tensors = {}
    for key, value in model.state_dict().items():
        if key.startswith("layers."):
            _, index, part, kind = key.split(".")
            tensors[f"encoder.layer.{index}.{names[part]}.{kind}"] = value
        elif key.startswith("embed_norm."):
            tensors[f"embeddings.LayerNorm.{key.split('.')[1]}"] = value
        else:
            tensors[f"embeddings.{key}"] = value
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    return folder


def tiny_split_dir(tmp_path_factory: pytest.TempPathFactory, n_top: int = 1) -> Path:
    """The tiny encoder exported split below its last ``n_top`` layers (once per session)."""
    key = f"{tmp_path_factory.getbasetemp()}:{n_top}"
    if key not in _EXPORTS:
        from streamcascade.onnx_exports.split import export_split

        root = tmp_path_factory.mktemp("tiny-encoder")
        source = tiny_weights(root / "weights")
        _EXPORTS[key] = export_split("tiny", n_top, root / "onnx", source=source).directory
    return _EXPORTS[key]
