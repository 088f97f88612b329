#!/usr/bin/env bash
# Fuzzes the safetensors header parser with libFuzzer, AddressSanitizer and UBSan.
#   scripts/fuzz_safetensors.sh [seconds]      (default 30)
# Builds src/diffusion/fuzz/safetensors_fuzz.cc with clang++ into a temporary folder, writes a
# small seed corpus of valid and nearly valid files, runs the fuzzer for the given time and exits
# non-zero when it finds a crash, a leak or undefined behaviour (the reproducer is kept in
# $FUZZ_ARTIFACTS, default build/fuzz-artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
artifacts=${FUZZ_ARTIFACTS:-$PWD/build/fuzz-artifacts}
tmp=$(mktemp -d -t megaserve-fuzz.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/corpus" "$artifacts"

# RapidJSON 1.1 offsets a null pointer when its stack first grows (internal/stack.h), which UBSan
# reports although nothing is dereferenced; that one report is suppressed, every other is fatal.
clang++ -std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
  -fsanitize-recover=undefined -Wno-ambiguous-reversed-operator -Isrc \
  src/diffusion/fuzz/safetensors_fuzz.cc src/diffusion/safetensors.cc src/core/status.cc \
  -lfmt -o "$tmp/safetensors_fuzz"

# Writes a seed file: the header's length as 8 little-endian bytes, the header, then the data
# (printf escapes). The headers here are ASCII and shorter than 64 KiB.
seed() {
  local file=$tmp/corpus/$1 header=$2 data=${3:-} n=${#2}
  printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $((n >> 8)))\\0\\0\\0\\0\\0\\0" >"$file"
  printf '%s' "$header" >>"$file"
  printf "$data" >>"$file"
}
t() { printf '"%s":{"dtype":"%s","shape":%s,"data_offsets":%s}' "$@"; }
seed empty '{}'
seed one "{$(t w F32 '[2]' '[0,8]')}" '\x00\x00\x80\x3f\x00\x00\x00\x40'
meta='"__metadata__":{"format":"pt"}'
seed meta "{$meta,$(t a U8 '[1,2]' '[0,2]'),$(t b BF16 '[]' '[2,4]')}" '\x01\x02\x03\x04'
seed empty_tensor "{$(t z I64 '[0,3]' '[0,0]'),$(t e BOOL '[1]' '[0,1]')}" '\x01'
seed overlap "{$(t a I8 '[2]' '[0,2]'),$(t b I8 '[2]' '[1,3]')}" '\x01\x02\x03'
seed padded "{$(t x F16 '[1]' '[0,2]')}        " '\x00\x3c'

echo 'pointer-overflow:rapidjson/internal/stack.h' >"$tmp/ubsan.supp"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$tmp/ubsan.supp"
echo "fuzz: running for ${seconds}s"
status=0
"$tmp/safetensors_fuzz" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$artifacts/" -print_final_stats=1 "$tmp/corpus" 2>"$tmp/log" || status=$?
grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)' \
  "$tmp/log" || true
if [[ $status -ne 0 ]]; then
  tail -n 60 "$tmp/log" >&2
  echo "fuzz: FAILED (exit $status); reproducer in $artifacts" >&2
  exit "$status"
fi
echo "fuzz: no crash in ${seconds}s"
