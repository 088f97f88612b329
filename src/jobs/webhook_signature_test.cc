#include "jobs/webhook_signature.h"

#include <gtest/gtest.h>

#include <string>

namespace megaserve::jobs {
namespace {

using core::StatusCode;

// The example published in the Standard Webhooks specification.
constexpr std::string_view kSpecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
constexpr std::string_view kSpecId = "msg_p5jXN8AQM9LWM0D4loKWxJek";
constexpr int64_t kSpecTimestamp = 1614265330;
constexpr std::string_view kSpecPayload = R"({"test": 2432232314})";
constexpr std::string_view kSpecSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

WebhookSecret SpecSecret() {
  auto secret = WebhookSecret::Parse(kSpecSecret);
  EXPECT_TRUE(secret.ok()) << secret.status().ToString();
  return *secret;
}

TEST(WebhookSignatureTest, ReproducesSpecificationExample) {
  EXPECT_EQ(SignWebhook(SpecSecret(), kSpecId, kSpecTimestamp, kSpecPayload), kSpecSignature);
}

TEST(WebhookSignatureTest, SecretWithoutPrefixIsTheSameKey) {
  auto bare = WebhookSecret::Parse(kSpecSecret.substr(6));
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->key(), SpecSecret().key());
  EXPECT_EQ(bare->key().size(), 24u);
  EXPECT_EQ(SignWebhook(*bare, kSpecId, kSpecTimestamp, kSpecPayload), kSpecSignature);
}

TEST(WebhookSignatureTest, SecretRoundTripsThroughToString) {
  EXPECT_EQ(SpecSecret().ToString(), kSpecSecret);
}

TEST(WebhookSignatureTest, HeadersCarryIdTimestampAndSignature) {
  SignedHeaders h = SignedWebhookHeaders(SpecSecret(), kSpecId, kSpecTimestamp, kSpecPayload);
  EXPECT_EQ(h.id, kSpecId);
  EXPECT_EQ(h.timestamp, "1614265330");
  EXPECT_EQ(h.signature, kSpecSignature);
}

TEST(WebhookSignatureTest, VerifiesSpecificationExample) {
  core::Status s = VerifyWebhook(SpecSecret(), kSpecId, "1614265330", kSpecSignature, kSpecPayload,
                                 kSpecTimestamp + 10);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(WebhookSignatureTest, TamperedPartsFail) {
  const WebhookSecret secret = SpecSecret();
  const int64_t now = kSpecTimestamp;
  EXPECT_EQ(
      VerifyWebhook(secret, kSpecId, "1614265330", kSpecSignature, R"({"test": 2432232315})", now)
          .code(),
      StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyWebhook(secret, "msg_p5jXN8AQM9LWM0D4loKWxJeK", "1614265330", kSpecSignature,
                          kSpecPayload, now)
                .code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyWebhook(secret, kSpecId, "1614265331", kSpecSignature, kSpecPayload, now).code(),
            StatusCode::kUnauthenticated);
  // Same numeric value, different text: the signature covers the header text.
  EXPECT_EQ(VerifyWebhook(secret, kSpecId, "01614265330", kSpecSignature, kSpecPayload, now).code(),
            StatusCode::kUnauthenticated);
  std::string flipped(kSpecSignature);
  flipped[5] = flipped[5] == 'A' ? 'B' : 'A';
  EXPECT_EQ(VerifyWebhook(secret, kSpecId, "1614265330", flipped, kSpecPayload, now).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyWebhook(secret, kSpecId, "1614265330", std::string(kSpecSignature) + "x",
                          kSpecPayload, now)
                .code(),
            StatusCode::kUnauthenticated);
}

TEST(WebhookSignatureTest, WrongKeyFails) {
  auto other = WebhookSecret::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(
      VerifyWebhook(*other, kSpecId, "1614265330", kSpecSignature, kSpecPayload, kSpecTimestamp)
          .code(),
      StatusCode::kUnauthenticated);
}

TEST(WebhookSignatureTest, TimestampToleranceIsEnforcedBothWays) {
  const WebhookSecret secret = SpecSecret();
  auto verify_at = [&](int64_t now, std::chrono::seconds tolerance = std::chrono::minutes(5)) {
    return VerifyWebhook(secret, kSpecId, "1614265330", kSpecSignature, kSpecPayload, now,
                         tolerance);
  };
  EXPECT_TRUE(verify_at(kSpecTimestamp + 300).ok());
  EXPECT_TRUE(verify_at(kSpecTimestamp - 300).ok());
  core::Status stale = verify_at(kSpecTimestamp + 301);
  EXPECT_EQ(stale.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(stale.message().find("past"), std::string::npos);
  core::Status future = verify_at(kSpecTimestamp - 301);
  EXPECT_EQ(future.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(future.message().find("future"), std::string::npos);
  EXPECT_TRUE(verify_at(kSpecTimestamp + 3600, std::chrono::hours(1)).ok());
  EXPECT_FALSE(verify_at(kSpecTimestamp + 1, std::chrono::seconds(0)).ok());
  // Extreme clocks must not overflow into acceptance.
  EXPECT_FALSE(verify_at(INT64_MIN).ok());
  EXPECT_FALSE(verify_at(INT64_MAX).ok());
}

TEST(WebhookSignatureTest, MalformedTimestampIsInvalid) {
  const WebhookSecret secret = SpecSecret();
  for (std::string_view ts : {"", "-1614265330", "+1614265330", "1614265330.0", " 1614265330",
                              "1614265330 ", "99999999999999999999", "abc"}) {
    EXPECT_EQ(
        VerifyWebhook(secret, kSpecId, ts, kSpecSignature, kSpecPayload, kSpecTimestamp).code(),
        StatusCode::kInvalidArgument)
        << "timestamp '" << ts << "'";
  }
}

TEST(WebhookSignatureTest, OneValidSignatureAmongSeveralPasses) {
  const WebhookSecret secret = SpecSecret();
  auto verify = [&](std::string_view header) {
    return VerifyWebhook(secret, kSpecId, "1614265330", header, kSpecPayload, kSpecTimestamp);
  };
  const std::string valid(kSpecSignature);
  const std::string wrong = "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=";
  EXPECT_TRUE(verify(wrong + " " + valid).ok());
  EXPECT_TRUE(verify(valid + " " + wrong).ok());
  EXPECT_TRUE(verify("v1a,c29tZQ== " + valid).ok());
  EXPECT_TRUE(verify(wrong + "  " + valid + " ").ok());
  EXPECT_EQ(verify(wrong + " " + wrong).code(), StatusCode::kUnauthenticated);
  // Only v1 counts: the right value under another version is not accepted.
  EXPECT_EQ(verify("v2," + valid.substr(3)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(verify(valid.substr(3)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(verify("").code(), StatusCode::kInvalidArgument);
}

TEST(WebhookSignatureTest, MalformedSecretsAreRejected) {
  for (std::string_view text : {
           "", "whsec_",
           "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",   // not base64
           "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw=",  // padding where none belongs
           "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwA",  // a dangling sextet
           "whsec_ MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  // whitespace
           "whsec_MfKQ9r8GKYqrTwjU-D8ILPZIo2LaLaSw",   // base64url alphabet
           "whsec_c2hvcnQ=",                           // decodes, but a 5-byte key
           "whsec_MfKQ=9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  // padding in the middle
       }) {
    auto secret = WebhookSecret::Parse(text);
    EXPECT_FALSE(secret.ok()) << "'" << text << "'";
    if (!secret.ok()) {
      EXPECT_EQ(secret.status().code(), StatusCode::kInvalidArgument);
    }
  }
  // 65 bytes is over the limit; 64 is accepted.
  auto b64 = [](size_t bytes) {
    return std::string("whsec_") + std::string(bytes / 3 * 4, 'A') +
           (bytes % 3 == 1   ? "AA=="
            : bytes % 3 == 2 ? "AAA="
                             : "");
  };
  EXPECT_TRUE(WebhookSecret::Parse(b64(64)).ok());
  EXPECT_EQ(WebhookSecret::Parse(b64(64))->key().size(), 64u);
  EXPECT_FALSE(WebhookSecret::Parse(b64(65)).ok());
  EXPECT_FALSE(WebhookSecret::Parse(b64(23)).ok());
}

TEST(WebhookSignatureTest, UnpaddedBase64IsAccepted) {
  // 25 bytes: padded form ends in "==".
  auto padded = WebhookSecret::Parse("whsec_" + std::string(32, 'B') + "AA==");
  auto unpadded = WebhookSecret::Parse("whsec_" + std::string(32, 'B') + "AA");
  ASSERT_TRUE(padded.ok());
  ASSERT_TRUE(unpadded.ok());
  EXPECT_EQ(padded->key().size(), 25u);
  EXPECT_EQ(padded->key(), unpadded->key());
}

TEST(WebhookSignatureTest, GeneratedSecretsRoundTripAndDiffer) {
  auto a = WebhookSecret::Generate();
  auto b = WebhookSecret::Generate();
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->key().size(), WebhookSecret::kGeneratedKeyBytes);
  EXPECT_NE(a->key(), b->key());
  std::string text = a->ToString();
  EXPECT_TRUE(text.starts_with("whsec_"));
  auto parsed = WebhookSecret::Parse(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->key(), a->key());

  SignedHeaders h = SignedWebhookHeaders(*parsed, "msg_1", 1700000000, "body");
  EXPECT_TRUE(VerifyWebhook(*a, h.id, h.timestamp, h.signature, "body", 1700000000).ok());
  EXPECT_FALSE(VerifyWebhook(*b, h.id, h.timestamp, h.signature, "body", 1700000000).ok());
}

TEST(WebhookSignatureTest, EmptyAndBinaryPayloadsSign) {
  const WebhookSecret secret = SpecSecret();
  const std::string binary("a\0b\xff", 4);
  for (std::string_view payload : {std::string_view(), std::string_view(binary)}) {
    std::string sig = SignWebhook(secret, "msg", 5, payload);
    EXPECT_EQ(sig.size(), 3u + 44u);
    EXPECT_TRUE(VerifyWebhook(secret, "msg", "5", sig, payload, 5).ok());
  }
  EXPECT_FALSE(
      VerifyWebhook(secret, "msg", "5", SignWebhook(secret, "msg", 5, binary), "a", 5).ok());
}

}  // namespace
}  // namespace megaserve::jobs
