// Response-cache keys: the 128-bit XXH3 hash of everything that selects a response.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace megaserve::cache {

struct CacheKey {
  std::uint64_t high = 0;
  std::uint64_t low = 0;

  bool operator==(const CacheKey&) const = default;
  // 32 lowercase hex digits, high half first (the Redis key suffix).
  std::string Hex() const;
};

struct CacheKeyHash {
  std::size_t operator()(const CacheKey& k) const { return static_cast<std::size_t>(k.low); }
};

// What a key is made of. `vary` holds (header name, value) pairs for the headers the route
// varies on, in the route's configured order (absent headers as empty values).
struct KeyParts {
  std::string_view method;
  std::string_view route;  // route pattern, e.g. "/v1/forecasts/{symbol}"
  std::string_view path;   // the concrete path
  std::string_view query;  // as received; normalized before hashing
  std::string_view body;   // only for POST routes that declare themselves cacheable; else ""
  std::span<const std::pair<std::string_view, std::string_view>> vary;
  // A number folded into the key when non-zero: the version of the data a route's responses
  // derive from (CacheFilterOptions::key_salt), so that new data selects new entries.
  std::uint64_t salt = 0;
};

// XXH3-128 over the parts, each length-prefixed so that no two different part lists collide by
// concatenation.
CacheKey MakeCacheKey(const KeyParts& parts);

// The query with its parameters sorted by name (stable, so repeated names keep their order) and
// empty pieces ("a=1&&b=2", a trailing '&') dropped: "b=2&a=1" and "a=1&b=2" name one entry.
std::string NormalizeQuery(std::string_view query);

}  // namespace megaserve::cache
