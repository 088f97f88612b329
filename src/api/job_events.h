// Server-Sent Events for jobs: GET /v1/jobs/{id}/events follows a job's event log.
//
// One thread polls the job_events table for every open stream (each stream remembers the last
// sequence number sent, so a reconnect with Last-Event-ID replays exactly what was missed) and
// writes `id:`/`event:`/`data:` records. Progress events are throttled per stream to one per
// progress interval (the newest one waiting is sent when the interval has passed; older ones are
// superseded); terminal events (succeeded, failed, canceled) are always sent and end the stream.
// A comment line goes out after a quiet keep-alive interval so proxies keep the stream open and
// a vanished client is noticed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "jobs/job_queue.h"
#include "net/http.h"

namespace megaserve::api {

struct JobEventStreamsOptions {
  std::chrono::milliseconds poll_interval{200};
  std::chrono::milliseconds progress_interval{500};  // at most 2 progress events a second
  std::chrono::milliseconds keepalive_interval{15'000};
};

class JobEventStreams {
 public:
  explicit JobEventStreams(jobs::JobQueue& queue, JobEventStreamsOptions options = {});
  // Ends every open stream and stops the polling thread.
  ~JobEventStreams();
  JobEventStreams(const JobEventStreams&) = delete;  // No copying allowed.
  JobEventStreams& operator=(const JobEventStreams&) = delete;

  // Follows job_id's events after sequence number after_seq, writing them to writer until a
  // terminal event has been sent, the client goes away, or Stop().
  void Add(std::string job_id, int64_t after_seq, std::shared_ptr<net::StreamWriter> writer);

  // Streams currently open.
  std::size_t active() const;

  // Ends every stream and stops the thread. Idempotent.
  void Stop();

  // The SSE record for one event: "id: 3\nevent: progress\ndata: {...}\n\n".
  static std::string Format(const jobs::JobEvent& event);

 private:
  struct Stream;
  void Loop();
  // Sends what is new for one stream; returns false when the stream is over.
  bool Poll(Stream& s, std::chrono::steady_clock::time_point now);

  jobs::JobQueue& queue_;
  const JobEventStreamsOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Stream>> streams_;  // guarded by mu_
  bool stopping_ = false;                         // guarded by mu_
  std::thread thread_;
};

}  // namespace megaserve::api
