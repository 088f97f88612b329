#include "cache/cache_key.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

namespace megaserve::cache {
namespace {

using VaryList = std::vector<std::pair<std::string_view, std::string_view>>;

KeyParts Parts(std::string_view query = "", std::string_view body = "",
               std::span<const std::pair<std::string_view, std::string_view>> vary = {}) {
  KeyParts p;
  p.method = "GET";
  p.route = "/v1/forecasts/{symbol}";
  p.path = "/v1/forecasts/AAPL";
  p.query = query;
  p.body = body;
  p.vary = vary;
  return p;
}

TEST(NormalizeQueryTest, SortsByNameAndDropsEmptyPieces) {
  EXPECT_EQ(NormalizeQuery(""), "");
  EXPECT_EQ(NormalizeQuery("a=1"), "a=1");
  EXPECT_EQ(NormalizeQuery("b=2&a=1"), "a=1&b=2");
  EXPECT_EQ(NormalizeQuery("a=1&&b=2&"), "a=1&b=2");
  EXPECT_EQ(NormalizeQuery("&&&"), "");
  EXPECT_EQ(NormalizeQuery("z&y=&x=3"), "x=3&y=&z");
}

TEST(NormalizeQueryTest, RepeatedNamesKeepTheirOrder) {
  EXPECT_EQ(NormalizeQuery("b=1&a=9&b=0&a=2"), "a=9&a=2&b=1&b=0");
}

TEST(NormalizeQueryTest, ManyPiecesTakeTheHeapPath) {
  std::string query, expected;
  for (int i = 99; i >= 0; --i)
    query += "k" + std::to_string(100 + i) + "=" + std::to_string(i) + "&";
  for (int i = 0; i < 100; ++i) {
    if (i > 0) expected += "&";
    expected += "k" + std::to_string(100 + i) + "=" + std::to_string(i);
  }
  EXPECT_EQ(NormalizeQuery(query), expected);
  EXPECT_EQ(MakeCacheKey(Parts(query)), MakeCacheKey(Parts(expected)));
}

TEST(MakeCacheKeyTest, IsDeterministic) {
  EXPECT_EQ(MakeCacheKey(Parts("a=1")), MakeCacheKey(Parts("a=1")));
  EXPECT_NE(MakeCacheKey(Parts("a=1")), CacheKey{});
}

TEST(MakeCacheKeyTest, QueryOrderDoesNotMatter) {
  EXPECT_EQ(MakeCacheKey(Parts("b=2&a=1")), MakeCacheKey(Parts("a=1&b=2")));
  EXPECT_EQ(MakeCacheKey(Parts("a=1&&b=2&")), MakeCacheKey(Parts("b=2&a=1")));
  EXPECT_NE(MakeCacheKey(Parts("a=1&b=2")), MakeCacheKey(Parts("a=2&b=1")));
  EXPECT_NE(MakeCacheKey(Parts("a=1")), MakeCacheKey(Parts("")));
}

TEST(MakeCacheKeyTest, BodiesVaryValuesAndRoutesGiveDifferentKeys) {
  EXPECT_NE(MakeCacheKey(Parts("", "{\"x\":1}")), MakeCacheKey(Parts("", "{\"x\":2}")));
  EXPECT_NE(MakeCacheKey(Parts("", "")), MakeCacheKey(Parts("", "x")));

  VaryList en = {{"accept-language", "en"}};
  VaryList fr = {{"accept-language", "fr"}};
  VaryList none = {{"accept-language", ""}};
  EXPECT_NE(MakeCacheKey(Parts("", "", en)), MakeCacheKey(Parts("", "", fr)));
  EXPECT_NE(MakeCacheKey(Parts("", "", en)), MakeCacheKey(Parts("", "", none)));
  EXPECT_NE(MakeCacheKey(Parts("", "", none)), MakeCacheKey(Parts()));
  EXPECT_EQ(MakeCacheKey(Parts("", "", en)), MakeCacheKey(Parts("", "", VaryList(en))));

  KeyParts other = Parts();
  other.route = "/v1/forecasts/{ticker}";
  EXPECT_NE(MakeCacheKey(other), MakeCacheKey(Parts()));
  KeyParts head = Parts();
  head.method = "POST";
  EXPECT_NE(MakeCacheKey(head), MakeCacheKey(Parts()));
}

TEST(MakeCacheKeyTest, LengthPrefixesPreventConcatenationCollisions) {
  KeyParts a = Parts();
  a.path = "/ab";
  a.body = "c";
  KeyParts b = Parts();
  b.path = "/a";
  b.body = "bc";
  EXPECT_NE(MakeCacheKey(a), MakeCacheKey(b));

  // A query piece that looks like the next part must not collide with it.
  EXPECT_NE(MakeCacheKey(Parts("x", "y")), MakeCacheKey(Parts("xy", "")));
  VaryList ab = {{"a", "b"}};
  VaryList a_b = {{"ab", ""}};
  EXPECT_NE(MakeCacheKey(Parts("", "", ab)), MakeCacheKey(Parts("", "", a_b)));
}

TEST(MakeCacheKeyTest, ManyDistinctPathsDoNotCollide) {
  std::set<std::pair<std::uint64_t, std::uint64_t>> seen;
  for (int i = 0; i < 10'000; ++i) {
    std::string path = "/v1/items/" + std::to_string(i);
    KeyParts p = Parts();
    p.path = path;
    CacheKey k = MakeCacheKey(p);
    EXPECT_TRUE(seen.insert({k.high, k.low}).second) << path;
  }
}

TEST(CacheKeyTest, HexIs32LowercaseDigitsHighHalfFirst) {
  CacheKey k{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(k.Hex(), "0123456789abcdeffedcba9876543210");
  EXPECT_EQ(CacheKey{}.Hex(), std::string(32, '0'));
  CacheKey small{1, 2};
  EXPECT_EQ(small.Hex(), "00000000000000010000000000000002");
  std::string hex = MakeCacheKey(Parts()).Hex();
  ASSERT_EQ(hex.size(), 32u);
  for (char c : hex) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << hex;
}

}  // namespace
}  // namespace megaserve::cache

namespace megaserve::cache {
namespace {

// The key is XXH3-128 of the documented byte sequence, whichever way it is fed (a stack buffer
// for small requests, the streaming state for large bodies), so processes agree on L2 keys.
std::string Serialized(std::string_view method, std::string_view route, std::string_view path,
                       std::string_view query, std::string_view body) {
  std::string out;
  auto length = [&out](std::uint64_t n) {
    for (int i = 0; i < 8; ++i) out += static_cast<char>(n >> (8 * i));
  };
  for (std::string_view part : {method, route, path, query, body}) {
    length(part.size());
    out += part;
  }
  length(0);  // no vary headers
  return out;
}

TEST(MakeCacheKeyTest, SmallAndLargeInputsHashTheSameByteSequence) {
  for (std::size_t body_size : {std::size_t{10}, std::size_t{5000}}) {
    std::string body(body_size, 'b');
    KeyParts parts{.method = "POST", .route = "/r", .path = "/r", .query = "a=1", .body = body};
    std::string bytes = Serialized("POST", "/r", "/r", "a=1", body);
    XXH128_hash_t expected = XXH3_128bits(bytes.data(), bytes.size());
    CacheKey key = MakeCacheKey(parts);
    EXPECT_EQ(key.high, expected.high64) << body_size;
    EXPECT_EQ(key.low, expected.low64) << body_size;
  }
}

TEST(MakeCacheKeyTest, ASaltSelectsAnotherKeyAndZeroChangesNothing) {
  KeyParts parts = Parts("a=1");
  const CacheKey plain = MakeCacheKey(parts);
  parts.salt = 0;
  EXPECT_EQ(MakeCacheKey(parts), plain);
  parts.salt = 1;
  const CacheKey one = MakeCacheKey(parts);
  parts.salt = 2;
  EXPECT_NE(one, plain);
  EXPECT_NE(MakeCacheKey(parts), one);
}

}  // namespace
}  // namespace megaserve::cache
