// libFuzzer target for the safetensors header parser (SafetensorsFile::Parse).
//
// Any byte string must either be rejected with a Status or yield views that lie wholly inside
// the input: every byte of every view is read so that AddressSanitizer catches a view that
// escapes the buffer, and the per-tensor invariants the parser promises are checked with
// __builtin_trap() so that libFuzzer records a violation as a crash.
// Build and run: scripts/fuzz_safetensors.sh [seconds].
#include <cstddef>
#include <cstdint>
#include <span>

#include "diffusion/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using megaserve::diffusion::SafetensorsFile;
  auto file = SafetensorsFile::Parse(
      std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size), "fuzz");
  if (!file.ok()) {
    // A rejection must say why.
    if (file.status().message().empty()) __builtin_trap();
    return 0;
  }
  const auto* begin = reinterpret_cast<const std::byte*>(data);
  const auto* end = begin + size;
  unsigned checksum = 0;
  for (const auto& t : (*file)->tensors()) {
    if (t.nbytes != 0 && (t.data < begin || t.data + t.nbytes > end)) __builtin_trap();
    if (static_cast<uint64_t>(t.numel()) * megaserve::diffusion::DTypeSize(t.dtype) != t.nbytes) {
      __builtin_trap();
    }
    if ((*file)->Find(t.name) != &t) __builtin_trap();
    for (std::size_t i = 0; i < t.nbytes; ++i) checksum += std::to_integer<unsigned>(t.data[i]);
  }
  // Keeps the reads from being optimised away.
  volatile unsigned sink = checksum;
  (void)sink;
  return 0;
}
