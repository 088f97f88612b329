// A bounded pool of threads for blocking work (SQLite, libpq, file I/O), so that such calls
// never run on an I/O thread. The queue has a fixed capacity: when it is full, Submit() says so
// at once and the caller answers 503 with Retry-After instead of letting latency grow without
// bound.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace megaserve::core {

class BlockingPool {
 public:
  // Starts `threads` workers (at least one) taking tasks from a queue of at most `max_queue`.
  BlockingPool(std::string name, std::size_t threads, std::size_t max_queue);
  // Runs the tasks already queued, then joins the workers.
  ~BlockingPool();
  BlockingPool(const BlockingPool&) = delete;  // No copying allowed.
  BlockingPool& operator=(const BlockingPool&) = delete;

  // Queues fn to run on a worker. Returns false, without queuing, when the queue is full or
  // the pool is shutting down.
  bool Submit(std::function<void()> fn);

  // Tasks waiting for a worker (not counting running ones).
  std::size_t queued() const;
  const std::string& name() const { return name_; }

  // Stops accepting tasks, runs those already queued, joins the workers. Idempotent.
  void Shutdown();

 private:
  void Work();

  const std::string name_;
  const std::size_t max_queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace megaserve::core
