#include "cache/cached_response.h"

#include <algorithm>
#include <cstring>

namespace megaserve::cache {
namespace {

// Format: "MSC1", then fixed-width little-endian integers and length-prefixed strings.
constexpr std::string_view kMagic = "MSC1";
constexpr std::size_t kMaxHeaders = 64;

void PutU64(std::string& out, std::uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out.append(b, 8);
}

void PutString(std::string& out, std::string_view s) {
  PutU64(out, s.size());
  out.append(s);
}

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool U64(std::uint64_t& v) {
    if (in_.size() < 8) return false;
    v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(static_cast<unsigned char>(in_[i])) << (8 * i);
    in_.remove_prefix(8);
    return true;
  }
  bool I64(std::int64_t& v) {
    std::uint64_t u;
    if (!U64(u)) return false;
    v = static_cast<std::int64_t>(u);
    return true;
  }
  bool String(std::string& s) {
    std::uint64_t n;
    if (!U64(n) || n > in_.size()) return false;
    s.assign(in_.substr(0, n));
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

}  // namespace

std::size_t CachedResponse::Bytes() const {
  std::size_t n = sizeof(CachedResponse) + body.size() + content_type.size() + header_lines.size();
  for (const auto& [name, value] : headers)
    n += name.size() + value.size() + 2 * sizeof(std::string);
  return n;
}

std::string CachedResponse::HeaderLines() const {
  std::string out;
  for (const auto& [name, value] : headers) {
    out += "\r\n";
    out += name;
    out += ": ";
    out += value;
  }
  return out;
}

std::int64_t CachedResponse::DiscardAtMs() const {
  return stored_at_ms + ttl_ms + std::max(stale_while_revalidate_ms, stale_if_error_ms);
}

std::int64_t CachedResponse::AgeSeconds(std::int64_t now_ms) const {
  return std::max<std::int64_t>(0, (now_ms - stored_at_ms) / 1000);
}

std::string EncodeCachedResponse(const CachedResponse& r) {
  std::string out;
  out.reserve(96 + r.body.size() + r.content_type.size());
  out.append(kMagic);
  PutU64(out, static_cast<std::uint64_t>(r.status));
  PutU64(out, static_cast<std::uint64_t>(r.stored_at_ms));
  PutU64(out, static_cast<std::uint64_t>(r.ttl_ms));
  PutU64(out, static_cast<std::uint64_t>(r.stale_while_revalidate_ms));
  PutU64(out, static_cast<std::uint64_t>(r.stale_if_error_ms));
  PutU64(out, static_cast<std::uint64_t>(r.compute_ms));
  PutString(out, r.content_type);
  PutU64(out, r.headers.size());
  for (const auto& [name, value] : r.headers) {
    PutString(out, name);
    PutString(out, value);
  }
  PutString(out, r.body);
  return out;
}

std::optional<CachedResponse> DecodeCachedResponse(std::string_view bytes) {
  if (!bytes.starts_with(kMagic)) return std::nullopt;
  Reader in(bytes.substr(kMagic.size()));
  CachedResponse r;
  std::uint64_t status = 0, headers = 0;
  if (!in.U64(status) || status < 100 || status > 599) return std::nullopt;
  r.status = static_cast<int>(status);
  if (!in.I64(r.stored_at_ms) || !in.I64(r.ttl_ms) || !in.I64(r.stale_while_revalidate_ms) ||
      !in.I64(r.stale_if_error_ms) || !in.I64(r.compute_ms) || !in.String(r.content_type) ||
      !in.U64(headers) || headers > kMaxHeaders) {
    return std::nullopt;
  }
  r.headers.resize(headers);
  for (auto& [name, value] : r.headers) {
    if (!in.String(name) || !in.String(value)) return std::nullopt;
  }
  if (!in.String(r.body) || !in.done()) return std::nullopt;
  r.header_lines = r.HeaderLines();
  return r;
}

}  // namespace megaserve::cache
