// Server lifecycle without the API layer; request handling over sockets is covered by
// tests/integration/http_server_test.cc.
#include "net/server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/registry.h"

namespace megaserve::net {
namespace {

core::Config LoopbackConfig() {
  core::Config c;
  c.server.listen = "127.0.0.1:0";
  c.server.threads = 3;
  c.log.access = false;
  return c;
}

std::string Fetch(unsigned short port, const std::string& request) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return "";
  }
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<std::size_t>(n));
  close(fd);
  return out;
}

TEST(ServerTest, ServesOnEphemeralPortFromEveryThread) {
  auto config = LoopbackConfig();
  Router router;
  router.Add(Method::kGet, "/hi", [](const Request&) { return JsonResponse(200, "\"hi\""); });
  metrics::Registry registry;
  Server server(config, router, registry);
  ASSERT_TRUE(server.Start().ok());
  EXPECT_NE(server.port(), 0);
  EXPECT_EQ(server.loops().size(), 3u);
  EXPECT_FALSE(server.ready());  // until the owner says so
  for (int i = 0; i < 30; ++i) {
    std::string r =
        Fetch(server.port(), "GET /hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    ASSERT_EQ(r.substr(0, 15), "HTTP/1.1 200 OK") << r;
    EXPECT_NE(r.find("\r\n\r\n\"hi\""), std::string::npos);
  }
  server.Shutdown();
  server.Shutdown();  // idempotent
  EXPECT_EQ(Fetch(server.port(), "GET /hi HTTP/1.1\r\n\r\n"), "");
}

TEST(ServerTest, BindFailureIsAStatusNotACrash) {
  auto config = LoopbackConfig();
  Router router;
  metrics::Registry registry;
  Server first(config, router, registry);
  ASSERT_TRUE(first.Start().ok());

  // A plain listener (no SO_REUSEPORT) on a port makes binding it fail.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  config.server.listen = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  Server second(config, router, registry);
  core::Status s = second.Start();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cannot listen on 127.0.0.1:"), std::string::npos) << s.message();
  close(fd);
}

}  // namespace
}  // namespace megaserve::net
