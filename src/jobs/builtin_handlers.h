// The built-in job types, used by tests and benchmarks:
//   noop   returns {} at once.
//   sleep  input {"seconds": number in [0, 3600], default 1}; sleeps that long, reporting
//          progress every 100 ms as elapsed of total milliseconds; stops early when canceled.
//          Output {"slept_ms": <ms slept>}.
//   fail   input {"message": string, default "failed on purpose"}; always returns an error with
//          that message, so the job is retried and finally ends failed.
#pragma once

#include <string_view>

#include "core/status.h"
#include "jobs/workers.h"

namespace megaserve::jobs {

// Registers "noop", "sleep" and "fail" with `workers`. Call before Workers::Start().
void RegisterBuiltinHandlers(Workers& workers);

// Validates the input JSON of a built-in type before it is enqueued: an object whose fields, where
// present, have the documented types and ranges (sleep.seconds a number in [0, 3600],
// fail.message a string). kInvalidArgument with the reason otherwise; OK for other types.
core::Status ValidateBuiltinInput(std::string_view type, std::string_view input_json);

}  // namespace megaserve::jobs
