// Coalescer: many threads submit one item each; whichever finds no batch in flight becomes the
// leader and flushes every item submitted so far in one call, the others wait for their result.
// Items arriving while a batch is in flight form the next one. This is group commit at the
// caller's level: each caller still gets its own result, after its item's batch finished, but a
// busy moment costs one round trip and one commit per batch instead of per item.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace megaserve::jobs {

template <typename In, typename Out>
class Coalescer {
 public:
  // Flushes a batch: returns exactly one result per item, in order.
  using Flush = std::function<std::vector<Out>(const std::vector<In>&)>;

  Coalescer(Flush flush, size_t max_batch) : flush_(std::move(flush)), max_batch_(max_batch) {}
  // No copying allowed.
  Coalescer(const Coalescer&) = delete;
  Coalescer& operator=(const Coalescer&) = delete;

  // Blocks until `item`'s batch was flushed and returns its result. Thread-safe.
  Out Submit(In item) {
    Waiting me{std::move(item), std::nullopt, {}};
    std::unique_lock lock(mu_);
    queue_.push_back(&me);
    for (;;) {
      // Only this item's leader and, when it becomes the next leader, the previous one wake a
      // waiter, so a flush does not stir every thread that is waiting.
      me.cv.wait(lock, [&] { return me.out || (!flushing_ && queue_.front() == &me); });
      if (me.out) return std::move(*me.out);
      flushing_ = true;
      const size_t n = std::min(queue_.size(), max_batch_);
      std::vector<Waiting*> batch(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      lock.unlock();
      std::vector<In> items;
      items.reserve(batch.size());
      for (Waiting* w : batch) items.push_back(std::move(w->in));
      std::vector<Out> outs = flush_(items);
      lock.lock();
      for (size_t i = 0; i < batch.size(); ++i) {
        batch[i]->out = std::move(outs[i]);
        if (batch[i] != &me) batch[i]->cv.notify_one();
      }
      flushing_ = false;
      if (!queue_.empty()) queue_.front()->cv.notify_one();
      return std::move(*me.out);
    }
  }

 private:
  struct Waiting {
    In in;
    std::optional<Out> out;
    std::condition_variable cv;  // waits on mu_
  };

  const Flush flush_;
  const size_t max_batch_;
  std::mutex mu_;
  std::vector<Waiting*> queue_;  // guarded by mu_; the first one leads the next flush
  bool flushing_ = false;        // guarded by mu_
};

}  // namespace megaserve::jobs
