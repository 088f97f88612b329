// The admin key routes over a real SQLite store and blocking pool, called as the router would.
#include "api/key_routes.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <condition_variable>
#include <mutex>
#include <optional>

#include "store/test_util.h"

namespace megaserve::api {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

class KeyRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test_db_.Open(store::Engine::kSqlite);
    if (HasFatalFailure()) return;
    keys_ = std::make_unique<gateway::ApiKeyStore>(test_db_.db());
    RegisterKeyRoutes(router_, {.store = keys_.get(), .pool = &pool_});
  }

  // Calls the handler the router picks and waits for its reply.
  net::Response Call(net::Method method, const std::string& path, const std::string& body = "") {
    net::Request req;
    req.method = method;
    req.target = req.path = path;
    req.body = body;
    auto match = router_.Find(req);
    if (!match.route || !match.method_allowed) return net::ErrorResponse(404, "no_route", path);
    std::mutex mu;
    std::condition_variable cv;
    std::optional<net::Response> out;
    match.route->async[static_cast<std::size_t>(method)](req, [&](net::Response r) {
      std::lock_guard lock(mu);
      out = std::move(r);
      cv.notify_all();
    });
    std::unique_lock lock(mu);
    cv.wait_for(lock, 5s, [&] { return out.has_value(); });
    EXPECT_TRUE(out.has_value()) << "no reply";
    return out ? std::move(*out) : net::Response{};
  }

  static rapidjson::Document Json(const net::Response& r) {
    rapidjson::Document d;
    d.Parse(r.body.c_str(), r.body.size());
    EXPECT_FALSE(d.HasParseError()) << r.body;
    return d;
  }

  store::testing::TestDatabase test_db_;
  std::unique_ptr<gateway::ApiKeyStore> keys_;
  core::BlockingPool pool_{"keys-routes-test", 2, 16};
  net::Router router_;
};

TEST_F(KeyRoutesTest, CreateShowsTheTokenOnceAndListHidesIt) {
  net::Response created = Call(net::Method::kPost, "/v1/admin/keys",
                               R"({"name":"batch","scopes":["jobs","images"],"quota":30})");
  ASSERT_EQ(created.status, 201) << created.body;
  rapidjson::Document d = Json(created);
  ASSERT_TRUE(d.IsObject());
  std::string token = d["key"].GetString();
  std::string id = d["id"].GetString();
  auto parsed = gateway::ParseToken(token);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->id, id);
  EXPECT_STREQ(d["name"].GetString(), "batch");
  ASSERT_EQ(d["scopes"].Size(), 2u);
  EXPECT_STREQ(d["scopes"][0].GetString(), "images");
  EXPECT_EQ(d["quota"].GetInt64(), 30);
  EXPECT_TRUE(d["created_at"].IsString());
  EXPECT_TRUE(keys_->Verify(token).ok());

  net::Response list = Call(net::Method::kGet, "/v1/admin/keys");
  ASSERT_EQ(list.status, 200);
  rapidjson::Document l = Json(list);
  ASSERT_EQ(l["data"].Size(), 1u);
  EXPECT_STREQ(l["data"][0]["id"].GetString(), id.c_str());
  EXPECT_FALSE(l["data"][0].HasMember("key"));
  EXPECT_THAT(list.body, Not(HasSubstr(std::string(parsed->secret))));

  net::Response one = Call(net::Method::kGet, "/v1/admin/keys/" + id);
  ASSERT_EQ(one.status, 200);
  EXPECT_THAT(one.body, Not(HasSubstr(std::string(parsed->secret))));
  EXPECT_THAT(one.body, HasSubstr("\"revoked_at\":null"));
}

TEST_F(KeyRoutesTest, DeleteRevokesAndUnknownIdsAre404) {
  auto created = keys_->Create("k", 0, 0);
  ASSERT_TRUE(created.ok());
  net::Response revoked = Call(net::Method::kDelete, "/v1/admin/keys/" + created->key.id);
  ASSERT_EQ(revoked.status, 200) << revoked.body;
  EXPECT_TRUE(Json(revoked)["revoked_at"].IsString());
  EXPECT_EQ(keys_->Verify(created->token).status().code(), core::StatusCode::kPermissionDenied);

  for (net::Method m : {net::Method::kGet, net::Method::kDelete}) {
    net::Response missing = Call(m, "/v1/admin/keys/nosuchkey000");
    EXPECT_EQ(missing.status, 404);
    EXPECT_THAT(missing.body, HasSubstr("\"code\":\"key_not_found\""));
  }
}

TEST_F(KeyRoutesTest, BadBodiesAre400NamingTheParam) {
  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({"scopes":[]})", "name"},
      {R"({"name":""})", "name"},
      {R"({"name":"x","scopes":"jobs"})", "scopes"},
      {R"({"name":"x","scopes":["jobs","teleport"]})", "scopes"},
      {R"({"name":"x","quota":-1})", "quota"},
      {R"({"name":"x","quota":1.5})", "quota"},
  };
  for (const Case& c : cases) {
    net::Response r = Call(net::Method::kPost, "/v1/admin/keys", c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_THAT(r.body, HasSubstr(std::string("\"param\":\"") + c.param + "\"")) << r.body;
  }
  net::Response teleport =
      Call(net::Method::kPost, "/v1/admin/keys", R"({"name":"x","scopes":["teleport"]})");
  EXPECT_THAT(teleport.body, HasSubstr("teleport"));
  EXPECT_EQ(Call(net::Method::kPost, "/v1/admin/keys", "not json").status, 400);
  EXPECT_TRUE(keys_->List()->empty());
}

}  // namespace
}  // namespace megaserve::api
