// Standard Webhooks signatures (Standard Webhooks specification 1.0.0, "Signature scheme" and
// "Verifying webhook authenticity"; https://www.standardwebhooks.com/).
//
// A delivery carries three headers: webhook-id, webhook-timestamp (integer unix seconds) and
// webhook-signature, a space-separated list of "v1,<base64(HMAC-SHA256(key, content))>" where
// content is "{webhook-id}.{webhook-timestamp}.{body}". Several signatures let a receiver accept
// either of two keys while one is being rotated. Secrets are serialized as "whsec_" followed by
// the standard (padded) base64 of the key bytes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace megaserve::jobs {

// A symmetric signing key shared between this server and one webhook endpoint.
class WebhookSecret {
 public:
  // Accepted key sizes in bytes, per the specification's recommendation (24 to 64 bytes).
  static constexpr size_t kMinKeyBytes = 24;
  static constexpr size_t kMaxKeyBytes = 64;
  // Size of a key made by Generate().
  static constexpr size_t kGeneratedKeyBytes = 32;

  // Parses "whsec_<base64>" or bare "<base64>" (standard alphabet; padding may be omitted).
  // Returns InvalidArgument for bad base64 or a key outside [kMinKeyBytes, kMaxKeyBytes].
  static core::Result<WebhookSecret> Parse(std::string_view text);

  // Makes a new random key of kGeneratedKeyBytes bytes from OpenSSL's RAND_bytes. Returns
  // Internal if the random generator fails (never a weak key).
  static core::Result<WebhookSecret> Generate();

  // The serialized form, "whsec_<base64>", which Parse() accepts.
  std::string ToString() const;

  // The raw key bytes.
  const std::string& key() const { return key_; }

 private:
  explicit WebhookSecret(std::string key) : key_(std::move(key)) {}

  std::string key_;
};

// The signature header value for one message: "v1,<base64 HMAC-SHA256>". Returns an empty
// string only if OpenSSL cannot compute the HMAC (allocation failure).
std::string SignWebhook(const WebhookSecret& secret, std::string_view msg_id, int64_t timestamp,
                        std::string_view payload);

// The three headers a delivery carries, in the form they are sent.
struct SignedHeaders {
  std::string id;         // webhook-id
  std::string timestamp;  // webhook-timestamp, decimal unix seconds
  std::string signature;  // webhook-signature
};

// Signs a message and returns the headers to send with `payload`.
SignedHeaders SignedWebhookHeaders(const WebhookSecret& secret, std::string_view msg_id,
                                   int64_t timestamp, std::string_view payload);

// Verifies a received delivery. `timestamp` and `signature_header` are the raw header values;
// `now` is the receiver's clock in unix seconds. Returns OK if any "v1," signature in the
// space-separated header matches (compared in constant time); InvalidArgument if the timestamp
// is not a decimal integer or the header holds no v1 signature; Unauthenticated if the
// timestamp is more than `tolerance` before or after `now` (replay protection) or no signature
// matches; Internal if OpenSSL fails.
core::Status VerifyWebhook(const WebhookSecret& secret, std::string_view msg_id,
                           std::string_view timestamp, std::string_view signature_header,
                           std::string_view payload, int64_t now,
                           std::chrono::seconds tolerance = std::chrono::minutes(5));

}  // namespace megaserve::jobs
