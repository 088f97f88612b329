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
#include <cstring>
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

// Where the key's bytes go: one-shot hashing of a stack buffer for the usual small request,
// the streaming state otherwise. Both see the same byte sequence, so they give the same key.
class BufferSink {
 public:
  void Put(const void* data, std::size_t n) {
    if (n == 0) return;  // an empty view may have a null data()
    std::memcpy(buf_ + size_, data, n);
    size_ += n;
  }
  XXH128_hash_t Digest() const { return XXH3_128bits(buf_, size_); }
  static constexpr std::size_t kCapacity = 2048;

 private:
  unsigned char buf_[kCapacity];
  std::size_t size_ = 0;
};

class StateSink {
 public:
  StateSink() { XXH3_128bits_reset(&state_); }
  void Put(const void* data, std::size_t n) { XXH3_128bits_update(&state_, data, n); }
  XXH128_hash_t Digest() { return XXH3_128bits_digest(&state_); }

 private:
  XXH3_state_t state_;
};

template <typename Sink>
void PutLength(Sink& sink, std::uint64_t n) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  sink.Put(bytes, sizeof bytes);
}

template <typename Sink>
void PutPart(Sink& sink, std::string_view part) {
  PutLength(sink, part.size());
  sink.Put(part.data(), part.size());
}

// Every part, each length-prefixed; the query's pieces in sorted order.
template <typename Sink>
XXH128_hash_t HashParts(Sink& sink, const KeyParts& parts) {
  PutPart(sink, parts.method);
  PutPart(sink, parts.route);
  PutPart(sink, parts.path);
  if (parts.query.empty()) {
    PutLength(sink, 0);  // what the general case below feeds for no pieces, without its table
  } else {
    WithSortedPieces(parts.query, [&](std::span<const std::string_view> pieces) {
      std::size_t length = pieces.empty() ? 0 : pieces.size() - 1;  // the '&' separators
      for (std::string_view piece : pieces) length += piece.size();
      PutLength(sink, length);
      for (std::size_t i = 0; i < pieces.size(); ++i) {
        if (i > 0) sink.Put("&", 1);
        sink.Put(pieces[i].data(), pieces[i].size());
      }
    });
  }
  PutPart(sink, parts.body);
  PutLength(sink, parts.vary.size());
  for (const auto& [name, value] : parts.vary) {
    PutPart(sink, name);
    PutPart(sink, value);
  }
  if (parts.salt != 0) PutLength(sink, parts.salt);  // keys without a salt stay as they were
  return sink.Digest();
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
  // An upper bound of the bytes fed (8-byte lengths, the query's pieces and their separators).
  std::size_t bytes = 8 * 7 + parts.method.size() + parts.route.size() + parts.path.size() +
                      parts.query.size() + parts.body.size();
  for (const auto& [name, value] : parts.vary) bytes += 16 + name.size() + value.size();
  XXH128_hash_t h;
  if (bytes <= BufferSink::kCapacity) {
    BufferSink sink;
    h = HashParts(sink, parts);
  } else {
    StateSink sink;
    h = HashParts(sink, parts);
  }
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
