"""Reference AutoencoderKL (the Stable Diffusion VAE) in plain PyTorch, for the C++ tests.

Written from the published architecture (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", and the diffusers AutoencoderKL layout): weights are read by their
diffusers names from a dict, and every layer is a torch.nn.functional call, so nothing here
shares code with the C++ implementation under test.

  encoder: conv_in -> per level: resnets (+ stride-2 conv after zero padding right/bottom by
           one, except the last level) -> mid (resnet, single-head attention, resnet)
           -> GroupNorm -> SiLU -> conv_out (2 * latent channels) ; then quant_conv (1x1)
  decoder: post_quant_conv (1x1) -> conv_in -> mid -> per level, widest first:
           layers_per_block + 1 resnets (+ nearest 2x upsample and conv, except the last)
           -> GroupNorm -> SiLU -> conv_out

usage: ref_vae.py OUT_DIR
  writes OUT_DIR/vae        tiny VAE folder (config.json + diffusion_pytorch_model.safetensors)
         OUT_DIR/vae_old    the same weights under the deprecated attention names
                            (query/key/value/proj_attn, shaped [C, C, 1, 1] like 1x1 convs)
         OUT_DIR/vae_noattn another tiny VAE, with mid_block_add_attention false
         OUT_DIR/decode.safetensors  z [2, 4, 8, 8] -> image [2, 3, 16, 16] (post_quant_conv +
                                     decoder; z already divided by scaling_factor), and
                                     image_noattn from vae_noattn
         OUT_DIR/encode.safetensors  x [1, 3, 32, 32] -> moments [1, 8, 16, 16]
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

import st_io

# The tiny VAE every helper's pipeline test shares.
TINY_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [16, 32],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 16,
    "scaling_factor": 0.18215,
}

EPS = 1e-6  # every GroupNorm of the VAE


# ---------------------------------------------------------------- random weights

def _random_weights(cfg, gen):
    """Random weights under the diffusers names, scaled so activations stay O(1)."""
    w = {}
    groups = cfg["norm_num_groups"]

    def conv(name, cin, cout, k, gain=1.0):
        std = gain / math.sqrt(cin * k * k)
        w[name + ".weight"] = torch.randn(cout, cin, k, k, generator=gen) * std
        w[name + ".bias"] = torch.randn(cout, generator=gen) * 0.05

    def linear(name, cin, cout, gain=1.0):
        w[name + ".weight"] = torch.randn(cout, cin, generator=gen) * (gain / math.sqrt(cin))
        w[name + ".bias"] = torch.randn(cout, generator=gen) * 0.05

    def norm(name, c):
        assert c % groups == 0
        w[name + ".weight"] = 1.0 + 0.1 * torch.randn(c, generator=gen)
        w[name + ".bias"] = 0.1 * torch.randn(c, generator=gen)

    def resnet(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3, gain=0.5)
        if cin != cout:
            conv(name + ".conv_shortcut", cin, cout, 1)

    def mid(name, c):
        resnet(name + ".resnets.0", c, c)
        if cfg.get("mid_block_add_attention", True):
            a = name + ".attentions.0"
            norm(a + ".group_norm", c)
            # q and k scaled up so the softmax is neither uniform nor one-hot.
            linear(a + ".to_q", c, c, gain=2.0)
            linear(a + ".to_k", c, c, gain=2.0)
            linear(a + ".to_v", c, c)
            linear(a + ".to_out.0", c, c, gain=0.5)
        resnet(name + ".resnets.1", c, c)

    ch = cfg["block_out_channels"]
    lat = cfg["latent_channels"]
    n = cfg["layers_per_block"]
    conv("encoder.conv_in", cfg["in_channels"], ch[0], 3)
    cout = ch[0]
    for i, c in enumerate(ch):
        cin, cout = cout, c
        for j in range(n):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i != len(ch) - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout, 3)
    mid("encoder.mid_block", ch[-1])
    norm("encoder.conv_norm_out", ch[-1])
    conv("encoder.conv_out", ch[-1], 2 * lat, 3)
    if cfg.get("use_quant_conv", True):
        conv("quant_conv", 2 * lat, 2 * lat, 1)
    if cfg.get("use_post_quant_conv", True):
        conv("post_quant_conv", lat, lat, 1)
    rch = list(reversed(ch))
    conv("decoder.conv_in", lat, rch[0], 3)
    mid("decoder.mid_block", rch[0])
    cout = rch[0]
    for i, c in enumerate(rch):
        cin, cout = cout, c
        for j in range(n + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i != len(rch) - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
    norm("decoder.conv_norm_out", ch[0])
    conv("decoder.conv_out", ch[0], cfg["out_channels"], 3)
    return w


def write_tiny(folder, seed=0, **overrides):
    """Writes a diffusers `vae` folder (config.json + random fp32 weights); returns (config,
    weights). `overrides` replace config fields (e.g. block_out_channels=[32, 64])."""
    cfg = dict(TINY_CONFIG)
    levels = len(overrides.get("block_out_channels", cfg["block_out_channels"]))
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * levels
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * levels
    cfg.update(overrides)
    gen = torch.Generator().manual_seed(seed)
    w = _random_weights(cfg, gen)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_io.save(os.path.join(folder, "diffusion_pytorch_model.safetensors"), w,
               metadata={"format": "pt"})
    return cfg, w


def to_old_attention_names(w):
    """The same weights as published before diffusers renamed the attention projections, with
    the projections shaped like 1x1 convolutions as in checkpoints converted from the original
    format."""
    rename = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for name, t in w.items():
        new = name
        for a, b in rename.items():
            marker = ".attentions.0." + a + "."
            if marker in name:
                new = name.replace(marker, ".attentions.0." + b + ".")
                if t.dim() == 2:
                    t = t[:, :, None, None]
        out[new] = t
    return out


# ---------------------------------------------------------------- forward pass

class Vae:
    def __init__(self, cfg, w):
        self.cfg = cfg
        self.w = w
        self.groups = cfg["norm_num_groups"]

    def _conv(self, name, x, stride=1, padding=None):
        k = self.w[name + ".weight"]
        pad = k.shape[-1] // 2 if padding is None else padding
        return F.conv2d(x, k, self.w[name + ".bias"], stride=stride, padding=pad)

    def _norm(self, name, x):
        return F.group_norm(x, self.groups, self.w[name + ".weight"], self.w[name + ".bias"], EPS)

    def _resnet(self, name, x):
        h = self._conv(name + ".conv1", F.silu(self._norm(name + ".norm1", x)))
        h = self._conv(name + ".conv2", F.silu(self._norm(name + ".norm2", h)))
        if name + ".conv_shortcut.weight" in self.w:
            x = self._conv(name + ".conv_shortcut", x)
        return x + h

    def _attention(self, name, x):
        b, c, hh, ww = x.shape
        t = self._norm(name + ".group_norm", x).reshape(b, c, hh * ww).transpose(1, 2)

        def lin(p, v):
            return F.linear(v, self.w[f"{name}.{p}.weight"], self.w[f"{name}.{p}.bias"])

        q, k, v = lin("to_q", t), lin("to_k", t), lin("to_v", t)
        p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)  # one head of width C
        o = lin("to_out.0", p @ v)
        return x + o.transpose(1, 2).reshape(b, c, hh, ww)

    def _mid(self, name, x):
        x = self._resnet(name + ".resnets.0", x)
        if self.cfg.get("mid_block_add_attention", True):
            x = self._attention(name + ".attentions.0", x)
        return self._resnet(name + ".resnets.1", x)

    def encode_moments(self, x):
        ch = self.cfg["block_out_channels"]
        n = self.cfg["layers_per_block"]
        h = self._conv("encoder.conv_in", x)
        for i in range(len(ch)):
            for j in range(n):
                h = self._resnet(f"encoder.down_blocks.{i}.resnets.{j}", h)
            if i != len(ch) - 1:
                h = F.pad(h, (0, 1, 0, 1))  # asymmetric: the stride-2 conv sees right/bottom pad
                h = self._conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", h, 2, 0)
        h = self._mid("encoder.mid_block", h)
        h = self._conv("encoder.conv_out", F.silu(self._norm("encoder.conv_norm_out", h)))
        if self.cfg.get("use_quant_conv", True):
            h = self._conv("quant_conv", h)
        return h

    def decode(self, z):
        ch = self.cfg["block_out_channels"]
        n = self.cfg["layers_per_block"]
        if self.cfg.get("use_post_quant_conv", True):
            z = self._conv("post_quant_conv", z)
        h = self._conv("decoder.conv_in", z)
        h = self._mid("decoder.mid_block", h)
        for i in range(len(ch)):
            for j in range(n + 1):
                h = self._resnet(f"decoder.up_blocks.{i}.resnets.{j}", h)
            if i != len(ch) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self._conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", h)
        return self._conv("decoder.conv_out", F.silu(self._norm("decoder.conv_norm_out", h)))


def main(out_dir):
    torch.set_grad_enabled(False)
    cfg, w = write_tiny(os.path.join(out_dir, "vae"), seed=0)
    old = os.path.join(out_dir, "vae_old")
    os.makedirs(old, exist_ok=True)
    with open(os.path.join(old, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_io.save(os.path.join(old, "diffusion_pytorch_model.safetensors"),
               to_old_attention_names(w), metadata={"format": "pt"})

    vae = Vae(cfg, w)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, cfg["latent_channels"], 8, 8, generator=gen)
    cfg_na, w_na = write_tiny(os.path.join(out_dir, "vae_noattn"), seed=2,
                              mid_block_add_attention=False)
    st_io.save(os.path.join(out_dir, "decode.safetensors"),
               {"z": z, "image": vae.decode(z), "image_noattn": Vae(cfg_na, w_na).decode(z)})
    x = torch.rand(1, cfg["in_channels"], 32, 32, generator=gen) * 2 - 1
    st_io.save(os.path.join(out_dir, "encode.safetensors"),
               {"x": x, "moments": vae.encode_moments(x)})


if __name__ == "__main__":
    main(sys.argv[1])
