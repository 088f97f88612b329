// Cache keys hash the request parts with XXH3-128 (https://github.com/Cyan4973/xxHash, the
// XXH3 specification in doc/xxhash_spec.md). Every part is fed to the streaming hasher behind its
// length as a little-endian 64-bit integer, so ("ab", "c") and ("a", "bc") hash differently.
//
// The query is normalized while it is hashed, without building the normalized string: its
// non-empty pieces are sorted by name (stably) in a small on-stack table and fed one by one with
// the '&' separators the normalized string would have, behind the normalized string's length.
// MakeCacheKey(q) therefore equals the key for NormalizeQuery(q) byte for byte.
#include "cache/cache_key.h"

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <vector>

namespace megaserve::cache {
namespace {

// Queries with more pieces than this are normalized through a heap-allocated table.
constexpr std::size_t kInlinePieces = 32;

// Calls fn(piece) for every non-empty '&'-separated piece of the query.
template <class Fn>
void ForEachPiece(std::string_view query, Fn&& fn) {
  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view piece = query.substr(0, amp);
    if (!piece.empty()) fn(piece);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
}

std::string_view PieceName(std::string_view piece) { return piece.substr(0, piece.find('=')); }

// Calls fn(sorted pieces) with the query's pieces in normalized order.
template <class Fn>
void WithSortedPieces(std::string_view query, Fn&& fn) {
  std::size_t count = 0;
  ForEachPiece(query, [&](std::string_view) { ++count; });
  auto sort = [](std::string_view* first, std::string_view* last) {
    std::stable_sort(first, last, [](std::string_view a, std::string_view b) {
      return PieceName(a) < PieceName(b);
    });
  };
  auto fill = [&](std::string_view* out) {
    std::size_t i = 0;
    ForEachPiece(query, [&](std::string_view piece) { out[i++] = piece; });
  };
  if (count <= kInlinePieces) {
    std::array<std::string_view, kInlinePieces> pieces;
    fill(pieces.data());
    sort(pieces.data(), pieces.data() + count);
    fn(std::span<const std::string_view>(pieces.data(), count));
  } else {
    std::vector<std::string_view> pieces(count);
    fill(pieces.data());
    sort(pieces.data(), pieces.data() + count);
    fn(std::span<const std::string_view>(pieces));
  }
}

void HashLength(XXH3_state_t* state, std::uint64_t n) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  XXH3_128bits_update(state, bytes, sizeof bytes);
}

void HashPart(XXH3_state_t* state, std::string_view part) {
  HashLength(state, part.size());
  XXH3_128bits_update(state, part.data(), part.size());
}

}  // namespace

std::string CacheKey::Hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kDigits[(high >> (4 * i)) & 0xf];
    out[31 - i] = kDigits[(low >> (4 * i)) & 0xf];
  }
  return out;
}

CacheKey MakeCacheKey(const KeyParts& parts) {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  HashPart(&state, parts.method);
  HashPart(&state, parts.route);
  HashPart(&state, parts.path);
  WithSortedPieces(parts.query, [&](std::span<const std::string_view> pieces) {
    std::size_t length = pieces.empty() ? 0 : pieces.size() - 1;  // the '&' separators
    for (std::string_view piece : pieces) length += piece.size();
    HashLength(&state, length);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      if (i > 0) XXH3_128bits_update(&state, "&", 1);
      XXH3_128bits_update(&state, pieces[i].data(), pieces[i].size());
    }
  });
  HashPart(&state, parts.body);
  HashLength(&state, parts.vary.size());
  for (const auto& [name, value] : parts.vary) {
    HashPart(&state, name);
    HashPart(&state, value);
  }
  XXH128_hash_t h = XXH3_128bits_digest(&state);
  return CacheKey{h.high64, h.low64};
}

std::string NormalizeQuery(std::string_view query) {
  std::string out;
  WithSortedPieces(query, [&](std::span<const std::string_view> pieces) {
    for (std::string_view piece : pieces) {
      if (!out.empty()) out += '&';
      out += piece;
    }
  });
  return out;
}

}  // namespace megaserve::cache
