// Pieces every route file uses: running blocking work off the I/O threads, and writing a string
// member with rapidjson.
#pragma once

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <functional>
#include <string_view>

#include "core/blocking_pool.h"
#include "core/status.h"
#include "net/http.h"

namespace megaserve::api {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// Writes "key": "value".
void WriteString(JsonWriter& w, const char* key, std::string_view value);

// 503 "store_unavailable" with Retry-After: 1, for a store that is down or out of connections.
net::Response StoreUnavailable(const core::Status& s);

// Runs `work` on `pool` and replies with what it returns. When the pool's queue is full it
// replies at once with 503 "overloaded" and Retry-After: 1, saying the request was waiting for
// `waiting_for` ("the store", "a thread").
void OffLoop(core::BlockingPool& pool, net::Reply reply, std::function<net::Response()> work,
             std::string_view waiting_for);

}  // namespace megaserve::api
