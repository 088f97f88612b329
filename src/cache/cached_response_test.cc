#include "cache/cached_response.h"

#include <gtest/gtest.h>

#include <string>

namespace megaserve::cache {
namespace {

CachedResponse Sample() {
  CachedResponse r;
  r.status = 203;
  r.content_type = "application/json; charset=utf-8";
  r.headers = {{"Cache-Control", "max-age=60"}, {"X-Model", "forecast-v2"}};
  r.body = std::string("{\"yhat\":[1,2,3]}\0tail", 21);
  r.stored_at_ms = 1'764'000'000'123;
  r.ttl_ms = 300'000;
  r.stale_while_revalidate_ms = 30'000;
  r.stale_if_error_ms = 600'000;
  r.compute_ms = 42;
  return r;
}

void ExpectSame(const CachedResponse& a, const CachedResponse& b) {
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.content_type, b.content_type);
  EXPECT_EQ(a.headers, b.headers);
  EXPECT_EQ(a.body, b.body);
  EXPECT_EQ(a.stored_at_ms, b.stored_at_ms);
  EXPECT_EQ(a.ttl_ms, b.ttl_ms);
  EXPECT_EQ(a.stale_while_revalidate_ms, b.stale_while_revalidate_ms);
  EXPECT_EQ(a.stale_if_error_ms, b.stale_if_error_ms);
  EXPECT_EQ(a.compute_ms, b.compute_ms);
}

TEST(CachedResponseCodecTest, RoundTrips) {
  CachedResponse r = Sample();
  std::optional<CachedResponse> back = DecodeCachedResponse(EncodeCachedResponse(r));
  ASSERT_TRUE(back.has_value());
  ExpectSame(*back, r);
}

TEST(CachedResponseCodecTest, RoundTripsAnEmptyResponse) {
  CachedResponse r;
  r.status = 204;
  std::optional<CachedResponse> back = DecodeCachedResponse(EncodeCachedResponse(r));
  ASSERT_TRUE(back.has_value());
  ExpectSame(*back, r);
}

TEST(CachedResponseCodecTest, RoundTripsNegativeTimesAndALargeBody) {
  CachedResponse r = Sample();
  r.stored_at_ms = -5;
  r.body.assign(1 << 20, 'z');
  std::optional<CachedResponse> back = DecodeCachedResponse(EncodeCachedResponse(r));
  ASSERT_TRUE(back.has_value());
  ExpectSame(*back, r);
}

TEST(CachedResponseCodecTest, RejectsEveryTruncation) {
  std::string bytes = EncodeCachedResponse(Sample());
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(DecodeCachedResponse(std::string_view(bytes).substr(0, n)).has_value()) << n;
  }
}

TEST(CachedResponseCodecTest, RejectsTrailingBytes) {
  std::string bytes = EncodeCachedResponse(Sample()) + "x";
  EXPECT_FALSE(DecodeCachedResponse(bytes).has_value());
}

TEST(CachedResponseCodecTest, RejectsAnotherFormatVersion) {
  std::string bytes = EncodeCachedResponse(Sample());
  bytes[3] = '2';  // "MSC2"
  EXPECT_FALSE(DecodeCachedResponse(bytes).has_value());
  EXPECT_FALSE(DecodeCachedResponse("").has_value());
  EXPECT_FALSE(DecodeCachedResponse("garbage that is long enough to parse").has_value());
}

TEST(CachedResponseCodecTest, RejectsAnInvalidStatus) {
  for (int status : {0, 99, 600, 1000}) {
    CachedResponse r = Sample();
    r.status = status;
    EXPECT_FALSE(DecodeCachedResponse(EncodeCachedResponse(r)).has_value()) << status;
  }
}

TEST(CachedResponseCodecTest, RejectsTooManyHeaders) {
  CachedResponse r = Sample();
  r.headers.assign(64, {"X-A", "1"});
  EXPECT_TRUE(DecodeCachedResponse(EncodeCachedResponse(r)).has_value());
  r.headers.assign(65, {"X-A", "1"});
  EXPECT_FALSE(DecodeCachedResponse(EncodeCachedResponse(r)).has_value());
}

TEST(CachedResponseCodecTest, RejectsAStringLengthPastTheEnd) {
  std::string bytes = EncodeCachedResponse(Sample());
  // The content type's length prefix follows the magic and six 64-bit integers.
  std::size_t length_at = 4 + 6 * 8;
  bytes[length_at + 7] = '\x7f';  // an absurd length, far beyond the input
  EXPECT_FALSE(DecodeCachedResponse(bytes).has_value());
}

TEST(CachedResponseTest, FreshnessAgeAndDiscard) {
  CachedResponse r;
  r.stored_at_ms = 10'000;
  r.ttl_ms = 5'000;
  r.stale_while_revalidate_ms = 1'000;
  r.stale_if_error_ms = 3'000;
  EXPECT_TRUE(r.FreshAt(14'999));
  EXPECT_FALSE(r.FreshAt(15'000));
  EXPECT_EQ(r.DiscardAtMs(), 18'000);
  EXPECT_EQ(r.AgeSeconds(9'000), 0);
  EXPECT_EQ(r.AgeSeconds(12'999), 2);
  std::size_t small = r.Bytes();
  r.body.assign(1000, 'x');
  EXPECT_EQ(r.Bytes(), small + 1000);
}

}  // namespace
}  // namespace megaserve::cache
