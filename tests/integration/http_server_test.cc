// The HTTP server over real loopback sockets: framing, limits, timeouts, errors, CORS, request
// ids and graceful shutdown.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <regex>
#include <thread>

#include "test_support.h"

namespace megaserve::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.router().Add(net::Method::kPost, "/echo", [](const net::Request& r) {
      return net::JsonResponse(200, std::string(r.body));
    });
    server_.router().Add(net::Method::kGet, "/items/{id}", [](const net::Request& r) {
      return net::JsonResponse(200, "{\"id\":\"" + std::string(r.Param("id")) + "\"}");
    });
    server_.Start();
  }
  TestServer server_;
};

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  RawClient c(server_.port());
  ASSERT_TRUE(c.connected());
  for (int i = 0; i < 3; ++i) {
    auto r = c.Roundtrip(Get("/healthz"));
    ASSERT_TRUE(r) << "request " << i;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, R"({"status":"ok"})");
    EXPECT_EQ(r->Header("connection"), "");
    EXPECT_EQ(r->Header("content-type"), "application/json");
  }
  EXPECT_EQ(server_.server().open_connections(), 1);
}

TEST_F(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  RawClient c(server_.port());
  std::string batch;
  for (int i = 0; i < 5; ++i)
    batch += Get("/items/" + std::to_string(i), "X-Request-Id: req-" + std::to_string(i) + "\r\n");
  batch += "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
  ASSERT_TRUE(c.Send(batch));
  for (int i = 0; i < 5; ++i) {
    auto r = c.Read();
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "{\"id\":\"" + std::to_string(i) + "\"}");
    EXPECT_EQ(r->Header("x-request-id"), "req-" + std::to_string(i));
  }
  auto echo = c.Read();
  ASSERT_TRUE(echo);
  EXPECT_EQ(echo->body, "{\"a\":1}");
}

TEST_F(HttpServerTest, BodyArrivingInPiecesIsAssembled) {
  RawClient c(server_.port());
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234"));
  std::this_thread::sleep_for(50ms);
  auto r = c.Roundtrip("56789");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "0123456789");
}

TEST_F(HttpServerTest, ExpectContinueGetsInterimResponse) {
  RawClient c(server_.port());
  auto interim = c.Roundtrip(
      "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  ASSERT_TRUE(interim);  // sent before the body exists
  EXPECT_EQ(interim->status, 100);
  auto r = c.Roundtrip("abcd");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "abcd");
}

TEST_F(HttpServerTest, OversizedBodyGets413AndClose) {
  RawClient c(server_.port());
  auto limit = server_.config().server.max_body_bytes;
  auto r =
      c.Roundtrip("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(limit + 1) +
                  "\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(r->Header("connection"), "close");
  EXPECT_THAT(r->body, HasSubstr(R"("code":"body_too_large")"));
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpServerTest, OversizedHeaderGets431) {
  RawClient c(server_.port());
  std::string big(server_.config().server.max_header_bytes + 100, 'a');
  auto r = c.Roundtrip(Get("/healthz", "X-Big: " + big + "\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 431);
  EXPECT_THAT(r->body, HasSubstr(R"("type":"invalid_request_error")"));
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpServerTest, SlowHeaderGets408) {
  RawClient c(server_.port());
  ASSERT_TRUE(c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n"));  // never finished
  auto start = std::chrono::steady_clock::now();
  auto r = c.Read();
  auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  EXPECT_THAT(r->body, HasSubstr("request_timeout"));
  EXPECT_GE(waited, 300ms);
  EXPECT_LT(waited, 2s);
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpServerTest, SlowBodyGets408) {
  RawClient c(server_.port());
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"));
  auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  EXPECT_THAT(r->body, HasSubstr("body was not received in time"));
}

TEST_F(HttpServerTest, MalformedRequestLineGets400AndClose) {
  for (std::string bad : {"GARBAGE\r\n\r\n", "GET /x HTTP/9.9\r\n\r\n", "GET\r\n\r\n",
                          "GET / HTTP/1.1\r\nBad Header\r\n\r\n"}) {
    RawClient c(server_.port());
    auto r = c.Roundtrip(bad);
    ASSERT_TRUE(r) << bad;
    EXPECT_EQ(r->status, 400) << bad;
    EXPECT_EQ(r->Header("connection"), "close");
    EXPECT_THAT(r->body, HasSubstr(R"("code":"bad_request")"));
    EXPECT_TRUE(c.WaitClosed()) << bad;
  }
}

TEST_F(HttpServerTest, Http11WithoutHostGets400) {
  RawClient c(server_.port());
  auto r = c.Roundtrip("GET /healthz HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_THAT(r->body, HasSubstr(R"("code":"missing_host")"));
  EXPECT_EQ(r->Header("connection"), "close");
  // HTTP/1.0 has no such rule.
  RawClient old(server_.port());
  r = old.Roundtrip("GET /healthz HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, NotFoundAndMethodNotAllowedAreJson) {
  RawClient c(server_.port());
  auto r = c.Roundtrip(Get("/nope"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(
      r->body,
      R"({"error":{"type":"invalid_request_error","code":"not_found","message":"no route for /nope","param":null}})");

  r = c.Roundtrip("DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->Header("allow"), "GET, HEAD, OPTIONS");
  EXPECT_THAT(r->body, HasSubstr(R"("code":"method_not_allowed")"));
  // The connection survives client errors that are not framing errors.
  r = c.Roundtrip(Get("/healthz"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, HeadHasLengthButNoBody) {
  RawClient c(server_.port());
  auto r = c.Roundtrip("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", /*head=*/true);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("content-length"), "15");
  r = c.Roundtrip(Get("/healthz"));  // the next response is not confused with a body
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, R"({"status":"ok"})");
}

TEST_F(HttpServerTest, RequestIdsAreEchoedWhenSaneAndGeneratedOtherwise) {
  RawClient c(server_.port());
  auto r = c.Roundtrip(Get("/healthz", "X-Request-Id: abc-123.DEF_4:5\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->Header("x-request-id"), "abc-123.DEF_4:5");

  r = c.Roundtrip(Get("/healthz", "X-Request-Id: <script>\r\n"));
  ASSERT_TRUE(r);
  EXPECT_TRUE(std::regex_match(r->Header("x-request-id"), std::regex("[0-9a-f]{32}")))
      << r->Header("x-request-id");

  auto r2 = c.Roundtrip(Get("/healthz"));
  ASSERT_TRUE(r2);
  EXPECT_TRUE(std::regex_match(r2->Header("x-request-id"), std::regex("[0-9a-f]{32}")));
  EXPECT_NE(r2->Header("x-request-id"), r->Header("x-request-id"));
}

TEST_F(HttpServerTest, Http10ClosesUnlessKeepAliveAsked) {
  RawClient c(server_.port());
  auto r = c.Roundtrip("GET /healthz HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());

  RawClient k(server_.port());
  r = k.Roundtrip("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->Header("connection"), "keep-alive");
  r = k.Roundtrip("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_TRUE(r);
}

TEST_F(HttpServerTest, SlowClientDoesNotHoldAThread) {
  // Many connections that send half a request and stall; others must still be served at once.
  std::vector<std::unique_ptr<RawClient>> stalled;
  for (int i = 0; i < 20; ++i) {
    stalled.push_back(std::make_unique<RawClient>(server_.port()));
    ASSERT_TRUE(stalled.back()->Send("GET /healthz HTTP/1.1\r\nHo"));
  }
  RawClient c(server_.port(), 1s);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) {
    auto r = c.Roundtrip(Get("/healthz"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 300ms);
}

// A route streaming `count` chunks from another thread, then ending the stream.
net::SyncHandler Streamer(int count) {
  return [count](const net::Request&) {
    net::Response r;
    r.content_type = "text/event-stream";
    r.stream = [count](std::shared_ptr<net::StreamWriter> w) {
      std::thread([w, count] {
        for (int i = 1; i <= count; ++i) {
          EXPECT_TRUE(w->Write("data: " + std::to_string(i) + "\n\n"));
          std::this_thread::sleep_for(20ms);
        }
        w->Close();
        EXPECT_FALSE(w->Write("late"));
      }).detach();
    };
    return r;
  };
}

// A reply made on another thread with make_body: the body is made once, on an I/O thread (not
// the replying one), and goes out with its length, on a connection that then carries on; a
// shorter lazy body after it carries nothing of the first.
TEST(LazyBodyTest, AnAsyncReplysBodyIsMadeOnTheIoThread) {
  TestServer server;
  std::atomic<int> made{0};
  std::thread::id replier, maker;
  server.router().AddAsync(net::Method::kGet, "/lazy", [&](const net::Request&, net::Reply reply) {
    std::thread([&, reply] {
      replier = std::this_thread::get_id();
      net::Response r;
      r.make_body = [&](std::string& out) {
        made.fetch_add(1);
        maker = std::this_thread::get_id();
        out += R"({"made":"late"})";
      };
      reply(std::move(r));
    }).join();
  });
  server.router().AddAsync(net::Method::kGet, "/short", [](const net::Request&, net::Reply reply) {
    net::Response r;
    r.make_body = [](std::string& out) { out += "{}"; };
    reply(std::move(r));
  });
  server.Start();
  RawClient c(server.port());
  auto r = c.Roundtrip(Get("/lazy"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"made":"late"})");
  EXPECT_EQ(r->Header("content-length"), "15");
  EXPECT_EQ(made.load(), 1);
  EXPECT_NE(maker, replier);
  EXPECT_NE(maker, std::this_thread::get_id());
  auto next = c.Roundtrip(Get("/short"));
  ASSERT_TRUE(next);
  EXPECT_EQ(next->status, 200);
  EXPECT_EQ(next->body, "{}");
  EXPECT_EQ(next->Header("content-length"), "2");
  next = c.Roundtrip(Get("/healthz"));
  ASSERT_TRUE(next);
  EXPECT_EQ(next->status, 200);
}

TEST(StreamingTest, ChunksArriveInOrderThenTheConnectionServesTheNextRequest) {
  TestServer server;
  server.router().Add(net::Method::kGet, "/events", Streamer(3));
  server.Start();
  RawClient c(server.port());
  auto head = c.Roundtrip(Get("/events"));
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->Header("transfer-encoding"), "chunked");
  EXPECT_EQ(head->Header("content-type"), "text/event-stream");
  EXPECT_EQ(head->Header("content-length"), "");
  for (int i = 1; i <= 3; ++i) {
    auto chunk = c.ReadChunk();
    ASSERT_TRUE(chunk);
    EXPECT_EQ(*chunk, "data: " + std::to_string(i) + "\n\n");
  }
  auto last = c.ReadChunk();
  ASSERT_TRUE(last);
  EXPECT_EQ(*last, "");
  auto next = c.Roundtrip(Get("/healthz"));
  ASSERT_TRUE(next);
  EXPECT_EQ(next->status, 200);
}

TEST(StreamingTest, ClientDisconnectEndsTheStream) {
  TestServer server;
  std::promise<void> ended;
  std::shared_ptr<net::StreamWriter> writer;
  std::promise<void> started;
  server.router().Add(net::Method::kGet, "/events", [&](const net::Request&) {
    net::Response r;
    r.content_type = "text/event-stream";
    r.stream = [&](std::shared_ptr<net::StreamWriter> w) {
      writer = w;
      w->OnClose([&] { ended.set_value(); });
      started.set_value();
    };
    return r;
  });
  server.Start();
  RawClient c(server.port());
  ASSERT_TRUE(c.Roundtrip(Get("/events")));
  started.get_future().wait();
  EXPECT_FALSE(writer->closed());
  c.Disconnect();
  ASSERT_EQ(ended.get_future().wait_for(2s), std::future_status::ready);
  EXPECT_TRUE(writer->closed());
  EXPECT_FALSE(writer->Write("data: nobody\n\n"));
}

TEST(StreamingTest, ShutdownEndsOpenStreams) {
  TestServer server;
  std::shared_ptr<net::StreamWriter> writer;
  std::promise<void> started;
  server.router().Add(net::Method::kGet, "/events", [&](const net::Request&) {
    net::Response r;
    r.stream = [&](std::shared_ptr<net::StreamWriter> w) {
      writer = w;
      started.set_value();
    };
    return r;
  });
  server.Start();
  RawClient c(server.port());
  ASSERT_TRUE(c.Roundtrip(Get("/events")));
  started.get_future().wait();
  auto start = std::chrono::steady_clock::now();
  server.server().Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);  // no wait for the drain deadline
  auto last = c.ReadChunk();
  ASSERT_TRUE(last);
  EXPECT_EQ(*last, "");
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_TRUE(writer->closed());
}

class IdleTimeoutTest : public ::testing::Test {};

TEST_F(IdleTimeoutTest, IdleKeepAliveConnectionIsClosed) {
  auto config = TestConfig();
  config.server.idle_timeout = 300ms;
  TestServer server(config);
  server.Start();
  RawClient c(server.port());
  ASSERT_TRUE(c.Roundtrip(Get("/healthz")));
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.WaitClosed());
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, 250ms);
  EXPECT_LT(waited, 2s);
  // A connection that never sends anything is closed after the header timeout.
  RawClient silent(server.port());
  EXPECT_TRUE(silent.WaitClosed());
}

TEST(ConnectionLimitTest, ExcessConnectionsGet503WithRetryAfter) {
  auto config = TestConfig();
  config.server.max_connections = 2;
  TestServer server(config);
  server.Start();
  RawClient a(server.port()), b(server.port());
  ASSERT_TRUE(a.Roundtrip(Get("/healthz")));
  ASSERT_TRUE(b.Roundtrip(Get("/healthz")));
  RawClient c(server.port());
  auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("retry-after"), "1");
  EXPECT_THAT(r->body, HasSubstr("too_many_connections"));
  // The canned body's length header must be right.
  EXPECT_EQ(std::to_string(r->body.size()), r->Header("content-length"));
}

TEST(CorsTest, AllowedOriginsGetHeadersOthersDoNot) {
  auto config = TestConfig();
  config.cors.allowed_origins = {"https://app.example"};
  TestServer server(config);
  server.Start();
  RawClient c(server.port());
  auto r = c.Roundtrip(Get("/healthz", "Origin: https://app.example\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->Header("access-control-allow-origin"), "https://app.example");
  EXPECT_EQ(r->Header("vary"), "Origin");

  r = c.Roundtrip(Get("/healthz", "Origin: https://evil.example\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->Header("access-control-allow-origin"), "");

  r = c.Roundtrip(
      "OPTIONS /v1/status HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
      "Access-Control-Request-Method: GET\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->Header("access-control-allow-origin"), "https://app.example");
  EXPECT_EQ(r->Header("access-control-allow-methods"), "GET, HEAD, OPTIONS");
  EXPECT_THAT(r->Header("access-control-allow-headers"), HasSubstr("content-type"));
  EXPECT_EQ(r->Header("access-control-max-age"), "600");
  EXPECT_EQ(r->Header("content-length"), "");
}

TEST(ShutdownTest, InFlightRequestFinishesAndNewConnectionsAreRefused) {
  TestServer server;
  std::promise<void> request_arrived;
  server.router().AddAsync(net::Method::kGet, "/slow", [&](const net::Request&, net::Reply reply) {
    request_arrived.set_value();
    std::thread([reply] {
      std::this_thread::sleep_for(400ms);
      reply(net::JsonResponse(200, R"({"slow":true})"));
    }).detach();
  });
  server.Start();

  RawClient idle(server.port());
  ASSERT_TRUE(idle.Roundtrip(Get("/healthz")));  // an idle keep-alive connection
  RawClient busy(server.port());
  ASSERT_TRUE(busy.Send(Get("/slow")));
  request_arrived.get_future().wait();

  auto start = std::chrono::steady_clock::now();
  std::thread stopper([&] { server.server().Shutdown(); });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(server.server().ready());
  EXPECT_TRUE(idle.WaitClosed());  // idle connections close at once

  auto r = busy.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"slow":true})");
  EXPECT_EQ(r->Header("connection"), "close");
  stopper.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);

  RawClient late(server.port());
  EXPECT_FALSE(late.connected());
}

TEST(ShutdownTest, DrainDeadlineClosesStuckRequests) {
  auto config = TestConfig();
  config.server.drain_timeout = 200ms;
  TestServer server(config);
  std::shared_ptr<net::Reply> kept;
  server.router().AddAsync(net::Method::kGet, "/never", [&](const net::Request&, net::Reply reply) {
    kept = std::make_shared<net::Reply>(std::move(reply));  // never answered
  });
  server.Start();
  RawClient c(server.port());
  ASSERT_TRUE(c.Send(Get("/never")));
  std::this_thread::sleep_for(100ms);
  auto start = std::chrono::steady_clock::now();
  server.server().Shutdown();
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 1s);
  EXPECT_TRUE(c.WaitClosed());
  kept.reset();
}

}  // namespace
}  // namespace megaserve::testing
