#include "api/job_events.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

namespace megaserve::api {

using Clock = std::chrono::steady_clock;

struct JobEventStreams::Stream {
  std::string job_id;
  int64_t last_seq = 0;
  std::shared_ptr<net::StreamWriter> writer;
  Clock::time_point last_write;
  Clock::time_point last_progress;  // when a progress event last went out
  std::optional<jobs::JobEvent> pending_progress;
};

namespace {

bool IsTerminal(std::string_view kind) {
  return kind == "succeeded" || kind == "failed" || kind == "canceled";
}

}  // namespace

JobEventStreams::JobEventStreams(jobs::JobQueue& queue, JobEventStreamsOptions options)
    : queue_(queue), options_(options), thread_([this] { Loop(); }) {}

JobEventStreams::~JobEventStreams() { Stop(); }

void JobEventStreams::Add(std::string job_id, int64_t after_seq,
                          std::shared_ptr<net::StreamWriter> writer) {
  auto s = std::make_shared<Stream>();
  s->job_id = std::move(job_id);
  s->last_seq = after_seq;
  s->writer = std::move(writer);
  s->last_write = Clock::now();
  s->writer->Write("retry: 1000\n\n");  // reconnect quickly, with Last-Event-ID
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      s->writer->Close();
      return;
    }
    streams_.push_back(std::move(s));
  }
  cv_.notify_one();  // poll the new stream now
}

std::size_t JobEventStreams::active() const {
  std::lock_guard lock(mu_);
  return streams_.size();
}

void JobEventStreams::Stop() {
  std::vector<std::shared_ptr<Stream>> open;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    open.swap(streams_);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& s : open) s->writer->Close();
}

std::string JobEventStreams::Format(const jobs::JobEvent& e) {
  std::string out = "id: " + std::to_string(e.seq) + "\nevent: " + e.kind + "\n";
  std::string_view data = e.data_json.empty() ? std::string_view("{}") : e.data_json;
  // A data field may not contain a line break; each line gets its own "data:".
  while (true) {
    std::size_t nl = data.find('\n');
    out += "data: ";
    out += data.substr(0, nl);
    out += '\n';
    if (nl == std::string_view::npos) break;
    data.remove_prefix(nl + 1);
  }
  out += '\n';
  return out;
}

void JobEventStreams::Loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    std::vector<std::shared_ptr<Stream>> snapshot = streams_;
    lock.unlock();
    std::vector<Stream*> done;
    auto now = Clock::now();
    for (auto& s : snapshot) {
      if (!Poll(*s, now)) done.push_back(s.get());
    }
    lock.lock();
    if (!done.empty()) {
      std::erase_if(streams_, [&](const std::shared_ptr<Stream>& s) {
        return std::find(done.begin(), done.end(), s.get()) != done.end();
      });
    }
    std::size_t before = streams_.size();
    cv_.wait_for(lock, options_.poll_interval,
                 [&] { return stopping_ || streams_.size() > before; });
  }
}

bool JobEventStreams::Poll(Stream& s, Clock::time_point now) {
  if (s.writer->closed()) return false;
  auto events = queue_.Events(s.job_id, s.last_seq);
  if (!events.ok()) {
    spdlog::warn("job events for {}: {}", s.job_id, events.status().ToString());
    return true;  // try again next round
  }
  std::string out;
  bool finished = false;
  bool progress_open = now - s.last_progress >= options_.progress_interval;
  for (const auto& e : *events) {
    s.last_seq = e.seq;
    if (e.kind == "progress") {
      s.pending_progress = e;  // the newest supersedes older ones not yet sent
      continue;
    }
    if (IsTerminal(e.kind)) {
      s.pending_progress.reset();  // the final state says more than a late progress
      out += Format(e);
      finished = true;
      break;
    }
    s.pending_progress.reset();  // progress from before a state change is stale
    out += Format(e);
  }
  if (!finished && s.pending_progress && progress_open) {
    out += Format(*s.pending_progress);
    s.pending_progress.reset();
    s.last_progress = now;
  }
  if (out.empty() && now - s.last_write >= options_.keepalive_interval) out = ": keep-alive\n\n";
  if (!out.empty()) {
    if (!s.writer->Write(std::move(out))) return false;
    s.last_write = now;
  }
  if (finished) {
    s.writer->Close();
    return false;
  }
  return true;
}

}  // namespace megaserve::api
