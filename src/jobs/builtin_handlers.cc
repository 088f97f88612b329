#include "jobs/builtin_handlers.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace megaserve::jobs {

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kMaxSleepSeconds = 3600;
constexpr auto kSleepProgressEvery = std::chrono::milliseconds(100);
constexpr const char* kDefaultFailMessage = "failed on purpose";

// Parses `input_json` as a JSON object into `doc`.
core::Status ParseObject(std::string_view type, std::string_view input_json,
                         rapidjson::Document* doc) {
  doc->Parse(input_json.data(), input_json.size());
  if (doc->HasParseError()) {
    return core::InvalidArgument(std::string(type) + ": input is not valid JSON");
  }
  if (!doc->IsObject()) {
    return core::InvalidArgument(std::string(type) + ": input must be a JSON object");
  }
  return core::Status::Ok();
}

// sleep.seconds, or the reason it is unusable.
core::Result<double> SleepSeconds(std::string_view input_json) {
  rapidjson::Document doc;
  core::Status parsed = ParseObject("sleep", input_json, &doc);
  if (!parsed.ok()) return parsed;
  auto it = doc.FindMember("seconds");
  if (it == doc.MemberEnd()) return 1.0;
  if (!it->value.IsNumber()) return core::InvalidArgument("sleep: seconds must be a number");
  const double seconds = it->value.GetDouble();
  if (!std::isfinite(seconds) || seconds < 0 || seconds > kMaxSleepSeconds) {
    return core::InvalidArgument("sleep: seconds must be between 0 and 3600");
  }
  return seconds;
}

// fail.message, or the reason it is unusable.
core::Result<std::string> FailMessage(std::string_view input_json) {
  rapidjson::Document doc;
  core::Status parsed = ParseObject("fail", input_json, &doc);
  if (!parsed.ok()) return parsed;
  auto it = doc.FindMember("message");
  if (it == doc.MemberEnd()) return std::string(kDefaultFailMessage);
  if (!it->value.IsString()) return core::InvalidArgument("fail: message must be a string");
  std::string message(it->value.GetString(), it->value.GetStringLength());
  return message.empty() ? std::string(kDefaultFailMessage) : message;
}

core::Result<std::string> Sleep(JobContext& context) {
  auto seconds = SleepSeconds(context.job().input_json);
  if (!seconds.ok()) return seconds.status();
  const auto total = std::chrono::milliseconds(std::llround(*seconds * 1000));
  const auto start = Clock::now();
  for (;;) {
    const auto elapsed =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    const auto done = std::min(elapsed, total);
    context.Progress(done.count(), total.count(), "sleeping");  // SleepFor sees a cancel
    if (done >= total) break;
    if (!context.SleepFor(std::min(kSleepProgressEvery, total - done))) {
      return core::Canceled("sleep canceled");
    }
  }
  return "{\"slept_ms\":" + std::to_string(total.count()) + "}";
}

}  // namespace

void RegisterBuiltinHandlers(Workers& workers) {
  workers.Register("noop",
                   [](JobContext&) -> core::Result<std::string> { return std::string("{}"); });
  workers.Register("sleep", Sleep);
  workers.Register("fail", [](JobContext& context) -> core::Result<std::string> {
    auto message = FailMessage(context.job().input_json);
    if (!message.ok()) return message.status();
    return core::Internal(*message);
  });
}

core::Status ValidateBuiltinInput(std::string_view type, std::string_view input_json) {
  if (type == "noop") {
    rapidjson::Document doc;
    return ParseObject(type, input_json, &doc);
  }
  if (type == "sleep") return SleepSeconds(input_json).status();
  if (type == "fail") return FailMessage(input_json).status();
  return core::Status::Ok();
}

}  // namespace megaserve::jobs
