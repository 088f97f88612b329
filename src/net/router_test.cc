#include "net/router.h"

#include <gtest/gtest.h>

namespace megaserve::net {
namespace {

SyncHandler Text(std::string s) {
  return [s](const Request&) { return JsonResponse(200, s); };
}

Request Req(Method m, std::string_view path) {
  Request r;
  r.method = m;
  r.path = path;
  return r;
}

TEST(RouterTest, LiteralAndParameterRoutes) {
  Router router;
  router.Add(Method::kGet, "/v1/status", Text("status"));
  router.Add(Method::kGet, "/v1/jobs/{id}", Text("job"));
  router.Add(Method::kGet, "/v1/jobs/{id}/events", Text("events"));
  router.Add(Method::kGet, "/v1/artifacts/{sha256}.{ext}", Text("artifact"));

  Request r = Req(Method::kGet, "/v1/status");
  auto m = router.Find(r);
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(m.route->pattern, "/v1/status");

  r = Req(Method::kGet, "/v1/jobs/abc123");
  m = router.Find(r);
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(m.route->pattern, "/v1/jobs/{id}");
  EXPECT_EQ(r.Param("id"), "abc123");

  r = Req(Method::kGet, "/v1/jobs/abc/events");
  m = router.Find(r);
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(m.route->pattern, "/v1/jobs/{id}/events");
  EXPECT_EQ(r.Param("id"), "abc");

  r = Req(Method::kGet, "/v1/artifacts/deadbeef.png");
  m = router.Find(r);
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(r.Param("sha256"), "deadbeef");
  EXPECT_EQ(r.Param("ext"), "png");
}

TEST(RouterTest, NoMatch) {
  Router router;
  router.Add(Method::kGet, "/v1/jobs/{id}", Text("job"));
  for (std::string_view p : {"/v1/jobs", "/v1/jobs/", "/v1/jobs/a/b", "", "v1/jobs/a", "/nope"}) {
    Request r = Req(Method::kGet, p);
    EXPECT_EQ(router.Find(r).route, nullptr) << p;
  }
  Request r = Req(Method::kGet, "/v1/artifacts/x");
  router.Add(Method::kGet, "/v1/artifacts/{sha256}.{ext}", Text("a"));
  EXPECT_EQ(router.Find(r).route, nullptr);
}

TEST(RouterTest, MethodNotAllowedListsAllow) {
  Router router;
  router.Add(Method::kGet, "/v1/status", Text("s"));
  router.Add(Method::kPost, "/v1/jobs", Text("create"));
  router.Add(Method::kGet, "/v1/jobs", Text("list"));

  Request r = Req(Method::kDelete, "/v1/jobs");
  auto m = router.Find(r);
  ASSERT_NE(m.route, nullptr);
  EXPECT_FALSE(m.method_allowed);
  EXPECT_EQ(m.route->allow, "GET, HEAD, POST, OPTIONS");

  r = Req(Method::kHead, "/v1/status");
  EXPECT_TRUE(router.Find(r).method_allowed);  // HEAD falls back to GET
  r = Req(Method::kPost, "/v1/status");
  EXPECT_FALSE(router.Find(r).method_allowed);
}

TEST(RouterTest, RouteIdsAreDense) {
  Router router;
  router.Add(Method::kGet, "/a", Text("a"));
  router.Add(Method::kPost, "/a", Text("a"));
  router.Add(Method::kGet, "/b/{x}", Text("b"));
  ASSERT_EQ(router.routes().size(), 2u);
  EXPECT_EQ(router.routes()[0]->id, 0u);
  EXPECT_EQ(router.routes()[1]->id, 1u);
}

}  // namespace
}  // namespace megaserve::net
