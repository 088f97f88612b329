// A response as the cache keeps it, in memory (L1) and serialized in Redis (L2).
//
// Times are Unix milliseconds so that entries written by one process are read correctly by
// another. Freshness follows RFC 9111 and RFC 5861: an entry is fresh for ttl_ms after
// stored_at_ms, then may be served stale while it is revalidated for stale_while_revalidate_ms,
// and, when the origin fails, for stale_if_error_ms.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace megaserve::cache {

struct CachedResponse {
  int status = 200;
  std::string content_type;
  // Replayed with every hit (e.g. Cache-Control); never hop-by-hop or per-request headers.
  std::vector<std::pair<std::string, std::string>> headers;
  // `headers` written out as "\r\nName: value" lines (net::Response::header_lines); filled by
  // DecodeCachedResponse and by whoever builds an entry, with HeaderLines(). Not encoded.
  std::string header_lines;
  std::string body;
  std::int64_t stored_at_ms = 0;  // when the origin produced it
  std::int64_t ttl_ms = 0;        // fresh for this long
  std::int64_t stale_while_revalidate_ms = 0;
  std::int64_t stale_if_error_ms = 0;
  std::int64_t compute_ms = 0;  // how long the origin took: XFetch's delta

  // Memory the entry accounts for against a byte budget (body, headers and bookkeeping).
  std::size_t Bytes() const;
  // After this instant the entry is no use at all: not fresh, not usable stale.
  std::int64_t DiscardAtMs() const;
  bool FreshAt(std::int64_t now_ms) const { return now_ms < stored_at_ms + ttl_ms; }
  // Age header value in whole seconds (RFC 9111 section 5.1), never negative.
  std::int64_t AgeSeconds(std::int64_t now_ms) const;
  // `headers` as "\r\nName: value" lines.
  std::string HeaderLines() const;
};

// A compact binary form for L2; Decode returns nullopt on anything malformed or from another
// format version, so a bad entry reads as a miss.
std::string EncodeCachedResponse(const CachedResponse& r);
std::optional<CachedResponse> DecodeCachedResponse(std::string_view bytes);

}  // namespace megaserve::cache
