#include "api/status.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <thread>

namespace megaserve::api {
namespace {

TEST(StatusCacheTest, RebuiltOnlyAfterTtl) {
  StatusInfo info;
  StatusCache cache(info, std::chrono::milliseconds(50));
  auto a = cache.Get();
  EXPECT_EQ(*cache.Get(), *a);
  EXPECT_EQ(cache.builds(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  cache.Get();
  EXPECT_EQ(cache.builds(), 2u);
  // Another thread shares the current build instead of making its own...
  std::shared_ptr<const std::string> other;
  std::thread([&] { other = cache.Get(); }).join();
  EXPECT_EQ(cache.builds(), 2u);
  // ...but holds its own copy, so threads share no reference count.
  EXPECT_NE(other.get(), cache.Get().get());
  EXPECT_EQ(*other, *cache.Get());
}

TEST(StatusCacheTest, DocumentHasTheFieldsOperatorsNeed) {
  core::Config config;
  net::Router router;
  router.Add(net::Method::kGet, "/x/{id}", [](const net::Request&) { return net::Response{}; });
  StatusInfo info;
  info.roles = {"api"};
  info.config = &config;
  info.router = &router;
  info.io_threads = 4;
  StatusCache cache(info);
  rapidjson::Document d;
  d.Parse(cache.Get()->c_str());
  ASSERT_FALSE(d.HasParseError());
  EXPECT_STREQ(d["service"].GetString(), "megaserve");
  EXPECT_STREQ(d["roles"][0].GetString(), "api");
  EXPECT_GE(d["uptime_seconds"].GetDouble(), 0.0);
  EXPECT_EQ(d["cache_ttl_seconds"].GetInt(), 30);
  EXPECT_STREQ(d["server"]["listen"].GetString(), "127.0.0.1:8080");
  EXPECT_EQ(d["server"]["io_threads"].GetUint(), 4u);
  EXPECT_STREQ(d["routes"][0]["path"].GetString(), "/x/{id}");
  EXPECT_STREQ(d["routes"][0]["methods"].GetString(), "GET, HEAD, OPTIONS");
  EXPECT_TRUE(d["build"]["commit"].IsString());
  EXPECT_TRUE(d["host"]["pid"].IsInt64());
}

}  // namespace
}  // namespace megaserve::api
