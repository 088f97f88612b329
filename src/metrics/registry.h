// In-process metrics: counters, gauges and histograms, exposed in the Prometheus text format.
//
// Hot path. Every metric keeps kShards copies of its state, each on its own cache line. A thread
// is given a shard index round-robin the first time it touches any metric, and from then on
// updates only that shard with a relaxed atomic add: no lock, and no cache line bouncing between
// threads as long as no more than kShards threads are busy at once (beyond that, threads share
// shards, which stays correct and merely contends). Reads sum the shards, so a value read during
// concurrent updates is some value the metric passed through or will pass through, never torn.
//
// Families. A family is one metric name with fixed label names; each distinct tuple of label
// values is a series, created on first lookup and never removed, so references to it stay valid
// for the registry's lifetime. Lookup takes the family's mutex; hot paths look a series up once.
//
// Exposition follows the Prometheus text format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): families in registration order,
// series sorted by label values, HELP escaped (\\ and \n), label values escaped (\\, \" and \n),
// histograms as cumulative _bucket{le=...} lines followed by _sum and _count.
//
// Misuse (an invalid name, a conflicting re-registration, the wrong number of label values) is a
// programming error: it aborts with a message on stderr rather than returning a Status, because
// metrics are declared at start-up and there is nothing sensible a caller could do instead.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace megaserve::metrics {

// Number of per-metric shards; threads beyond this many share shards.
inline constexpr std::size_t kShards = 16;

// The HTTP Content-Type of Registry::Expose() output.
inline constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

namespace detail {

inline constexpr std::size_t kCacheLine = 64;

// One atomic on a cache line of its own, so shards written by different threads do not share one.
template <class T>
struct alignas(kCacheLine) PaddedAtomic {
  std::atomic<T> value{};
};

// Picks the next shard index round-robin; called once per thread.
std::size_t AssignShard();

// The calling thread's shard index, in [0, kShards).
inline std::size_t ThisThreadShard() {
  static thread_local const std::size_t shard = AssignShard();
  return shard;
}

// Anything that appends exposition text at scrape time: a family, a callback gauge, a collector.
class Collectable {
 public:
  virtual ~Collectable() = default;
  // Appends this item's complete exposition text (HELP, TYPE and samples) to `out`.
  virtual void ExposeTo(std::string& out) const = 0;
};

}  // namespace detail

// A monotonic counter. Thread-safe; Inc() is lock-free and touches only the caller's shard.
class Counter {
 public:
  Counter() = default;
  // No copying allowed.
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // Adds `n` to the counter.
  void Inc(uint64_t n = 1) {
    shards_[detail::ThisThreadShard()].value.fetch_add(n, std::memory_order_relaxed);
  }
  // The total of all increments so far.
  uint64_t Value() const;

 private:
  detail::PaddedAtomic<uint64_t> shards_[kShards];
};

// A gauge that goes up and down. Inc()/Dec() are lock-free and touch only the caller's shard.
// The value is a base set by Set() plus the sum of the shards' integer deltas.
class Gauge {
 public:
  Gauge() = default;
  // No copying allowed.
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  // Adds `n` to the gauge.
  void Inc(int64_t n = 1) {
    deltas_[detail::ThisThreadShard()].value.fetch_add(n, std::memory_order_relaxed);
  }
  // Subtracts `n` from the gauge.
  void Dec(int64_t n = 1) { Inc(-n); }
  // Sets the gauge to `v`. Meant for gauges with a single writer: an Inc()/Dec() racing with
  // Set() may be lost, and a concurrent Value() may briefly see neither the old nor the new value.
  void Set(double v);
  // The current value.
  double Value() const;

 private:
  std::atomic<double> base_{0};
  detail::PaddedAtomic<int64_t> deltas_[kShards];
};

// A histogram with fixed bucket upper bounds; a value equal to a bound falls into that bound's
// bucket, and values above the last bound (and NaN) into the implicit +Inf bucket.
// Observe() is lock-free and touches only the caller's shard.
class Histogram {
 public:
  // `bounds` must be strictly increasing and free of NaN; a trailing +Inf is dropped because
  // the +Inf bucket is always present. Aborts on invalid bounds.
  explicit Histogram(std::vector<double> bounds);
  // No copying allowed.
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Records one observation of `v`.
  void Observe(double v);
  // The number of observations.
  uint64_t Count() const;
  // The sum of all observed values.
  double Sum() const;
  // For each bound, then for +Inf, the number of observations <= that bound; the last element
  // equals Count() at the instant of the read.
  std::vector<uint64_t> CumulativeCounts() const;
  // The finite bucket upper bounds, in increasing order.
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  // Word `i` of shard `s`: word 0 holds the sum's bits, word 1 + b the count of bucket b.
  std::atomic<uint64_t>& Word(std::size_t s, std::size_t i) const;

  static constexpr std::size_t kWordsPerLine = detail::kCacheLine / sizeof(uint64_t);
  struct alignas(detail::kCacheLine) Line {
    std::atomic<uint64_t> words[kWordsPerLine];
  };

  std::vector<double> bounds_;
  std::size_t lines_per_shard_;
  std::unique_ptr<Line[]> lines_;  // kShards * lines_per_shard_, zeroed
};

class Registry;

// One metric name with fixed label names and any number of series (one per tuple of label
// values). M is Counter, Gauge or Histogram. Obtained from a Registry, which owns it.
template <class M>
class Family final : public detail::Collectable {
 public:
  // No copying allowed.
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // The series for these label values, given in the same number and order as the family's label
  // names (an empty list for an unlabeled family); created at zero on first use. The reference
  // stays valid for the registry's lifetime. Takes a lock but allocates only when it creates the
  // series: hot paths look a series up once and keep the reference. Aborts on a count mismatch.
  M& WithLabels(std::initializer_list<std::string_view> values);
  // As above, with the values in a vector.
  M& WithLabels(const std::vector<std::string>& values);

  // The metric name.
  const std::string& name() const { return name_; }
  // The label names, in the order WithLabels() expects values.
  const std::vector<std::string>& label_names() const { return label_names_; }

  void ExposeTo(std::string& out) const override;

 private:
  friend class Registry;

  // Orders label-value tuples lexicographically; transparent so lookups need no allocation.
  struct LabelsLess {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const;
  };

  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::vector<double> bounds);
  template <class Values>
  M& Get(const Values& values);

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;            // histograms only
  const std::vector<std::string> bound_texts_;  // histograms only: bounds_ as le="..." values
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, M, LabelsLess> series_;  // guarded by mu_
};

// A set of metric families and collectors, exposed together. Thread-safe. Families live as long
// as the registry; nothing is ever unregistered.
class Registry {
 public:
  Registry();
  ~Registry();
  // No copying allowed.
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The process-wide registry; created on first use and never destroyed, so metrics may be
  // updated from any thread until the process exits.
  static Registry& Global();

  // Registers a counter family. Prometheus expects counter names to end in "_total"; `name` is
  // used exactly as given. Registering a name again with the same type and label names returns
  // the existing family; anything else that reuses a name aborts. So do invalid metric or label
  // names. An unlabeled family's single series is created at once, so it is exposed as 0.
  Family<Counter>& AddCounter(std::string name, std::string help,
                              std::vector<std::string> label_names = {});
  // Registers a gauge family; the same rules as AddCounter().
  Family<Gauge>& AddGauge(std::string name, std::string help,
                          std::vector<std::string> label_names = {});
  // Registers a histogram family with these bucket upper bounds (see Histogram); the same rules
  // as AddCounter(), and a re-registration must also repeat the bounds. "le" is reserved.
  Family<Histogram>& AddHistogram(std::string name, std::string help, std::vector<double> buckets,
                                  std::vector<std::string> label_names = {});
  // Registers an unlabeled gauge whose value is `fn()`, called at every scrape from the scraping
  // thread. Aborts if the name is taken.
  void AddCallbackGauge(std::string name, std::string help, std::function<double()> fn);
  // Registers a collector that appends complete exposition text (HELP, TYPE and samples) at every
  // scrape; see AppendSimpleMetric(). Its names are not checked against the registry's.
  void AddCollector(std::function<void(std::string& out)> fn);

  // The whole registry in the Prometheus text exposition format 0.0.4.
  std::string Expose() const;
  // Appends the same text to `out`. Callbacks and collectors run without the registry's lock
  // held, so they may themselves register metrics (which appear from the next scrape).
  void ExposeTo(std::string& out) const;

 private:
  template <class M>
  Family<M>& Add(std::string name, std::string help, std::vector<std::string> label_names,
                 std::vector<double> bounds);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<detail::Collectable>> items_;           // registration order
  std::map<std::string, detail::Collectable*, std::less<>> by_name_;  // named items
};

// Helpers for collectors, so hand-written exposition text follows the same rules as families.

// Appends `v` as Prometheus reads it: the shortest decimal that round-trips, "+Inf", "-Inf" or
// "NaN".
void AppendValue(std::string& out, double v);
// Appends an unlabeled single-sample metric: "# HELP" (escaped), "# TYPE" and "name value".
void AppendSimpleMetric(std::string& out, std::string_view name, std::string_view help,
                        std::string_view type, double v);

}  // namespace megaserve::metrics
