#!/usr/bin/env bash
# Diffusion engine against PyTorch eager, on a Stable Diffusion 1.5-shaped model with random
# weights (bench/diffusion_torch.py make-sd15; written once, 4.4 GB, under bench/results/).
#
# Runs, all with THREADS intra-op threads on both sides:
#   1. UNet step (batch 2 as with guidance, 64x64 latents, 77x768 context): megaserve
#      (build/release/diffusion_bench unet) against the same network and weights in eager
#      PyTorch (tests/diffusion/ref_unet.py, diffusers' module layout), same inputs; prints the
#      ratio and how far the two outputs are apart. Target: megaserve >= 1.3x faster. For
#      reference, PyTorch once more with OPENBLAS_NUM_THREADS=1.
#   2. VAE decode of a 1024x1024 image, tiled and untiled, each in its own process: peak
#      resident memory. Target: tiled <= 50% of untiled.
#   3. A full 20-step 512x512 generation with `megaserve generate` (euler_a, guidance 7.5),
#      fp32 and, when the CPU has AVX512-BF16, bf16 with the PSNR between the two images.
#   bench/diffusion.sh [BUILD_DIR]     (default build/release; builds diffusion_bench)
# Environment: THREADS (nproc), UNET_STEPS (3 timed steps after a warm-up), MODEL_DIR.
# PyTorch's OpenBLAS runs with its own defaults: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are
# unset for this script alone.
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
build=${1:-build/release}
threads=${THREADS:-$(nproc)}
steps=${UNET_STEPS:-3}
model=${MODEL_DIR:-bench/results/sd15-random}
py=/usr/bin/python3
cmake --build "$build" --target diffusion_bench megaserve megaserve_torch >/dev/null
tmp=$(mktemp -d -t megaserve-diffusion.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

field() { grep -o "$1=[0-9.a-z+-]*" <<<"$2" | tail -n 1 | cut -d= -f2; }
run() {  # label, command... -> prints the run, sets $out
  echo "== $1" >&2
  shift
  out=$("$@" 2>&1)
  echo "$out" >&2
}

$py bench/diffusion_torch.py make-sd15 "$model" >&2

run "UNet step, megaserve" "$build/diffusion_bench" unet --model "$model/unet" --steps "$steps" \
  --threads "$threads" --out "$tmp/ours.safetensors"
ours_ms=$(field unet_step_ms "$out")
run "UNet step, PyTorch eager" $py bench/diffusion_torch.py unet "$model/unet" --steps "$steps" \
  --threads "$threads" --out "$tmp/torch.safetensors"
torch_ms=$(field unet_step_ms "$out")
# For reference only: eager PyTorch with OpenBLAS confined to the calling thread, which removes
# the contention between its two thread pools that megaserve avoids by design (its products are
# then single-threaded, since eager PyTorch does not split them over OpenMP itself).
run "UNet step, PyTorch eager, OPENBLAS_NUM_THREADS=1" env OPENBLAS_NUM_THREADS=1 $py \
  bench/diffusion_torch.py unet "$model/unet" --steps "$steps" --threads "$threads"
torch_blas1_ms=$(field unet_step_ms "$out")
run "UNet outputs compared" $py bench/diffusion_torch.py compare "$tmp/ours.safetensors" \
  "$tmp/torch.safetensors"
unet_diff=$(field max_abs_diff "$out")

run "VAE decode 1024x1024, untiled" "$build/diffusion_bench" vae-decode --model "$model/vae" \
  --size 1024 --tiled off --threads "$threads"
untiled_mib=$(field peak_rss_mib "$out"); untiled_s=$(field seconds "$out")
run "VAE decode 1024x1024, tiled" "$build/diffusion_bench" vae-decode --model "$model/vae" \
  --size 1024 --tiled on --threads "$threads"
tiled_mib=$(field peak_rss_mib "$out"); tiled_s=$(field seconds "$out")

gen() {  # dtype -> seconds of the whole command
  local start end
  start=$(date +%s.%N)
  "$build/megaserve" generate --model "$model" --prompt "a photo of a cat" --steps 20 \
    --size 512x512 --seed 42 --threads "$threads" --dtype "$1" --out "$tmp/$1.png" -q >&2
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}'
}
echo "== 20-step 512x512 generation, fp32" >&2
gen_fp32=$(gen fp32)
bf16_line="(this CPU has no AVX512-BF16: bf16 not measured)"
if grep -qw avx512_bf16 /proc/cpuinfo; then
  echo "== 20-step 512x512 generation, bf16" >&2
  gen_bf16=$(gen bf16)
  psnr=$($py bench/diffusion_torch.py psnr "$tmp/bf16.png" "$tmp/fp32.png")
  bf16_line="bf16: ${gen_bf16} s, PSNR vs fp32 $(field psnr_db "$psnr") dB (target >= 35)"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }
verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? v >= t : v <= t; print ok ? "ok" : "MISS"}'; }
speedup=$(ratio "$torch_ms" "$ours_ms")
mem_ratio=$(ratio "$tiled_mib" "$untiled_mib")
echo
printf '%-58s %12s %10s %6s\n' measurement value target ""
printf '%-58s %12s %10s %6s\n' "UNet step ms, megaserve fp32" "$ours_ms" "" ""
printf '%-58s %12s %10s %6s\n' "UNet step ms, PyTorch eager fp32" "$torch_ms" "" ""
printf '%-58s %12s %10s %6s\n' "UNet speed-up (PyTorch / megaserve)" "$speedup" ">= 1.30" "$(verdict "$speedup" ">=" 1.3)"
printf '%-58s %12s %10s %6s\n' "  PyTorch eager, OPENBLAS_NUM_THREADS=1 (reference), ms" "$torch_blas1_ms" "" ""
printf '%-58s %12s %10s %6s\n' "  speed-up over that" "$(ratio "$torch_blas1_ms" "$ours_ms")" "" ""
printf '%-58s %12s %10s %6s\n' "  max |difference| of the two UNet outputs" "$unet_diff" "" ""
printf '%-58s %12s %10s %6s\n' "VAE 1024x1024 peak RSS MiB, untiled ($untiled_s s)" "$untiled_mib" "" ""
printf '%-58s %12s %10s %6s\n' "VAE 1024x1024 peak RSS MiB, tiled ($tiled_s s)" "$tiled_mib" "" ""
printf '%-58s %12s %10s %6s\n' "tiled / untiled peak RSS" "$mem_ratio" "<= 0.50" "$(verdict "$mem_ratio" "<=" 0.5)"
printf '%-58s %12s %10s %6s\n' "20-step 512x512 generation, fp32, seconds" "$gen_fp32" "" ""
echo "$bf16_line"
echo "($threads threads on $(nproc) cores; random SD1.5-shaped weights in $model)"
