#include "metrics/registry.h"

#include <gtest/gtest.h>

#include <cmath>
#include <latch>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace megaserve::metrics {
namespace {

// Twice as many threads as shards, so every shard is shared and a lost update would show.
constexpr int kThreads = 2 * kShards;
constexpr int kPerThread = 50000;

// Runs `fn(thread_index)` on kThreads threads, released together, and waits for all of them.
template <class Fn>
void RunConcurrently(Fn fn) {
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      fn(t);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(CounterTest, SumsIncrements) {
  Counter c;
  EXPECT_EQ(c.Value(), 0u);
  c.Inc();
  c.Inc(41);
  EXPECT_EQ(c.Value(), 42u);
}

TEST(CounterTest, ConcurrentIncrementsAreExact) {
  Counter c;
  RunConcurrently([&](int) {
    for (int i = 0; i < kPerThread; ++i) c.Inc();
  });
  EXPECT_EQ(c.Value(), uint64_t{kThreads} * kPerThread);
}

TEST(GaugeTest, IncDecAndSet) {
  Gauge g;
  g.Inc(5);
  g.Dec(2);
  EXPECT_EQ(g.Value(), 3);
  g.Set(0.5);
  EXPECT_EQ(g.Value(), 0.5);
  g.Dec();
  EXPECT_EQ(g.Value(), -0.5);
}

TEST(GaugeTest, ConcurrentIncDecAreExact) {
  Gauge g;
  g.Set(10);
  RunConcurrently([&](int t) {
    for (int i = 0; i < kPerThread; ++i) {
      g.Inc(2);
      if (t % 2 == 0) g.Dec();
    }
  });
  // Half the threads net +1 per step, the other half +2.
  EXPECT_EQ(g.Value(), 10.0 + (kThreads / 2.0) * kPerThread * 3.0);
}

TEST(HistogramTest, ValueEqualToBoundGoesIntoThatBucket) {
  Histogram h({1, 2, 5});
  for (double v : {-3.0, 1.0, 1.5, 2.0, 5.0, 5.0001}) h.Observe(v);
  // Per bucket: le=1 {-3, 1}, le=2 {1.5, 2}, le=5 {5}, +Inf {5.0001}.
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{2, 4, 5, 6}));
  EXPECT_EQ(h.Count(), 6u);
  EXPECT_DOUBLE_EQ(h.Sum(), 11.5001);
}

TEST(HistogramTest, NaNCountsInInfBucketOnly) {
  Histogram h({1});
  h.Observe(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{0, 1}));
  EXPECT_TRUE(std::isnan(h.Sum()));
}

TEST(HistogramTest, TrailingInfBoundIsImplicit) {
  Histogram h({0.5, std::numeric_limits<double>::infinity()});
  EXPECT_EQ(h.bounds(), std::vector<double>{0.5});
  h.Observe(1);
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{0, 1}));
}

TEST(HistogramTest, ManyBucketsSpanSeveralCacheLines) {
  std::vector<double> bounds;
  for (int i = 1; i <= 20; ++i) bounds.push_back(i);
  Histogram h(bounds);
  for (int i = 1; i <= 21; ++i) h.Observe(i);
  std::vector<uint64_t> cumulative = h.CumulativeCounts();
  ASSERT_EQ(cumulative.size(), 21u);
  for (int i = 0; i < 21; ++i) EXPECT_EQ(cumulative[i], uint64_t(i + 1)) << "bucket " << i;
  EXPECT_EQ(h.Sum(), 231);
}

TEST(HistogramTest, ConcurrentObservationsAreExact) {
  Histogram h({10, 100});
  RunConcurrently([&](int t) {
    for (int i = 0; i < kPerThread; ++i) h.Observe(t < kThreads / 2 ? 1 : 50);
  });
  const uint64_t half = uint64_t{kThreads / 2} * kPerThread;
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{half, 2 * half, 2 * half}));
  EXPECT_EQ(h.Count(), 2 * half);
  EXPECT_EQ(h.Sum(), 51.0 * half);  // integers well below 2^53: exact in any order
}

TEST(FamilyTest, SameLabelValuesGiveTheSameSeries) {
  Registry r;
  auto& family = r.AddCounter("requests_total", "Requests.", {"method", "code"});
  Counter& a = family.WithLabels({"GET", "200"});
  EXPECT_EQ(&a, &family.WithLabels(std::vector<std::string>{"GET", "200"}));
  EXPECT_NE(&a, &family.WithLabels({"GET", "404"}));
  EXPECT_EQ(family.label_names(), (std::vector<std::string>{"method", "code"}));
}

TEST(RegistryTest, SameRegistrationReturnsTheExistingFamily) {
  Registry r;
  auto& first = r.AddHistogram("latency_seconds", "Latency.", {0.1, 1}, {"route"});
  auto& again = r.AddHistogram("latency_seconds", "Latency.", {0.1, 1}, {"route"});
  EXPECT_EQ(&first, &again);
  EXPECT_EQ(&r.AddGauge("depth", "Depth."), &r.AddGauge("depth", "Depth."));
}

TEST(RegistryTest, GlobalIsOneRegistry) { EXPECT_EQ(&Registry::Global(), &Registry::Global()); }

TEST(RegistryTest, CollectorMayRegisterDuringScrape) {
  Registry r;
  r.AddCollector([&r](std::string&) { r.AddGauge("late", "Registered while scraping."); });
  EXPECT_EQ(r.Expose(), "");
  EXPECT_EQ(r.Expose(), "# HELP late Registered while scraping.\n# TYPE late gauge\nlate 0\n");
}

TEST(RegistryDeathTest, MisuseAborts) {
  Registry r;
  r.AddCounter("a_total", "A.", {"x"});
  EXPECT_DEATH(r.AddGauge("a_total", "A."), "re-registered");
  EXPECT_DEATH(r.AddCounter("a_total", "A.", {"y"}), "re-registered");
  EXPECT_DEATH(r.AddCallbackGauge("a_total", "A.", [] { return 0.0; }), "registered twice");
  EXPECT_DEATH(r.AddCounter("a_total", "A.", {"x"}).WithLabels({"1", "2"}), "1 label");
  EXPECT_DEATH(r.AddCounter("bad-name", "B."), "invalid metric name");
  EXPECT_DEATH(r.AddCounter("b_total", "B.", {"__reserved"}), "reserved label");
  EXPECT_DEATH(r.AddHistogram("h", "H.", {1}, {"le"}), "reserved label");
  EXPECT_DEATH(r.AddHistogram("h", "H.", {1, 1}), "strictly increasing");
  r.AddHistogram("h", "H.", {1, 2});
  EXPECT_DEATH(r.AddHistogram("h", "H.", {1, 3}), "re-registered");
}

std::string Format(double v) {
  std::string s;
  AppendValue(s, v);
  return s;
}

TEST(ExpositionTest, NumbersAreSpelledAsPrometheusReadsThem) {
  EXPECT_EQ(Format(0), "0");
  EXPECT_EQ(Format(3), "3");
  EXPECT_EQ(Format(-2.5), "-2.5");
  EXPECT_EQ(Format(0.1), "0.1");
  EXPECT_EQ(Format(123456789), "123456789");
  EXPECT_EQ(Format(1.0 / 3), "0.3333333333333333");  // round-trips
  EXPECT_EQ(Format(1e20), "1e+20");
  EXPECT_EQ(Format(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(Format(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(Format(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(ExpositionTest, ExactText) {
  Registry r;
  auto& requests =
      r.AddCounter("megaserve_http_requests_total", "Requests served.", {"method", "path"});
  requests.WithLabels({"POST", "/v1/a\"b\\c\nd"}).Inc(3);
  requests.WithLabels({"GET", "/"}).Inc(std::numeric_limits<uint64_t>::max());
  r.AddCounter("megaserve_errors_total", "Errors.");
  r.AddGauge("megaserve_in_flight", "Has \\ and\nnewline \"quoted\".").WithLabels({}).Set(2.5);
  r.AddGauge("megaserve_queue_depth", "Queued jobs.", {"queue"});
  auto& latency =
      r.AddHistogram("megaserve_latency_seconds", "Latency.", {0.25, 0.5, 1}, {"route"});
  for (double v : {0.25, 0.375, 1.0, 7.0}) latency.WithLabels({"chat"}).Observe(v);
  r.AddHistogram("megaserve_size_bytes", "Sizes.", {1024});
  r.AddCallbackGauge("megaserve_uptime_seconds", "Uptime.", [] { return 42.0; });
  r.AddCollector([](std::string& out) { AppendSimpleMetric(out, "custom", "C.", "gauge", -1); });

  EXPECT_EQ(r.Expose(),
            "# HELP megaserve_http_requests_total Requests served.\n"
            "# TYPE megaserve_http_requests_total counter\n"
            "megaserve_http_requests_total{method=\"GET\",path=\"/\"} 18446744073709551615\n"
            "megaserve_http_requests_total{method=\"POST\",path=\"/v1/a\\\"b\\\\c\\nd\"} 3\n"
            "# HELP megaserve_errors_total Errors.\n"
            "# TYPE megaserve_errors_total counter\n"
            "megaserve_errors_total 0\n"
            "# HELP megaserve_in_flight Has \\\\ and\\nnewline \"quoted\".\n"
            "# TYPE megaserve_in_flight gauge\n"
            "megaserve_in_flight 2.5\n"
            "# HELP megaserve_queue_depth Queued jobs.\n"
            "# TYPE megaserve_queue_depth gauge\n"
            "# HELP megaserve_latency_seconds Latency.\n"
            "# TYPE megaserve_latency_seconds histogram\n"
            "megaserve_latency_seconds_bucket{route=\"chat\",le=\"0.25\"} 1\n"
            "megaserve_latency_seconds_bucket{route=\"chat\",le=\"0.5\"} 2\n"
            "megaserve_latency_seconds_bucket{route=\"chat\",le=\"1\"} 3\n"
            "megaserve_latency_seconds_bucket{route=\"chat\",le=\"+Inf\"} 4\n"
            "megaserve_latency_seconds_sum{route=\"chat\"} 8.625\n"
            "megaserve_latency_seconds_count{route=\"chat\"} 4\n"
            "# HELP megaserve_size_bytes Sizes.\n"
            "# TYPE megaserve_size_bytes histogram\n"
            "megaserve_size_bytes_bucket{le=\"1024\"} 0\n"
            "megaserve_size_bytes_bucket{le=\"+Inf\"} 0\n"
            "megaserve_size_bytes_sum 0\n"
            "megaserve_size_bytes_count 0\n"
            "# HELP megaserve_uptime_seconds Uptime.\n"
            "# TYPE megaserve_uptime_seconds gauge\n"
            "megaserve_uptime_seconds 42\n"
            "# HELP custom C.\n"
            "# TYPE custom gauge\n"
            "custom -1\n");
}

}  // namespace
}  // namespace megaserve::metrics
