// Standard Webhooks signatures (Standard Webhooks specification 1.0.0, "Signature scheme" and
// "Verifying webhook authenticity"). HMAC-SHA256 through OpenSSL's EVP_MAC, fed the three parts
// of "{id}.{timestamp}.{payload}" in turn so the payload is never copied.
#include "jobs/webhook_signature.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <array>
#include <charconv>
#include <memory>
#include <optional>

namespace megaserve::jobs {
namespace {

constexpr std::string_view kSecretPrefix = "whsec_";
constexpr std::string_view kSignatureVersion = "v1,";
constexpr size_t kMacBytes = 32;  // SHA-256

std::string Base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');  // +1: EVP_EncodeBlock writes a NUL
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(n);
  return out;
}

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

// Strict standard-alphabet base64; padding is optional. EVP_DecodeBlock alone is too lenient
// (it skips surrounding whitespace) and counts padding as zero bytes, so the input is validated
// and the padding subtracted here.
std::optional<std::string> Base64Decode(std::string_view text) {
  size_t data_len = text.size();
  while (data_len > 0 && text[data_len - 1] == '=') --data_len;
  size_t pad = text.size() - data_len;
  if (data_len == 0 || pad > 2) return std::nullopt;
  for (size_t i = 0; i < data_len; ++i) {
    if (!IsBase64Char(text[i])) return std::nullopt;
  }
  if (data_len % 4 == 1) return std::nullopt;  // no whole byte in the last group
  size_t needed_pad = (4 - data_len % 4) % 4;
  if (pad != 0 && pad != needed_pad) return std::nullopt;

  std::string padded(text.substr(0, data_len));
  padded.append(needed_pad, '=');
  std::string out(padded.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(padded.data()),
                          static_cast<int>(padded.size()));
  if (n < 0 || static_cast<size_t>(n) != out.size()) return std::nullopt;
  out.resize(out.size() - needed_pad);
  return out;
}

struct MacCtxDeleter {
  void operator()(EVP_MAC_CTX* ctx) const { EVP_MAC_CTX_free(ctx); }
};

// HMAC-SHA256(key, id "." timestamp "." payload), or nullopt if OpenSSL fails.
std::optional<std::array<unsigned char, kMacBytes>> ComputeMac(std::string_view key,
                                                               std::string_view msg_id,
                                                               std::string_view timestamp,
                                                               std::string_view payload) {
  // Fetched once; an EVP_MAC is immutable and safe to share between threads.
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr);
  if (mac == nullptr) return std::nullopt;
  std::unique_ptr<EVP_MAC_CTX, MacCtxDeleter> ctx(EVP_MAC_CTX_new(mac));
  if (!ctx) return std::nullopt;
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  auto update = [&](std::string_view part) {
    return EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(part.data()),
                          part.size()) == 1;
  };
  if (EVP_MAC_init(ctx.get(), reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                   params) != 1 ||
      !update(msg_id) || !update(".") || !update(timestamp) || !update(".") || !update(payload)) {
    return std::nullopt;
  }
  std::array<unsigned char, kMacBytes> out;
  size_t out_len = 0;
  if (EVP_MAC_final(ctx.get(), out.data(), &out_len, out.size()) != 1 || out_len != kMacBytes) {
    return std::nullopt;
  }
  return out;
}

std::optional<std::string> SignatureValue(const WebhookSecret& secret, std::string_view msg_id,
                                          std::string_view timestamp, std::string_view payload) {
  auto mac = ComputeMac(secret.key(), msg_id, timestamp, payload);
  if (!mac) return std::nullopt;
  return Base64Encode(std::string_view(reinterpret_cast<const char*>(mac->data()), mac->size()));
}

std::optional<int64_t> ParseTimestamp(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  int64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

core::Result<WebhookSecret> WebhookSecret::Parse(std::string_view text) {
  if (text.starts_with(kSecretPrefix)) text.remove_prefix(kSecretPrefix.size());
  auto key = Base64Decode(text);
  if (!key) return core::InvalidArgument("webhook secret is not valid base64");
  if (key->size() < kMinKeyBytes || key->size() > kMaxKeyBytes) {
    return core::InvalidArgument("webhook secret must hold " + std::to_string(kMinKeyBytes) +
                                 " to " + std::to_string(kMaxKeyBytes) + " key bytes, not " +
                                 std::to_string(key->size()));
  }
  return WebhookSecret(std::move(*key));
}

core::Result<WebhookSecret> WebhookSecret::Generate() {
  std::string key(kGeneratedKeyBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) != 1) {
    return core::Internal("RAND_bytes failed to generate a webhook secret");
  }
  return WebhookSecret(std::move(key));
}

std::string WebhookSecret::ToString() const {
  return std::string(kSecretPrefix) + Base64Encode(key_);
}

std::string SignWebhook(const WebhookSecret& secret, std::string_view msg_id, int64_t timestamp,
                        std::string_view payload) {
  auto value = SignatureValue(secret, msg_id, std::to_string(timestamp), payload);
  if (!value) return {};
  return std::string(kSignatureVersion) + *value;
}

SignedHeaders SignedWebhookHeaders(const WebhookSecret& secret, std::string_view msg_id,
                                   int64_t timestamp, std::string_view payload) {
  return SignedHeaders{std::string(msg_id), std::to_string(timestamp),
                       SignWebhook(secret, msg_id, timestamp, payload)};
}

core::Status VerifyWebhook(const WebhookSecret& secret, std::string_view msg_id,
                           std::string_view timestamp, std::string_view signature_header,
                           std::string_view payload, int64_t now, std::chrono::seconds tolerance) {
  auto ts = ParseTimestamp(timestamp);
  if (!ts) return core::InvalidArgument("webhook-timestamp is not a unix time in seconds");
  // The difference of two int64 values always fits in uint64 once ordered.
  uint64_t skew = *ts >= now ? static_cast<uint64_t>(*ts) - static_cast<uint64_t>(now)
                             : static_cast<uint64_t>(now) - static_cast<uint64_t>(*ts);
  uint64_t allowed = tolerance.count() > 0 ? static_cast<uint64_t>(tolerance.count()) : 0;
  if (skew > allowed) {
    return {core::StatusCode::kUnauthenticated,
            std::string("webhook-timestamp is too far in the ") + (*ts < now ? "past" : "future")};
  }

  // Signed over the header text exactly as received, as the specification requires.
  auto expected = SignatureValue(secret, msg_id, timestamp, payload);
  if (!expected) return core::Internal("HMAC-SHA256 failed");

  bool any_v1 = false;
  bool matched = false;
  size_t pos = 0;
  while (pos < signature_header.size()) {
    size_t end = signature_header.find(' ', pos);
    if (end == std::string_view::npos) end = signature_header.size();
    std::string_view entry = signature_header.substr(pos, end - pos);
    pos = end + 1;
    if (!entry.starts_with(kSignatureVersion)) continue;  // other schemes, e.g. "v1a,"
    any_v1 = true;
    std::string_view candidate = entry.substr(kSignatureVersion.size());
    // Lengths are public (always 44 for SHA-256); only the contents need a constant-time check.
    // Every entry is compared so timing does not reveal which one matched.
    if (candidate.size() == expected->size() &&
        CRYPTO_memcmp(candidate.data(), expected->data(), expected->size()) == 0) {
      matched = true;
    }
  }
  if (!any_v1) return core::InvalidArgument("webhook-signature holds no v1 signature");
  if (!matched) return {core::StatusCode::kUnauthenticated, "webhook signature does not match"};
  return core::Status::Ok();
}

}  // namespace megaserve::jobs
