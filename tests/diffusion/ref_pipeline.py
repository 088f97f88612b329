"""Reference text-to-image loop in plain PyTorch, over the reference components, for the
pipeline test: CLIP encodes the prompt and the negative prompt, seeded Gaussian latent noise is
denoised by the UNet with classifier-free guidance (one batch of [negative, prompt]) under DDIM
(eta 0, diffusers' leading timestep spacing), and the VAE decodes the latent.

usage: ref_pipeline.py MODEL_DIR OUT.safetensors --prompt P [--negative N] [--steps 4]
                       [--guidance 7.5] [--seed 7] [--width 32] [--height 24]
Writes {"rgb": uint8 [H, W, 3]}.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_clip  # noqa: E402
import ref_tokenizer  # noqa: E402
import ref_unet  # noqa: E402
import ref_vae  # noqa: E402
import st_io  # noqa: E402


def read_json(path):
    with open(path) as f:
        return json.load(f)


def ddim(model_dir, steps):
    """Timesteps and alphas_cumprod of the folder's schedule (scaled_linear, float32)."""
    cfg = read_json(os.path.join(model_dir, "scheduler", "scheduler_config.json"))
    n = cfg["num_train_timesteps"]
    betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n,
                           dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    ratio = n // steps
    timesteps = [i * ratio + cfg["steps_offset"] for i in reversed(range(steps))]
    return timesteps, ratio, alphas_cumprod


def generate(model_dir, prompt, negative, steps, guidance, seed, width, height):
    tok = ref_tokenizer.Tokenizer(os.path.join(model_dir, "tokenizer"))
    te_cfg = read_json(os.path.join(model_dir, "text_encoder", "config.json"))
    te_w = st_io.load(os.path.join(model_dir, "text_encoder", "model.safetensors"))

    def encode(text):
        ids = torch.tensor([tok.encode(text, te_cfg["max_position_embeddings"])])
        return ref_clip.encode(te_cfg, te_w, ids).float()

    context = torch.cat([encode(negative), encode(prompt)])
    unet = ref_unet.load(os.path.join(model_dir, "unet"))
    vae_cfg = read_json(os.path.join(model_dir, "vae", "config.json"))
    vae = ref_vae.Vae(vae_cfg, st_io.load(os.path.join(model_dir, "vae",
                                                       "diffusion_pytorch_model.safetensors")))
    down = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, height // down, width // down, generator=g)
    timesteps, ratio, ac = ddim(model_dir, steps)
    with torch.no_grad():
        for t in timesteps:
            eps = unet(torch.cat([x, x]), torch.full((2,), float(t)), context)
            eps = eps[0:1] + guidance * (eps[1:2] - eps[0:1])
            a_t = ac[t]
            a_prev = ac[t - ratio] if t - ratio >= 0 else ac[0]
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        image = vae.decode(x / vae_cfg.get("scaling_factor", 0.18215))
    return ((image[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--height", type=int, default=24)
    a = p.parse_args()
    torch.set_num_threads(1)
    rgb = generate(a.model_dir, a.prompt, a.negative, a.steps, a.guidance, a.seed, a.width,
                   a.height)
    st_io.save(a.out, {"rgb": rgb.contiguous()})
