"""Independent reference for the CLIP text encoder (Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision", section 2.4; the ViT-L/14 text transformer of
Stable Diffusion 1.x and the OpenCLIP ViT-H/14 one of Stable Diffusion 2.x).

The text transformer is a GPT-2-style pre-LayerNorm stack:
    h_0 = token_embedding[ids] + position_embedding[0..T)
    h_i = h_{i-1} + Attn(LN1(h_{i-1}));  h_i = h_i + MLP(LN2(h_i))    (causal self-attention)
    out = final_LN(h_L)
MLP = fc2(act(fc1(x))) with act = x * sigmoid(1.702 x) ("quick_gelu", OpenAI CLIP) or the exact
erf GELU ("gelu", OpenCLIP). "CLIP skip" k stops after layer L-k and still applies final_LN.

Weights use the Hugging Face transformers CLIPTextModel names; the reference computes in float64
so that the C++ fp32 result is compared against values much more exact than itself.

usage: ref_clip.py OUT_DIR
  writes OUT_DIR/quick/ and OUT_DIR/gelu/ (diffusers text_encoder folders: config.json +
  model.safetensors) and OUT_DIR/reference.safetensors holding, per variant V, the input ids
  "V.input_ids" [2, T] int64 and the expected hidden states "V.skip0" and "V.skip1" [2, T, hidden].
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

# The tiny configuration shared by every component test (see the pipeline's tiny folder).
TINY_CONFIG = {
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# Fields a real transformers config.json carries besides the architecture; readers must ignore them.
_EXTRA_FIELDS = {
    "_name_or_path": "tiny-clip",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "model_type": "clip_text_model",
    "pad_token_id": 1,
    "projection_dim": 32,
    "torch_dtype": "float32",
    "transformers_version": "4.25.1",
}


def _prefix(i):
    return f"text_model.encoder.layers.{i}."


def make_weights(config, seed=0):
    """Random weights for `config`, scaled so that activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    h, m = config["hidden_size"], config["intermediate_size"]

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def linear(name, out_f, in_f):
        w[name + ".weight"] = randn(out_f, in_f, std=1.0 / math.sqrt(in_f))
        w[name + ".bias"] = randn(out_f, std=0.1)

    def norm(name):
        w[name + ".weight"] = 1.0 + randn(h, std=0.1)
        w[name + ".bias"] = randn(h, std=0.1)

    w = {
        "text_model.embeddings.token_embedding.weight": randn(config["vocab_size"], h, std=0.5),
        "text_model.embeddings.position_embedding.weight": randn(
            config["max_position_embeddings"], h, std=0.3),
        # Older checkpoints carry this buffer; a reader must tolerate it.
        "text_model.embeddings.position_ids": torch.arange(
            config["max_position_embeddings"], dtype=torch.int64)[None],
    }
    for i in range(config["num_hidden_layers"]):
        p = _prefix(i)
        norm(p + "layer_norm1")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(p + "self_attn." + proj, h, h)
        norm(p + "layer_norm2")
        linear(p + "mlp.fc1", m, h)
        linear(p + "mlp.fc2", h, m)
    norm("text_model.final_layer_norm")
    return w


def write_tiny(folder, seed=0, **overrides):
    """Writes a diffusers text_encoder folder (config.json + model.safetensors) to `folder`.

    `overrides` replace entries of the tiny config (e.g. hidden_act="gelu"). Returns the config.
    """
    config = dict(TINY_CONFIG)
    config.update(overrides)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**_EXTRA_FIELDS, **config}, f, indent=2, sort_keys=True)
    st_io.save(os.path.join(folder, "model.safetensors"), make_weights(config, seed),
               {"format": "pt"})
    return config


def _activation(name, x):
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise ValueError(f"unsupported hidden_act {name!r}")


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def encode(config, weights, input_ids, clip_skip=0):
    """Hidden states [B, T, hidden] in float64 for int64 `input_ids` [B, T]."""
    w = {k: v.double() for k, v in weights.items() if v.is_floating_point()}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    batch, t = input_ids.shape
    hidden = config["hidden_size"]
    d = hidden // heads

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    x = w["text_model.embeddings.token_embedding.weight"][input_ids]
    x = x + w["text_model.embeddings.position_embedding.weight"][:t]
    future = torch.ones(t, t, dtype=torch.bool).triu(1)  # key j > query i is hidden
    for i in range(config["num_hidden_layers"] - clip_skip):
        p = _prefix(i)
        y = _layer_norm(x, w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps)

        def split(z):
            return z.reshape(batch, t, heads, d).permute(0, 2, 1, 3)

        q = split(lin(y, p + "self_attn.q_proj"))
        k = split(lin(y, p + "self_attn.k_proj"))
        v = split(lin(y, p + "self_attn.v_proj"))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(future, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ v
        attn = attn.permute(0, 2, 1, 3).reshape(batch, t, hidden)
        x = x + lin(attn, p + "self_attn.out_proj")
        y = _layer_norm(x, w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps)
        y = lin(_activation(config["hidden_act"], lin(y, p + "mlp.fc1")), p + "mlp.fc2")
        x = x + y
    return _layer_norm(x, w["text_model.final_layer_norm.weight"],
                       w["text_model.final_layer_norm.bias"], eps)


def _input_ids(vocab, t, seed):
    """Two prompts shaped like tokenizer output: BOS, words, EOS, then EOS padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((2, t), vocab - 1, dtype=torch.int64)
    ids[:, 0] = vocab - 2
    for row, words in enumerate((t // 2, t - 3)):
        ids[row, 1:1 + words] = torch.randint(0, vocab - 2, (words,), generator=g)
    return ids


def main(out_dir):
    variants = {
        # SD1-like: OpenAI CLIP activation, full 77-token context.
        "quick": (dict(), 77, 0),
        # SD2-like: OpenCLIP's exact GELU, a third layer, a shorter sequence.
        "gelu": (dict(hidden_act="gelu", num_hidden_layers=3), 16, 1),
    }
    reference = {}
    for name, (overrides, t, seed) in variants.items():
        folder = os.path.join(out_dir, name)
        config = write_tiny(folder, seed=seed, **overrides)
        weights = st_io.load(os.path.join(folder, "model.safetensors"))
        ids = _input_ids(config["vocab_size"], t, seed + 100)
        reference[name + ".input_ids"] = ids
        for skip in (0, 1):
            reference[f"{name}.skip{skip}"] = encode(config, weights, ids, skip).float()
    st_io.save(os.path.join(out_dir, "reference.safetensors"), reference)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
