// Asynchronous HTTP/1.1 client for outbound calls (webhooks, market data, gateway upstreams).
//
// An HttpClient belongs to one boost::asio::io_context (one I/O loop) and is confined to it, so it
// takes no locks: the callback overload of Fetch must be called on that loop's thread (or before
// the loop starts running), and every callback runs there. Threads off the loop use the future
// overload, which posts to the loop.
//
// Connections are kept alive in a pool per (scheme, host, port); see http_client.cc for the reuse,
// retry and timeout rules. TLS uses OpenSSL with peer and host name verification by default.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace megaserve::net {

// One outbound request.
struct ClientRequest {
  std::string method = "GET";
  std::string url;  // absolute http:// or https:// URL
  // Sent as given, in order. Host, User-Agent and Content-Length are added unless present here.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::chrono::milliseconds timeout{0};  // whole exchange, connect included; 0 = client default
};

// A complete response; the body is fully read.
struct ClientResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // in the order received
  std::string body;

  // The value of the first header named `name` (case-insensitive), or "" if there is none.
  // The view points into this response.
  std::string_view Header(std::string_view name) const;
};

struct HttpClientOptions {
  // DNS lookup, TCP connect and TLS handshake together.
  std::chrono::milliseconds connect_timeout{5000};
  // Default for the whole exchange when ClientRequest::timeout is 0.
  std::chrono::milliseconds request_timeout{30000};
  // Idle keep-alive connections kept per (scheme, host, port); 0 disables reuse.
  std::size_t max_idle_per_host = 8;
  // An idle connection unused this long is closed.
  std::chrono::milliseconds idle_timeout{60000};
  // Larger response bodies fail the request and drop the connection.
  std::size_t max_response_bytes = 64 << 20;
  // Verify the server's certificate chain and that it names the URL's host.
  bool verify_peer = true;
  // PEM file of trusted CA certificates; empty = the system's default CA paths.
  std::string ca_file;
  // User-Agent header value; empty = send none.
  std::string user_agent = "megaserve";
  // Decides whether a new connection may be made to the URL's host, given every address the
  // resolver returned for it (for an IP literal, that address alone). Called on the loop's
  // thread after resolution and before connecting; a non-OK status (normally PermissionDenied)
  // fails the Fetch with that status and nothing is connected. Pooled connections were checked
  // when they were opened. Empty = every address is allowed.
  std::function<core::Status(std::string_view host,
                             const std::vector<boost::asio::ip::address>& addresses)>
      address_filter;
};

class HttpClient {
 public:
  struct Stats {
    std::uint64_t connections_opened = 0;  // TCP connections established
    std::uint64_t connections_reused = 0;  // requests sent on a pooled keep-alive connection
    std::uint64_t requests = 0;            // Fetch calls
  };

  // A client whose I/O runs on `ioc`, which must outlive it. Never fails: a bad ca_file is
  // reported by each https request.
  explicit HttpClient(boost::asio::io_context& ioc, HttpClientOptions options = {});

  // Closes idle connections and cancels requests in flight; their callbacks later run on the
  // loop with Canceled (or are destroyed uncalled if the loop never runs again). Must run on the
  // loop's thread or while the loop is not running.
  ~HttpClient();

  // No copying allowed.
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends `req` and calls `done` exactly once on the io_context with the response (any HTTP
  // status counts as success) or an error:
  //   InvalidArgument    malformed URL, method or header; unreadable ca_file (https only);
  //   Unavailable        DNS failure, connection refused or reset, TLS failure (certificate
  //                      verification failures say so), malformed response;
  //   DeadlineExceeded   connect_timeout or the request timeout passed;
  //   ResourceExhausted  the body exceeds max_response_bytes or the header 64 KiB;
  //   (any)              what address_filter returned when it refused the host's addresses;
  //   Canceled           the client was destroyed first.
  // `done` is never called from inside Fetch; an empty `done` discards the result. Must be
  // called on the io_context's thread, or before the io_context starts running; other threads
  // use the future overload.
  void Fetch(ClientRequest req, std::function<void(core::Result<ClientResponse>)> done);

  // Like the callback overload, for threads off the loop: posts the request to the io_context and
  // returns a future for its result. Safe to call from any thread; never block on the future from
  // the loop's own thread. If the loop is destroyed before the request completes, the future
  // holds Canceled.
  std::future<core::Result<ClientResponse>> Fetch(ClientRequest req);

  // Counters since construction. Safe to call from any thread.
  Stats stats() const;

 private:
  class Impl;
  // Shared with requests in flight, which keep it alive after the client is destroyed.
  std::shared_ptr<Impl> impl_;
};

}  // namespace megaserve::net
