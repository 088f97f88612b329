"""PyTorch side of bench/diffusion.sh: random-weight Stable Diffusion 1.5-shaped models and the
eager PyTorch UNet timing they are compared with.

  diffusion_torch.py make-sd15 DIR          diffusers folder with SD1.5's shapes, random weights
  diffusion_torch.py unet DIR/unet [--steps 3] [--threads 2] [--out OUT.safetensors]
      times the eager UNet (tests/diffusion/ref_unet.py, diffusers' module layout and attention)
      on the inputs bench/diffusion_bench.cc draws (same generator and seeds)
  diffusion_torch.py compare A.safetensors B.safetensors   max |a - b| and its ratio to max |b|
  diffusion_torch.py psnr A.png B.png                      PSNR in dB of two 8-bit images
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "diffusion"))
import make_tiny_pipeline  # noqa: E402
import ref_clip  # noqa: E402
import ref_unet  # noqa: E402
import ref_vae  # noqa: E402
import st_io  # noqa: E402
import tiny_tokenizer  # noqa: E402

SD15_UNET = {
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "sample_size": 64,
}
SD15_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "norm_num_groups": 32, "sample_size": 512,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4}
SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "vocab_size": 49408, "max_position_embeddings": 77}


def make_sd15(out):
    if os.path.exists(os.path.join(out, "model_index.json")):
        print(f"{out}: already there")
        return
    torch.manual_seed(0)
    for part in ("text_encoder", "unet", "vae", "tokenizer", "scheduler"):
        os.makedirs(os.path.join(out, part), exist_ok=True)
    print("writing the SD1.5-shaped UNet (random weights, 3.4 GB)...", flush=True)
    ref_unet.write_tiny(os.path.join(out, "unet"), seed=1, **SD15_UNET)
    print("writing the VAE and the text encoder...", flush=True)
    ref_vae.write_tiny(os.path.join(out, "vae"), seed=2, **SD15_VAE)
    ref_clip.write_tiny(os.path.join(out, "text_encoder"), seed=3, **SD15_TEXT)
    tiny_tokenizer.write_tiny(os.path.join(out, "tokenizer"))
    # model_index.json and the scheduler last: their presence marks a complete folder.
    make_tiny_pipeline.write_index_and_scheduler(out)


def time_unet(folder, steps, threads, out, batch=2, latent=64):
    torch.set_num_threads(threads)
    model = ref_unet.load(folder)
    cfg = model.cfg
    g = torch.Generator().manual_seed(1234)
    sample = torch.randn(batch, cfg["in_channels"], latent, latent, generator=g)
    context = torch.randn(batch, 77, cfg["cross_attention_dim"], generator=g)
    t = torch.full((batch,), 999.0)
    times = []
    with torch.inference_mode():
        for i in range(steps + 1):
            s = time.perf_counter()
            result = model(sample, t, context)
            took = (time.perf_counter() - s) * 1000
            print(f"step {i}: {took:.0f} ms{' (warm-up)' if i == 0 else ''}", flush=True)
            if i > 0:
                times.append(took)
    print(f"result unet_step_ms={statistics.median(times):.1f} threads={torch.get_num_threads()}")
    if out:
        st_io.save(out, {"out": result})


def compare(a, b):
    x, y = st_io.load(a)["out"], st_io.load(b)["out"]
    diff = (x - y).abs().max().item()
    print(f"result max_abs_diff={diff:.3g} relative={diff / y.abs().max().item():.3g}")


def read_png_rgb(path):
    from PIL import Image
    with Image.open(path) as im:
        return torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8).float()


def psnr(a, b):
    x, y = read_png_rgb(a), read_png_rgb(b)
    mse = ((x - y) ** 2).mean().item()
    value = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    print(f"result psnr_db={value:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-sd15")
    m.add_argument("dir")
    u = sub.add_parser("unet")
    u.add_argument("dir")
    u.add_argument("--steps", type=int, default=3)
    u.add_argument("--threads", type=int, default=2)
    u.add_argument("--out", default="")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    s = sub.add_parser("psnr")
    s.add_argument("a")
    s.add_argument("b")
    args = p.parse_args()
    if args.cmd == "make-sd15":
        make_sd15(args.dir)
    elif args.cmd == "unet":
        time_unet(args.dir, args.steps, args.threads, args.out)
    elif args.cmd == "compare":
        compare(args.a, args.b)
    else:
        psnr(args.a, args.b)


if __name__ == "__main__":
    main()
