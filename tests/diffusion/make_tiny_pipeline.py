"""Assembles a tiny Stable Diffusion model folder in the diffusers layout, with random weights.

The components come from the reference modules (ref_clip, ref_unet, ref_vae, tiny_tokenizer),
sized by the shared tiny configuration so they fit together: a 32-wide CLIP text encoder
feeding a [32, 64] UNet, and a [16, 32] VAE (2 image pixels per latent pixel).

usage: make_tiny_pipeline.py OUT_DIR [--nan-vae] [--prediction-type epsilon|v_prediction]
                             [--single-file sd1|sd2]
  --nan-vae       the VAE's last bias is NaN, so every image is NaN (tests the failure path)
  --single-file   instead, OUT_DIR/tiny.safetensors: a single-file checkpoint in the original
                  key names (ref_checkpoint.py), with the tiny tokenizer in OUT_DIR/tokenizer
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_checkpoint  # noqa: E402
import ref_clip  # noqa: E402
import ref_unet  # noqa: E402
import ref_vae  # noqa: E402
import st_io  # noqa: E402
import tiny_tokenizer  # noqa: E402

SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


def write(out, nan_vae=False, prediction_type="epsilon", seed=0):
    os.makedirs(out, exist_ok=True)
    for part in ("text_encoder", "unet", "vae", "tokenizer", "scheduler"):
        os.makedirs(os.path.join(out, part), exist_ok=True)
    ref_clip.write_tiny(os.path.join(out, "text_encoder"), seed=seed)
    ref_unet.write_tiny(os.path.join(out, "unet"), seed=seed + 1)
    ref_vae.write_tiny(os.path.join(out, "vae"), seed=seed + 2)
    tiny_tokenizer.write_tiny(os.path.join(out, "tokenizer"))
    if nan_vae:
        path = os.path.join(out, "vae", "diffusion_pytorch_model.safetensors")
        weights = st_io.load(path)
        weights["decoder.conv_out.bias"][:] = float("nan")
        st_io.save(path, weights)
    write_index_and_scheduler(out, prediction_type)


def write_index_and_scheduler(out, prediction_type="epsilon"):
    """Writes scheduler/scheduler_config.json (SD1.5's schedule) and model_index.json."""
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    scheduler = dict(SCHEDULER, prediction_type=prediction_type)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(scheduler, f, indent=2)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"],
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--nan-vae", action="store_true")
    parser.add_argument("--prediction-type", default="epsilon")
    parser.add_argument("--single-file", choices=["sd1", "sd2"])
    args = parser.parse_args()
    if args.single_file:
        ref_checkpoint.write_tiny(args.out, seed=5, variant=args.single_file, name="tiny",
                                  expected=False)
        tiny_tokenizer.write_tiny(os.path.join(args.out, "tokenizer"))
    else:
        write(args.out, nan_vae=args.nan_vae, prediction_type=args.prediction_type)
