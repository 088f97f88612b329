#!/usr/bin/env bash
# Installs the Debian packages megaserve needs to build, test, benchmark and run.
# Idempotent: installs only what is missing and says what that is. Works as root or via sudo.
#   scripts/setup.sh            everything (build, tests, benchmarks, models, media)
#   scripts/setup.sh --check    list what is missing, install nothing (exit 1 if anything is)
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang-format clang-tidy
  # core, net, metrics, cli
  libboost-dev libssl-dev libsimdjson-dev rapidjson-dev libtomlplusplus-dev libcli11-dev
  libspdlog-dev libfmt-dev libxxhash-dev
  # storage, cache, job store
  libsqlite3-dev libpq-dev libhiredis-dev
  # models (libtorch backend plugin) and BLAS
  libtorch-dev libopenblas0-pthread
  # media
  libpng-dev libjpeg62-turbo-dev libwebp-dev libavcodec-dev libavformat-dev libavutil-dev
  libswscale-dev libx264-dev libvpx-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev redis-server postgresql nginx-light wrk prometheus
  curl procps python3
  # diffusion reference tests (PyTorch in Python) and the safetensors fuzz target (libFuzzer)
  python3-torch python3-numpy python3-pil clang
)

check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi
echo "setup: missing ${#missing[@]} package(s): ${missing[*]}"
((check_only)) && exit 1

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: not root and no sudo; install the packages above" >&2; exit 1; }
  sudo_cmd=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting system services (redis, postgresql, nginx): megaserve's
# tests and benchmarks start their own throwaway instances on loopback.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
  "${sudo_cmd[@]}" chmod +x "$policy"
  added_policy=1
fi
cleanup() { ((added_policy)) && "${sudo_cmd[@]}" rm -f "$policy"; return 0; }
trap cleanup EXIT

"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: installed ${missing[*]}"
