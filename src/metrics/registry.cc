#include "metrics/registry.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <numeric>
#include <type_traits>
#include <utility>

namespace megaserve::metrics {
namespace {

// Reports a programming error (misdeclared metric) and aborts.
template <class... Args>
[[noreturn]] void Fatal(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "megaserve metrics: {}\n", fmt::format(format, std::forward<Args>(args)...));
  std::abort();
}

// Adds `v` to the double whose bits are stored in `word`.
void AtomicAddDouble(std::atomic<uint64_t>& word, double v) {
  uint64_t old = word.load(std::memory_order_relaxed);
  while (!word.compare_exchange_weak(old, std::bit_cast<uint64_t>(std::bit_cast<double>(old) + v),
                                     std::memory_order_relaxed)) {
  }
}

bool IsNameChar(char c, bool first, bool allow_colon) {
  bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  return alpha || (!first && c >= '0' && c <= '9') || (allow_colon && c == ':');
}

// Metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*.
bool IsValidName(std::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, allow_colon)) return false;
  }
  return true;
}

void CheckMetricName(std::string_view name) {
  if (!IsValidName(name, true)) Fatal("invalid metric name '{}'", name);
}

// Label names must be valid, unique, not reserved ("__" prefix) and, for histograms, not "le".
void CheckLabelNames(std::string_view metric, const std::vector<std::string>& names,
                     bool histogram) {
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string& n = names[i];
    if (!IsValidName(n, false) || n.starts_with("__") || (histogram && n == "le")) {
      Fatal("metric '{}': invalid or reserved label name '{}'", metric, n);
    }
    auto end = names.begin() + static_cast<std::ptrdiff_t>(i);
    if (std::find(names.begin(), end, n) != end) {
      Fatal("metric '{}': duplicate label name '{}'", metric, n);
    }
  }
}

// Drops a trailing +Inf and aborts unless the rest is strictly increasing and finite or -Inf.
std::vector<double> CheckedBounds(std::vector<double> bounds) {
  auto is_pos_inf = [](double b) { return std::isinf(b) && b > 0; };
  if (!bounds.empty() && is_pos_inf(bounds.back())) bounds.pop_back();
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    if (std::isnan(bounds[i]) || is_pos_inf(bounds[i]) || (i > 0 && !(bounds[i - 1] < bounds[i]))) {
      Fatal("histogram bucket bounds must be strictly increasing numbers (bound #{} is {})", i,
            bounds[i]);
    }
  }
  return bounds;
}

// Appends `s` with the characters the text format reserves escaped: backslash and newline
// always, the double quote too inside label values.
void AppendEscaped(std::string& out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

void AppendHelpAndType(std::string& out, std::string_view name, std::string_view help,
                       std::string_view type) {
  out += "# HELP ";
  out += name;
  out += ' ';
  AppendEscaped(out, help, false);
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

// Appends `name{a="x",b="y",le="0.5"} ` (braces only when there is a label; `le` only when not
// empty), ready for the value.
void AppendSeriesName(std::string& out, std::string_view name, std::string_view suffix,
                      const std::vector<std::string>& label_names,
                      const std::vector<std::string>& values, std::string_view le = {}) {
  out += name;
  out += suffix;
  if (!label_names.empty() || !le.empty()) {
    out += '{';
    for (std::size_t i = 0; i < label_names.size(); ++i) {
      out += label_names[i];
      out += "=\"";
      AppendEscaped(out, values[i], true);
      out += "\",";
    }
    if (!le.empty()) {
      out += "le=\"";
      out += le;
      out += "\",";
    }
    out.back() = '}';
  }
  out += ' ';
}

void AppendInteger(std::string& out, uint64_t v) {
  fmt::format_to(std::back_inserter(out), "{}", v);
}

std::string FormatValue(double v) {
  std::string s;
  AppendValue(s, v);
  return s;
}

template <class M>
constexpr std::string_view kTypeName = std::is_same_v<M, Counter> ? "counter"
                                       : std::is_same_v<M, Gauge> ? "gauge"
                                                                  : "histogram";

// The samples of one histogram series: cumulative buckets, then _sum and _count.
void AppendHistogram(std::string& out, std::string_view name,
                     const std::vector<std::string>& labels, const std::vector<std::string>& values,
                     const Histogram& h, const std::vector<std::string>& bound_texts) {
  // Read the counts once so every bucket line and _count come from the same snapshot.
  std::vector<uint64_t> cumulative = h.CumulativeCounts();
  for (std::size_t b = 0; b < cumulative.size(); ++b) {
    AppendSeriesName(out, name, "_bucket", labels, values,
                     b < bound_texts.size() ? std::string_view(bound_texts[b]) : "+Inf");
    AppendInteger(out, cumulative[b]);
    out += '\n';
  }
  AppendSeriesName(out, name, "_sum", labels, values);
  AppendValue(out, h.Sum());
  out += '\n';
  AppendSeriesName(out, name, "_count", labels, values);
  AppendInteger(out, cumulative.back());
  out += '\n';
}

// A gauge computed at scrape time.
class CallbackGauge final : public detail::Collectable {
 public:
  CallbackGauge(std::string name, std::string help, std::function<double()> fn)
      : name_(std::move(name)), help_(std::move(help)), fn_(std::move(fn)) {}
  void ExposeTo(std::string& out) const override {
    AppendSimpleMetric(out, name_, help_, "gauge", fn_());
  }

 private:
  const std::string name_;
  const std::string help_;
  const std::function<double()> fn_;
};

// A user collector.
class FunctionCollector final : public detail::Collectable {
 public:
  explicit FunctionCollector(std::function<void(std::string&)> fn) : fn_(std::move(fn)) {}
  void ExposeTo(std::string& out) const override { fn_(out); }

 private:
  const std::function<void(std::string&)> fn_;
};

}  // namespace

std::size_t detail::AssignShard() {
  static std::atomic<std::size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed) % kShards;
}

void AppendValue(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    fmt::format_to(std::back_inserter(out), "{}", v);
  }
}

void AppendSimpleMetric(std::string& out, std::string_view name, std::string_view help,
                        std::string_view type, double v) {
  AppendHelpAndType(out, name, help, type);
  out += name;
  out += ' ';
  AppendValue(out, v);
  out += '\n';
}

// ---- Counter, Gauge, Histogram ----

uint64_t Counter::Value() const {
  uint64_t total = 0;
  for (const auto& s : shards_) total += s.value.load(std::memory_order_relaxed);
  return total;
}

void Gauge::Set(double v) {
  // Zero the deltas before publishing the base (release), and read the base first (acquire), so
  // a reader that sees the new base never adds deltas from before the Set().
  for (auto& d : deltas_) d.value.store(0, std::memory_order_relaxed);
  base_.store(v, std::memory_order_release);
}

double Gauge::Value() const {
  double base = base_.load(std::memory_order_acquire);
  int64_t delta = 0;
  for (const auto& d : deltas_) delta += d.value.load(std::memory_order_relaxed);
  return base + static_cast<double>(delta);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(CheckedBounds(std::move(bounds))),
      lines_per_shard_((bounds_.size() + 2 + kWordsPerLine - 1) / kWordsPerLine),
      lines_(std::make_unique<Line[]>(kShards * lines_per_shard_)) {}

std::atomic<uint64_t>& Histogram::Word(std::size_t s, std::size_t i) const {
  return lines_[s * lines_per_shard_ + i / kWordsPerLine].words[i % kWordsPerLine];
}

void Histogram::Observe(double v) {
  // The first bound >= v; NaN compares false with every bound and so lands in +Inf.
  std::size_t bucket =
      std::partition_point(bounds_.begin(), bounds_.end(), [v](double ub) { return !(v <= ub); }) -
      bounds_.begin();
  std::size_t shard = detail::ThisThreadShard();
  Word(shard, 1 + bucket).fetch_add(1, std::memory_order_relaxed);
  AtomicAddDouble(Word(shard, 0), v);
}

uint64_t Histogram::Count() const {
  uint64_t count = 0;
  for (std::size_t s = 0; s < kShards; ++s) {
    for (std::size_t b = 0; b <= bounds_.size(); ++b) {
      count += Word(s, 1 + b).load(std::memory_order_relaxed);
    }
  }
  return count;
}

double Histogram::Sum() const {
  double sum = 0;
  for (std::size_t s = 0; s < kShards; ++s) {
    sum += std::bit_cast<double>(Word(s, 0).load(std::memory_order_relaxed));
  }
  return sum;
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> counts(bounds_.size() + 1, 0);
  for (std::size_t s = 0; s < kShards; ++s) {
    for (std::size_t b = 0; b < counts.size(); ++b) {
      counts[b] += Word(s, 1 + b).load(std::memory_order_relaxed);
    }
  }
  std::partial_sum(counts.begin(), counts.end(), counts.begin());
  return counts;
}

// ---- Family ----

template <class M>
template <class A, class B>
bool Family<M>::LabelsLess::operator()(const A& a, const B& b) const {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                      [](std::string_view x, std::string_view y) { return x < y; });
}

template <class M>
Family<M>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      bounds_(std::move(bounds)),
      bound_texts_([this] {
        std::vector<std::string> texts;
        std::transform(bounds_.begin(), bounds_.end(), std::back_inserter(texts), FormatValue);
        return texts;
      }()) {}

template <class M>
template <class Values>
M& Family<M>::Get(const Values& values) {
  if (values.size() != label_names_.size()) {
    Fatal("metric '{}' has {} label(s) but was given {} value(s)", name_, label_names_.size(),
          values.size());
  }
  std::lock_guard lock(mu_);
  auto it = series_.find(values);
  if (it == series_.end()) {
    std::vector<std::string> key(values.begin(), values.end());
    if constexpr (std::is_same_v<M, Histogram>) {
      it = series_.try_emplace(std::move(key), bounds_).first;
    } else {
      it = series_.try_emplace(std::move(key)).first;
    }
  }
  return it->second;
}

template <class M>
M& Family<M>::WithLabels(std::initializer_list<std::string_view> values) {
  return Get(values);
}

template <class M>
M& Family<M>::WithLabels(const std::vector<std::string>& values) {
  return Get(values);
}

template <class M>
void Family<M>::ExposeTo(std::string& out) const {
  AppendHelpAndType(out, name_, help_, kTypeName<M>);
  std::lock_guard lock(mu_);
  for (const auto& [values, metric] : series_) {
    if constexpr (std::is_same_v<M, Histogram>) {
      AppendHistogram(out, name_, label_names_, values, metric, bound_texts_);
    } else {
      AppendSeriesName(out, name_, "", label_names_, values);
      if constexpr (std::is_same_v<M, Counter>) {
        AppendInteger(out, metric.Value());
      } else {
        AppendValue(out, metric.Value());
      }
      out += '\n';
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---- Registry ----

Registry::Registry() = default;
Registry::~Registry() = default;

Registry& Registry::Global() {
  static Registry* const global = new Registry();  // leaked: usable during static destruction
  return *global;
}

template <class M>
Family<M>& Registry::Add(std::string name, std::string help, std::vector<std::string> label_names,
                         std::vector<double> bounds) {
  CheckMetricName(name);
  CheckLabelNames(name, label_names, std::is_same_v<M, Histogram>);
  std::lock_guard lock(mu_);
  if (auto it = by_name_.find(name); it != by_name_.end()) {
    auto* existing = dynamic_cast<Family<M>*>(it->second);
    if (existing == nullptr || existing->label_names_ != label_names ||
        existing->bounds_ != bounds) {
      Fatal("metric '{}' re-registered with a different type, label names or buckets", name);
    }
    return *existing;
  }
  std::unique_ptr<Family<M>> family(
      new Family<M>(name, std::move(help), std::move(label_names), std::move(bounds)));
  Family<M>& ref = *family;
  // Exposed as 0 before first use; nothing else would create an unlabeled family's only series.
  if (ref.label_names_.empty()) ref.WithLabels({});
  by_name_.emplace(std::move(name), &ref);
  items_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::AddCounter(std::string name, std::string help,
                                      std::vector<std::string> label_names) {
  return Add<Counter>(std::move(name), std::move(help), std::move(label_names), {});
}

Family<Gauge>& Registry::AddGauge(std::string name, std::string help,
                                  std::vector<std::string> label_names) {
  return Add<Gauge>(std::move(name), std::move(help), std::move(label_names), {});
}

Family<Histogram>& Registry::AddHistogram(std::string name, std::string help,
                                          std::vector<double> buckets,
                                          std::vector<std::string> label_names) {
  return Add<Histogram>(std::move(name), std::move(help), std::move(label_names),
                        CheckedBounds(std::move(buckets)));
}

void Registry::AddCallbackGauge(std::string name, std::string help, std::function<double()> fn) {
  CheckMetricName(name);
  std::lock_guard lock(mu_);
  if (by_name_.contains(name)) Fatal("metric '{}' registered twice", name);
  auto gauge = std::make_unique<CallbackGauge>(name, std::move(help), std::move(fn));
  by_name_.emplace(std::move(name), gauge.get());
  items_.push_back(std::move(gauge));
}

void Registry::AddCollector(std::function<void(std::string& out)> fn) {
  std::lock_guard lock(mu_);
  items_.push_back(std::make_unique<FunctionCollector>(std::move(fn)));
}

std::string Registry::Expose() const {
  std::string out;
  ExposeTo(out);
  return out;
}

void Registry::ExposeTo(std::string& out) const {
  // Items are never removed, so the pointers outlive the lock; callbacks then run without it.
  std::vector<const detail::Collectable*> items;
  {
    std::lock_guard lock(mu_);
    items.reserve(items_.size());
    for (const auto& item : items_) items.push_back(item.get());
  }
  for (const detail::Collectable* item : items) item->ExposeTo(out);
}

}  // namespace megaserve::metrics
