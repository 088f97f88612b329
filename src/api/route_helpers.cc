#include "api/route_helpers.h"

#include <memory>
#include <string>
#include <utility>

namespace megaserve::api {

void WriteString(JsonWriter& w, const char* key, std::string_view value) {
  w.Key(key);
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

net::Response StoreUnavailable(const core::Status& s) {
  net::Response r = net::ErrorResponse(503, "store_unavailable", s.message());
  r.headers.emplace_back("Retry-After", "1");
  return r;
}

void OffLoop(core::BlockingPool& pool, net::Reply reply, std::function<net::Response()> work,
             std::string_view waiting_for) {
  auto shared_reply = std::make_shared<net::Reply>(std::move(reply));
  bool queued = pool.Submit([shared_reply, work = std::move(work)] { (*shared_reply)(work()); });
  if (!queued) {
    net::Response r = net::ErrorResponse(
        503, "overloaded", "too many requests waiting for " + std::string(waiting_for));
    r.headers.emplace_back("Retry-After", "1");
    (*shared_reply)(std::move(r));
  }
}

}  // namespace megaserve::api
