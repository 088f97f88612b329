#include "api/system_routes.h"

#include <gtest/gtest.h>

#include "metrics/registry.h"

namespace megaserve::api {
namespace {

// Calls the handler the router picks, as the server would.
net::Response Call(const net::Router& router, net::Method method, std::string_view path,
                   std::string_view authorization = {}) {
  net::Request req;
  req.method = method;
  req.path = path;
  static std::string_view auth;
  auth = authorization;
  req.SetHeaderSource(nullptr, [](const void*, std::string_view name) {
    return name == "authorization" ? auth : std::string_view{};
  });
  auto match = router.Find(req);
  if (!match.route || !match.method_allowed) return net::ErrorResponse(404, "x", "x");
  return match.route->sync[static_cast<std::size_t>(method)](req);
}

class SystemRoutesTest : public ::testing::Test {
 protected:
  void Register() {
    SystemContext ctx;
    ctx.config = &config_;
    ctx.registry = &registry_;
    ctx.status = &status_;
    ctx.ready = [this] { return ready_; };
    ctx.draining = [this] { return draining_; };
    RegisterSystemRoutes(router_, ctx);
  }
  core::Config config_;
  metrics::Registry registry_;
  StatusCache status_{StatusInfo{}};
  net::Router router_;
  bool ready_ = false;
  bool draining_ = false;
};

TEST_F(SystemRoutesTest, ReadinessStates) {
  Register();
  auto r = Call(router_, net::Method::kGet, "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, R"({"status":"starting"})");
  ready_ = true;
  EXPECT_EQ(Call(router_, net::Method::kGet, "/readyz").status, 200);
  ready_ = false;
  draining_ = true;
  EXPECT_EQ(Call(router_, net::Method::kGet, "/readyz").body, R"({"status":"draining"})");
  EXPECT_EQ(Call(router_, net::Method::kGet, "/healthz").status, 200);
}

TEST_F(SystemRoutesTest, MetricsExposeRegistryAndHonourToken) {
  registry_.AddCounter("megaserve_test_total", "A test counter.").WithLabels({}).Inc(7);
  config_.metrics.bearer_token = "tok";
  Register();
  EXPECT_EQ(Call(router_, net::Method::kGet, "/metrics").status, 401);
  EXPECT_EQ(Call(router_, net::Method::kGet, "/metrics", "Bearer to").status, 401);
  EXPECT_EQ(Call(router_, net::Method::kGet, "/metrics", "Bearer tokk").status, 401);
  auto r = Call(router_, net::Method::kGet, "/metrics", "Bearer tok");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("megaserve_test_total 7"), std::string::npos) << r.body;
}

TEST_F(SystemRoutesTest, MetricsCanBeTurnedOff) {
  config_.metrics.enabled = false;
  Register();
  net::Request req;
  req.method = net::Method::kGet;
  req.path = "/metrics";
  EXPECT_EQ(router_.Find(req).route, nullptr);
}

TEST_F(SystemRoutesTest, OpenApiIsTheEmbeddedDocument) {
  Register();
  auto r = Call(router_, net::Method::kGet, "/openapi.json");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Body(), kOpenApiJson);
  EXPECT_NE(kOpenApiJson.find("\"openapi\": \"3.1.0\""), std::string_view::npos);
}

}  // namespace
}  // namespace megaserve::api
