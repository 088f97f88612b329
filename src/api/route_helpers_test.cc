#include "api/route_helpers.h"

#include <gtest/gtest.h>

#include <string>

namespace megaserve::api {
namespace {

TEST(SmallJsonBodyTest, ASmallBodyParsesInsideTheObject) {
  SmallJsonBody body(R"({"symbol":"BTCUSDT","interval":"4h","horizon":6,"quantiles":[0.1,0.9]})");
  auto& d = body.doc();
  ASSERT_FALSE(d.HasParseError());
  ASSERT_TRUE(d.IsObject());
  EXPECT_STREQ(d["symbol"].GetString(), "BTCUSDT");
  EXPECT_STREQ(d["interval"].GetString(), "4h");
  EXPECT_EQ(d["horizon"].GetInt(), 6);
  ASSERT_EQ(d["quantiles"].Size(), 2u);
  EXPECT_DOUBLE_EQ(d["quantiles"][1].GetDouble(), 0.9);
  EXPECT_FALSE(body.spilled());
}

TEST(SmallJsonBodyTest, ALargeBodySpillsToTheHeapAndStillParses) {
  std::string text = R"({"values":[)";
  for (int i = 0; i < 2000; ++i) text += (i ? "," : "") + std::to_string(i);
  text += "]}";
  SmallJsonBody body(text);
  auto& d = body.doc();
  ASSERT_FALSE(d.HasParseError());
  ASSERT_EQ(d["values"].Size(), 2000u);
  EXPECT_EQ(d["values"][1999].GetInt(), 1999);
  EXPECT_TRUE(body.spilled());
}

TEST(SmallJsonBodyTest, BadJsonIsAParseError) {
  SmallJsonBody body(R"({"symbol":)");
  EXPECT_TRUE(body.doc().HasParseError());
}

}  // namespace
}  // namespace megaserve::api
