// The request and response types handlers see, independent of the HTTP library underneath.
//
// A Request is a view: every string_view in it points into the connection's buffers and is valid
// only until the handler replies. Copy what must outlive the reply.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace megaserve::net {

enum class Method : uint8_t { kGet, kHead, kPost, kPut, kDelete, kPatch, kOptions, kOther };
inline constexpr std::size_t kMethodCount = 8;

// ASCII case-insensitive equality, for header names and tokens.
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// "GET" -> kGet; anything unknown -> kOther.
Method ParseMethod(std::string_view text);
// kGet -> "GET".
std::string_view MethodName(Method m);

class Request {
 public:
  static constexpr std::size_t kMaxParams = 8;

  Method method = Method::kOther;
  std::string_view method_text;  // as sent
  std::string_view target;       // path and query as sent
  std::string_view path;         // target up to '?'
  std::string_view query;        // after '?', without it; "" if none
  std::string_view body;
  std::string_view request_id;   // accepted from X-Request-Id or generated
  std::string_view remote_addr;  // peer IP address
  unsigned version = 11;         // 10 or 11

  // Calls fn(name, value) for every header, in the order received.
  template <typename Fn>
  void ForEachHeader(Fn&& fn) const {
    if (each_header_) {
      each_header_(
          headers_,
          [](void* f, std::string_view n, std::string_view v) { (*static_cast<Fn*>(f))(n, v); },
          &fn);
    }
  }
  // The value of a header (name case-insensitive), or "" when absent.
  std::string_view Header(std::string_view name) const { return find_header_(headers_, name); }
  // A path parameter from the route pattern ("/v1/jobs/{id}" -> Param("id")), or "" when absent.
  std::string_view Param(std::string_view name) const;
  // The first value of a query parameter, percent-decoding not applied; "" when absent.
  std::string_view QueryParam(std::string_view name) const;

  // Sets target, and path and query from it (split at the first '?'). `t` must outlive the
  // request.
  void SetTarget(std::string_view t) {
    target = t;
    const std::size_t q = t.find('?');
    path = t.substr(0, q);
    query = q == std::string_view::npos ? std::string_view{} : t.substr(q + 1);
  }

  // Used by the router and the server to fill in the request.
  void AddParam(std::string_view name, std::string_view value);
  void ClearParams() { param_count_ = 0; }
  using HeaderFinder = std::string_view (*)(const void* headers, std::string_view name);
  using HeaderVisitor = void (*)(void* fn, std::string_view name, std::string_view value);
  using HeaderEnumerator = void (*)(const void* headers, HeaderVisitor visit, void* fn);
  void SetHeaderSource(const void* headers, HeaderFinder finder, HeaderEnumerator each = nullptr) {
    headers_ = headers;
    find_header_ = finder;
    each_header_ = each;
  }

 private:
  static std::string_view NoHeaders(const void*, std::string_view) { return {}; }
  std::array<std::pair<std::string_view, std::string_view>, kMaxParams> params_{};
  std::size_t param_count_ = 0;
  const void* headers_ = nullptr;
  HeaderFinder find_header_ = &NoHeaders;
  HeaderEnumerator each_header_ = nullptr;
};

// The body of a streaming response (Server-Sent Events and the like), sent with chunked transfer
// encoding. Every method may be called from any thread, until the server is destroyed (as with
// Reply, holders must let go of writers before that).
class StreamWriter {
 public:
  virtual ~StreamWriter() = default;
  // Queues data to go out as one chunk. Returns false once the stream has ended; data passed
  // after the client went away is dropped.
  virtual bool Write(std::string data) = 0;
  // Ends the response; the connection then serves its next request. Idempotent.
  virtual void Close() = 0;
  // True once the stream has ended, by Close(), the client going away, or shutdown.
  virtual bool closed() const = 0;
  // Runs fn once when the stream ends for any reason, on the connection's I/O thread (or at once
  // on the caller's thread if it already has).
  virtual void OnClose(std::function<void()> fn) = 0;
};

struct Response {
  int status = 200;
  // Must point at storage that outlives the response (a string literal in practice).
  std::string_view content_type = "application/json";
  // When non-empty, sent instead of content_type (proxied and cached responses).
  std::string owned_content_type;
  std::string body;
  // When set, sent instead of body: lets cached bodies go out without a copy.
  std::shared_ptr<const std::string> shared_body;
  // Extra headers, e.g. {"Retry-After", "1"}, {"Allow", "GET, HEAD"}.
  std::vector<std::pair<std::string, std::string>> headers;
  // More headers, already written as "\r\nName: value" lines (shared by cached responses, so a
  // hit copies none of them). Sent after `headers`.
  std::shared_ptr<const std::string> header_lines;
  // Header lines written the same way by the handler or filters on the way out; sent last.
  std::string more_header_lines;
  // Close the connection after this response.
  bool close = false;
  // When set, the response is streamed: the head goes out with chunked transfer encoding (the
  // body fields are ignored), then this runs on the I/O thread with the writer for the body.
  // A client that disconnects, or a write stalled past server.write_timeout, ends the stream.
  std::function<void(std::shared_ptr<StreamWriter>)> stream;
  // When set, makes the body in place of `body`, where it is needed: on the connection's I/O
  // thread just before the response is written, or in a filter that reads the body (see
  // ProduceBody). Lets a handler that answers from another thread, such as a model's batcher,
  // leave the serialization to the I/O threads. Appends the body's text to the string it is
  // given, which the server reuses from one response to the next. Runs once.
  std::function<void(std::string& out)> make_body;

  // The body as set (make_body not run).
  std::string_view Body() const { return shared_body ? std::string_view(*shared_body) : body; }
  // Runs make_body, if set, into body, and clears it.
  void ProduceBody();
  // The value of the first header named `name` (case-insensitive) in headers, header_lines or
  // more_header_lines, or "" (for tests and filters; not a hot path).
  std::string_view HeaderValue(std::string_view name) const;
  std::string_view ContentType() const {
    return owned_content_type.empty() ? content_type : std::string_view(owned_content_type);
  }
};

// The JSON error every endpoint uses:
// {"error":{"type":TYPE,"code":CODE,"message":MESSAGE,"param":PARAM|null}}.
// type is derived from the status: invalid_request_error (4xx), rate_limit_error (429),
// server_error (5xx).
Response ErrorResponse(int status, std::string_view code, std::string_view message,
                       std::string_view param = {});

// A JSON response with the given status.
Response JsonResponse(int status, std::string body);

// The standard reason phrase of a status code ("Not Found"), or "Unknown".
std::string_view ReasonPhrase(int status);

// A synchronous handler returns its response; it runs on an I/O thread, so it must not block.
using SyncHandler = std::function<Response(const Request&)>;
// Completes an asynchronous handler. May be called from any thread, exactly once.
using Reply = std::function<void(Response)>;
// An asynchronous handler replies later (e.g. after a job store or model call). The Request stays
// valid until reply is called.
using AsyncHandler = std::function<void(const Request&, Reply)>;

// Lets a handler that usually answers at once take the asynchronous path when it must.
class Deferrer {
 public:
  // The Reply that will answer this request. Call at most once, and only while the handler runs.
  virtual Reply Defer() = 0;

 protected:
  ~Deferrer() = default;
};
// A handler that answers at once by filling `out` and returning true, or calls defer.Defer()
// before returning false and answers later through that Reply. Runs on an I/O thread.
using HybridHandler = std::function<bool(const Request&, Response& out, Deferrer& defer)>;

}  // namespace megaserve::net
