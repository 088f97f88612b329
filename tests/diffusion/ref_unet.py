"""Reference UNet2DConditionModel (Stable Diffusion 1.x / 2.x) in plain PyTorch eager.

Written from the published latent-diffusion architecture (Rombach et al. 2022) with the module
and parameter names of Hugging Face diffusers, so the weight files it writes have the names
users' files have. Attention is computed the way eager PyTorch 1.13 does it: heads folded into
the batch, baddbmm for the scores, softmax, bmm.

Library use: `write_tiny(folder, seed=0, **overrides)` writes a diffusers `unet/` folder
(config.json + diffusion_pytorch_model.safetensors) with random weights scaled so activations
stay O(1); `build(config)` / `load(folder)` give the module.

CLI (used by src/diffusion/torch/unet_test.cc):
    ref_unet.py OUT_DIR
writes OUT_DIR/sd1 (the shared tiny SD1-style config) and OUT_DIR/sd2 (linear projections,
per-block head counts, two layers per block, other timestep-embedding flags, fp16 weight file),
each with inputs.safetensors and expected.safetensors, and OUT_DIR/sd1/odd_*.safetensors for a
latent size that is not a multiple of the up-sampling factor.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

TINY_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [32, 64],
    "center_input_sample": False,
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 8,
    "out_channels": 4,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}

DEFAULTS = {
    "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1.0, "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 1280, "attention_head_dim": 8, "use_linear_projection": False,
    "transformer_layers_per_block": 1, "time_embedding_dim": None, "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}


def per_block(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb, groups, eps, scale=1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.scale = scale

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (skip + h) / self.scale


class Attention(nn.Module):
    def __init__(self, dim, context_dim, heads, head_dim):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.scale = head_dim ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def split_heads(self, t):
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3).reshape(
            b * self.heads, n, c // self.heads)

    def forward(self, x, context=None):
        context = x if context is None else context
        q = self.split_heads(self.to_q(x))
        k = self.split_heads(self.to_k(context))
        v = self.split_heads(self.to_v(context))
        scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype),
                               q, k.transpose(1, 2), beta=0, alpha=self.scale)
        probs = scores.float().softmax(dim=-1).to(q.dtype)
        o = torch.bmm(probs, v)
        bh, n, d = o.shape
        o = o.reshape(bh // self.heads, self.heads, n, d).permute(0, 2, 1, 3).reshape(
            bh // self.heads, n, self.heads * d)
        return self.to_out[1](self.to_out[0](o))


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, head_dim, context_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, context_dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    def __init__(self, heads, head_dim, channels, layers, context_dim, groups, linear):
        super().__init__()
        inner = heads * head_dim
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, head_dim, context_dim) for _ in range(layers)])
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x, context):
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        if self.linear:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(b, hgt * wid, c))
        else:
            h = self.proj_in(h)
            h = h.permute(0, 2, 3, 1).reshape(b, hgt * wid, h.shape[1])
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h).reshape(b, hgt, wid, c).permute(0, 3, 1, 2).contiguous()
        else:
            h = h.reshape(b, hgt, wid, h.shape[-1]).permute(0, 3, 1, 2).contiguous()
            h = self.proj_out(h)
        return h + x


class Downsample2D(nn.Module):
    def __init__(self, channels, padding):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class DownBlock(nn.Module):
    def __init__(self, cin, cout, temb, layers, cfg, heads, tlayers, cross, add_down):
        super().__init__()
        g, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, temb, g, eps) for i in range(layers)])
        if cross:
            self.attentions = nn.ModuleList([
                Transformer2DModel(heads, cout // heads, cout, tlayers, cfg["cross_attention_dim"],
                                   g, cfg["use_linear_projection"]) for _ in range(layers)])
        else:
            self.attentions = None
        self.downsamplers = (nn.ModuleList([Downsample2D(cout, cfg["downsample_padding"])])
                             if add_down else None)

    def forward(self, x, temb, context):
        outs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            outs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outs.append(x)
        return x, outs


class MidBlock(nn.Module):
    def __init__(self, channels, temb, cfg, heads, tlayers):
        super().__init__()
        g, eps, s = cfg["norm_num_groups"], cfg["norm_eps"], cfg["mid_block_scale_factor"]
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(channels, channels, temb, g, eps, s) for _ in range(2)])
        self.attentions = nn.ModuleList([
            Transformer2DModel(heads, channels // heads, channels, tlayers,
                               cfg["cross_attention_dim"], g, cfg["use_linear_projection"])])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    def __init__(self, cin, cout, prev, temb, layers, cfg, heads, tlayers, cross, add_up):
        super().__init__()
        g, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        resnets = []
        for i in range(layers):
            skip = cin if i == layers - 1 else cout
            first = prev if i == 0 else cout
            resnets.append(ResnetBlock2D(first + skip, cout, temb, g, eps))
        self.resnets = nn.ModuleList(resnets)
        if cross:
            self.attentions = nn.ModuleList([
                Transformer2DModel(heads, cout // heads, cout, tlayers, cfg["cross_attention_dim"],
                                   g, cfg["use_linear_projection"]) for _ in range(layers)])
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_up else None

    def forward(self, x, skips, temb, context, size):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class TimestepEmbedding(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_features(t, dim, flip, shift):
    """Sinusoidal features of DDPM: sin/cos of t * 10000^(-i / (half - shift))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - shift))
    args = t.float()[:, None] * freqs[None, :]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip else [sin, cos], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class UNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        cfg = dict(DEFAULTS)
        cfg.update(config)
        self.cfg = cfg
        boc = cfg["block_out_channels"]
        n = len(boc)
        heads = per_block(cfg["attention_head_dim"], n)  # diffusers: these are head COUNTS
        tlayers = per_block(cfg["transformer_layers_per_block"], n)
        layers = per_block(cfg["layers_per_block"], n)
        temb = cfg["time_embedding_dim"] or boc[0] * 4
        kin, kout = cfg["conv_in_kernel"], cfg["conv_out_kernel"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], kin, padding=(kin - 1) // 2)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        self.down_blocks = nn.ModuleList()
        cout = boc[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            cin, cout = cout, boc[i]
            self.down_blocks.append(DownBlock(cin, cout, temb, layers[i], cfg, heads[i], tlayers[i],
                                              kind == "CrossAttnDownBlock2D", i < n - 1))
        self.mid_block = MidBlock(boc[-1], temb, cfg, heads[-1], tlayers[-1])
        self.up_blocks = nn.ModuleList()
        rboc, rheads, rt, rl = boc[::-1], heads[::-1], tlayers[::-1], layers[::-1]
        cout = rboc[0]
        for i, kind in enumerate(cfg["up_block_types"]):
            prev, cout = cout, rboc[i]
            cin = rboc[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(cin, cout, prev, temb, rl[i] + 1, cfg, rheads[i], rt[i],
                                          kind == "CrossAttnUpBlock2D", i < n - 1))
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], boc[0], eps=cfg["norm_eps"])
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], kout, padding=(kout - 1) // 2)

    def forward(self, sample, timesteps, context):
        cfg = self.cfg
        if cfg["center_input_sample"]:
            sample = 2 * sample - 1.0
        t = timesteps.expand(sample.shape[0])
        emb = timestep_features(t, cfg["block_out_channels"][0], cfg["flip_sin_to_cos"],
                                cfg["freq_shift"]).to(sample.dtype)
        temb = self.time_embedding(emb)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, outs = block(x, temb, context)
            skips.extend(outs)
        x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            mine = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            size = skips[-1].shape[2:] if skips else None
            x = block(x, mine, temb, context, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def build(config):
    return UNet(config).eval()


def randomize(model, seed):
    """Weights ~ N(0, 1/fan_in) (activations stay O(1)), norms' affine near identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def write_tiny(folder, seed=0, fp16=False, **overrides):
    """Writes config.json and random weights for the tiny shared config (with overrides) into
    `folder`; returns the model (with exactly the weights written)."""
    config = dict(TINY_CONFIG)
    config.update(overrides)
    model = randomize(build(config), seed)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if fp16:
        state = {k: v.half() for k, v in state.items()}
        model.load_state_dict({k: v.float() for k, v in state.items()})
        name = "diffusion_pytorch_model.fp16.safetensors"
    else:
        name = "diffusion_pytorch_model.safetensors"
    st_io.save(os.path.join(folder, name), state)
    return model


def load(folder):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model = build(config)
    path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if not os.path.exists(path):
        path = os.path.join(folder, "diffusion_pytorch_model.fp16.safetensors")
    model.load_state_dict({k: v.float() for k, v in st_io.load(path).items()})
    return model


def write_case(model, folder, prefix, batch, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    sample = torch.randn(batch, cfg["in_channels"], height, width, generator=g)
    timesteps = torch.tensor([981.0, 1.5, 500.0, 37.0][:batch])
    context = torch.randn(batch, 77, cfg["cross_attention_dim"], generator=g)
    with torch.no_grad():
        out = model(sample, timesteps, context)
    st_io.save(os.path.join(folder, prefix + "inputs.safetensors"),
               {"sample": sample, "timesteps": timesteps, "encoder_hidden_states": context})
    st_io.save(os.path.join(folder, prefix + "expected.safetensors"), {"out": out})


def main(out_dir):
    torch.set_num_threads(1)
    sd1 = os.path.join(out_dir, "sd1")
    model = write_tiny(sd1, seed=0)
    write_case(model, sd1, "", 2, 8, 8, seed=1)
    write_case(model, sd1, "odd_", 1, 7, 9, seed=2)
    sd2 = os.path.join(out_dir, "sd2")
    model = write_tiny(sd2, seed=3, fp16=True, use_linear_projection=True,
                       attention_head_dim=[4, 8], layers_per_block=2,
                       transformer_layers_per_block=[1, 2], flip_sin_to_cos=False, freq_shift=1,
                       cross_attention_dim=24)
    write_case(model, sd2, "", 2, 8, 8, seed=4)


if __name__ == "__main__":
    main(sys.argv[1])
