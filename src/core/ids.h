// Identifiers: UUID version 7 (RFC 9562, section 5.7), time-ordered so that ids sort by creation.
//
// Layout: 48-bit Unix time in milliseconds, version 7, a 12-bit counter (RFC 9562 section 6.2,
// method 1: "fixed bit-length dedicated counter") that restarts from a random value each new
// millisecond and increments within one, variant 0b10, then 62 random bits. Ids from one thread
// are strictly increasing; across threads they are ordered to the millisecond.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace megaserve::core {

// A new UUIDv7 in canonical form: 36 lower-case characters, "0190b5b8-…".
std::string NewUuidV7();

// True when text is a canonical UUID (8-4-4-4-12 hex digits, either case).
bool IsUuid(std::string_view text);

// The Unix time in milliseconds stored in a UUIDv7; -1 when text is not one.
int64_t UuidV7Millis(std::string_view text);

// A number no other call in this process returns (never 0): identifies an object for per-thread
// memos that must not mistake a new object at a reused address for an old one.
std::uint64_t NextInstanceId();

}  // namespace megaserve::core
