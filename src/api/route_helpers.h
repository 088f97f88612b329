// Pieces every route file uses: running blocking work off the I/O threads, parsing a small
// request body, and writing a string member with rapidjson.
#pragma once

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstddef>
#include <functional>
#include <string_view>

#include "core/blocking_pool.h"
#include "core/status.h"
#include "net/http.h"

namespace megaserve::api {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// A request body parsed into a rapidjson document whose values and parse stack live in buffers
// inside this object, so a small body parses without touching the heap (rapidjson's default
// Document takes a 64 KiB chunk from the heap for its first value, and again for its parse
// stack). A larger body spills to the heap as usual.
class SmallJsonBody {
 public:
  using Document = rapidjson::GenericDocument<rapidjson::UTF8<>, rapidjson::MemoryPoolAllocator<>,
                                              rapidjson::MemoryPoolAllocator<>>;
  explicit SmallJsonBody(std::string_view body) { doc_.Parse(body.data(), body.size()); }
  SmallJsonBody(const SmallJsonBody&) = delete;  // the allocators point into this object
  SmallJsonBody& operator=(const SmallJsonBody&) = delete;
  Document& doc() { return doc_; }
  // True when parsing needed memory beyond the buffers inside this object.
  bool spilled() const {
    return value_allocator_.Capacity() > sizeof(values_) ||
           stack_allocator_.Capacity() > sizeof(stack_);
  }

 private:
  // The parse stack's allocator serves two stacks: the document's (its values while parsing)
  // and the reader's (rapidjson's 256 bytes for decoding one string). Each takes its whole
  // initial capacity at once, and the allocator keeps its bookkeeping at the start of the
  // buffer; when these do not fit, it takes a 64 KiB chunk from the heap.
  static constexpr std::size_t kDocumentStack = 256;
  static constexpr std::size_t kReaderStack = 256;  // rapidjson::Reader::kDefaultStackCapacity
  static constexpr std::size_t kPoolHeader = 64;    // more than rapidjson's chunk header

  char values_[1024];
  char stack_[kDocumentStack + kReaderStack + kPoolHeader];
  rapidjson::MemoryPoolAllocator<> value_allocator_{values_, sizeof(values_)};
  rapidjson::MemoryPoolAllocator<> stack_allocator_{stack_, sizeof(stack_)};
  Document doc_{&value_allocator_, kDocumentStack, &stack_allocator_};
};

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
