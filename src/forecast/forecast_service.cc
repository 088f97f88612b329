#include "forecast/forecast_service.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <future>
#include <limits>

#include "core/time_format.h"
#include "forecast/backtest.h"
#include "forecast/features.h"
#include "forecast/forecast_backend.h"

namespace megaserve::forecast {

struct SeriesWindow {
  uint64_t version = 0;  // CandleStore::version() when built
  int64_t built_at_ms = 0;
  int64_t valid_until_ms = 0;  // when a bar that was open at build time closes
  Normalization norm;
  int window = 0;
  std::string input;  // the backend's binary request
  DataFreshness data;
};

namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string JoinSymbols(const std::vector<ForecastSeries>& series) {
  std::vector<std::string> symbols;
  for (const ForecastSeries& s : series) {
    if (std::find(symbols.begin(), symbols.end(), s.symbol) == symbols.end()) {
      symbols.push_back(s.symbol);
    }
  }
  return symbols.empty() ? "none" : fmt::format("{}", fmt::join(symbols, ", "));
}

std::string IntervalsOf(const std::vector<ForecastSeries>& series, std::string_view symbol) {
  std::vector<std::string> intervals;
  for (const ForecastSeries& s : series) {
    if (s.symbol == symbol) intervals.push_back(s.interval);
  }
  return fmt::format("{}", fmt::join(intervals, ", "));
}

std::string FormatQuantiles(const std::vector<double>& qs) {
  std::vector<std::string> out;
  for (double q : qs) out.push_back(fmt::format("{:g}", q));
  return fmt::format("{}", fmt::join(out, ", "));
}

core::Status FailedPrecondition(std::string message) {
  return {core::StatusCode::kFailedPrecondition, std::move(message)};
}

std::string NoCandlesHint(std::string_view symbol, std::string_view interval) {
  return fmt::format(
      "load {} {} candles with `megaserve data import` (a CSV file) or `megaserve data sync` "
      "(from an exchange)",
      symbol, interval);
}

}  // namespace

ForecastService::ForecastService(ForecastServiceOptions options) : options_(std::move(options)) {}

int64_t ForecastService::NowMs() const {
  return options_.now_ms ? options_.now_ms() : core::NowMicros() / 1000;
}

std::vector<ForecastSeries> ForecastService::Available() {
  std::vector<ForecastSeries> out;
  for (const models::ModelInfo& info : options_.repository->List()) {
    if (!info.config || info.config->backend != kForecastBackend) continue;
    std::size_t dash = info.name.rfind('-');
    if (dash == std::string::npos || dash == 0) continue;
    auto symbol = NormalizeSymbol(std::string_view(info.name).substr(0, dash));
    std::string interval = info.name.substr(dash + 1);
    if (!symbol.ok() || !IntervalMillis(interval).ok()) continue;
    out.push_back({*symbol, interval, info.name});
  }
  std::sort(out.begin(), out.end(), [](const ForecastSeries& a, const ForecastSeries& b) {
    if (a.symbol != b.symbol) return a.symbol < b.symbol;
    return *IntervalMillis(a.interval) < *IntervalMillis(b.interval);
  });
  return out;
}

core::Result<PreparedForecast> ForecastService::Prepare(const ForecastRequest& request,
                                                        std::string* param) {
  return DoPrepare(request, param, /*warm_only=*/false);
}

core::Result<PreparedForecast> ForecastService::PrepareIfWarm(const ForecastRequest& request) {
  return DoPrepare(request, nullptr, /*warm_only=*/true);
}

core::Result<PreparedForecast> ForecastService::DoPrepare(const ForecastRequest& request,
                                                          std::string* param, bool warm_only) {
  const auto cold = [] { return core::Unavailable("not warm"); };
  std::string ignored;
  if (param == nullptr) param = &ignored;
  param->clear();
  auto fail = [param](std::string_view field, core::Status s) {
    *param = std::string(field);
    return s;
  };

  auto symbol = NormalizeSymbol(request.symbol);
  if (!symbol.ok() && warm_only) return cold();
  if (!symbol.ok()) {
    return fail("symbol", core::InvalidArgument(fmt::format("{}; symbols with a forecast model: {}",
                                                            symbol.status().message(),
                                                            JoinSymbols(Available()))));
  }
  auto interval_ms = IntervalMillis(request.interval);
  if (!interval_ms.ok() && warm_only) return cold();
  if (!interval_ms.ok()) {
    std::vector<ForecastSeries> series = Available();
    std::string intervals = IntervalsOf(series, *symbol);
    return fail("interval",
                core::InvalidArgument(
                    intervals.empty()
                        ? interval_ms.status().message()
                        : fmt::format("unknown interval \"{}\"; intervals with a model for {}: {}",
                                      request.interval, *symbol, intervals)));
  }

  const std::string name = Lower(*symbol) + "-" + request.interval;
  auto handle =
      warm_only ? options_.repository->AcquireLoaded(name) : options_.repository->Acquire(name);
  if (!handle.ok() && warm_only) return cold();
  const ForecastBackendModel* model = nullptr;
  if (handle.ok()) model = dynamic_cast<const ForecastBackendModel*>(&handle->model());
  if (!handle.ok() && handle.status().code() != core::StatusCode::kNotFound) {
    return handle.status();  // the model exists but cannot serve now
  }
  if (model == nullptr && warm_only) return cold();
  if (model == nullptr) {
    std::vector<ForecastSeries> series = Available();
    std::string intervals = IntervalsOf(series, *symbol);
    if (!intervals.empty()) {
      return fail("interval", core::InvalidArgument(fmt::format(
                                  "no forecast model for {} {}; intervals with a model for {}: {}",
                                  *symbol, request.interval, *symbol, intervals)));
    }
    return fail("symbol", core::NotFound(fmt::format(
                              "no forecast model for symbol {}; symbols with a forecast model: {}",
                              *symbol, JoinSymbols(series))));
  }

  const LstmShape& shape = model->shape();
  const ModelInfo& info = model->info();
  PreparedForecast out;
  out.horizon = request.horizon == 0 ? shape.horizon : request.horizon;
  if (out.horizon < 1 || out.horizon > shape.horizon) {
    return fail("horizon",
                core::InvalidArgument(fmt::format("horizon must be 1..{} for {} (got {})",
                                                  shape.horizon, name, request.horizon)));
  }
  if (request.quantiles.empty()) {
    for (int i = 0; i < shape.num_quantiles; ++i) out.quantile_index.push_back(i);
  } else {
    for (double q : request.quantiles) {
      auto it = std::find_if(info.quantiles.begin(), info.quantiles.end(),
                             [q](double m) { return std::abs(m - q) < 1e-9; });
      if (it == info.quantiles.end()) {
        return fail("quantiles", core::InvalidArgument(
                                     fmt::format("quantile {:g} is not one of {}'s quantiles: {}",
                                                 q, name, FormatQuantiles(info.quantiles))));
      }
      int index = static_cast<int>(it - info.quantiles.begin());
      if (std::find(out.quantile_index.begin(), out.quantile_index.end(), index) !=
          out.quantile_index.end()) {
        return fail("quantiles",
                    core::InvalidArgument(fmt::format("quantile {:g} is listed twice", q)));
      }
      out.quantile_index.push_back(index);
    }
    std::sort(out.quantile_index.begin(), out.quantile_index.end(),
              [&info](int a, int b) { return info.quantiles[a] < info.quantiles[b]; });
  }

  out.made_at_ms = NowMs();
  if (warm_only) {
    out.window = FreshWindow(name, *model, out.made_at_ms);
    if (out.window == nullptr) return cold();
  } else {
    auto window = WindowFor(name, *model, *symbol, request.interval, *interval_ms, out.made_at_ms);
    if (!window.ok()) return window.status();
    out.window = std::move(*window);
  }
  out.model = model;
  out.handle = std::make_shared<models::ModelHandle>(std::move(*handle));
  out.symbol = std::move(*symbol);
  out.interval = request.interval;
  out.interval_ms = *interval_ms;
  return out;
}

std::shared_ptr<const SeriesWindow> ForecastService::FreshWindow(const std::string& name,
                                                                 const ForecastBackendModel& model,
                                                                 int64_t now_ms) {
  const uint64_t version = options_.candles->version();
  std::lock_guard lock(mu_);
  auto it = windows_.find(name);
  if (it == windows_.end()) return nullptr;
  const SeriesWindow& w = *it->second;
  if (w.version == version && w.norm == model.info().norm && w.window == model.shape().window &&
      now_ms < w.valid_until_ms && now_ms - w.built_at_ms < options_.recheck.count()) {
    return it->second;
  }
  return nullptr;
}

core::Result<std::shared_ptr<const SeriesWindow>> ForecastService::WindowFor(
    const std::string& name, const ForecastBackendModel& model, const std::string& symbol,
    const std::string& interval, int64_t interval_ms, int64_t now_ms) {
  if (auto fresh = FreshWindow(name, model, now_ms)) return fresh;
  // Concurrent rebuilds of one series are harmless: each reads the store once, the last one
  // stays.
  auto built = BuildWindow(model, symbol, interval, interval_ms, now_ms);
  if (!built.ok()) return built.status();
  std::lock_guard lock(mu_);
  windows_[name] = *built;
  return *built;
}

core::Result<std::shared_ptr<const SeriesWindow>> ForecastService::BuildWindow(
    const ForecastBackendModel& model, const std::string& symbol, const std::string& interval,
    int64_t interval_ms, int64_t now_ms) {
  auto w = std::make_shared<SeriesWindow>();
  // Read the version first: an upsert racing with the query below then only makes the window
  // look older than it is, and it is rebuilt on the next request.
  w->version = options_.candles->version();
  w->built_at_ms = now_ms;
  w->valid_until_ms = std::numeric_limits<int64_t>::max();
  w->norm = model.info().norm;
  w->window = model.shape().window;
  const int64_t needed = FirstValidRow() + w->window;  // rows 0..28 only feed row 29's features

  // One more than needed, newest first: the newest may be a bar that has not closed.
  auto bars =
      options_.candles->Range(symbol, interval, 0, std::numeric_limits<int64_t>::max(), needed + 1,
                              /*include_partial=*/true, /*newest=*/true);
  if (!bars.ok()) return bars.status();
  std::vector<Candle>& candles = *bars;
  while (!candles.empty() &&
         (candles.back().partial || IsOpenAt(candles.back().open_time_ms, interval_ms, now_ms))) {
    w->data.partial_bar = true;
    // A bar open by the clock closes at a known time; one flagged partial in the store whose
    // interval has passed (a file's last row) only stops being partial when a newer bar is
    // stored, which changes the store's version.
    if (IsOpenAt(candles.back().open_time_ms, interval_ms, now_ms)) {
      w->valid_until_ms = std::min(w->valid_until_ms, candles.back().open_time_ms + interval_ms);
    }
    candles.pop_back();
  }
  if (static_cast<int64_t>(candles.size()) > needed) {
    candles.erase(candles.begin(), candles.end() - needed);
  }
  if (candles.empty()) {
    return FailedPrecondition(fmt::format("no complete candles of {} {} are stored; {}", symbol,
                                          interval, NoCandlesHint(symbol, interval)));
  }
  if (static_cast<int64_t>(candles.size()) < needed) {
    return FailedPrecondition(fmt::format(
        "{} complete candles of {} {} are stored; the model needs at least {} ({} bars of "
        "window and {} for the volume feature); {}",
        candles.size(), symbol, interval, needed, w->window, FirstValidRow(),
        NoCandlesHint(symbol, interval)));
  }

  std::vector<float> features = ComputeFeatures(candles);
  Normalize(w->norm, features);
  std::vector<float> window(static_cast<std::size_t>(w->window) * kFeatureCount);
  Window(features, needed - 1, w->window, window);
  w->input = EncodeBinaryWindow(window);

  DataFreshness& d = w->data;
  d.last_open_ms = candles.back().open_time_ms;
  d.last_close_ms = d.last_open_ms + interval_ms;
  d.last_close = candles.back().close;
  d.first_open_ms = candles.front().open_time_ms;
  for (const Gap& gap : FindGaps(candles, interval_ms)) d.gap_bars += gap.missing_bars;
  d.candles_version = w->version;
  return std::shared_ptr<const SeriesWindow>(std::move(w));
}

void ForecastService::Run(PreparedForecast prepared, const batching::SubmitOptions& options,
                          std::function<void(core::Result<Forecast>)> done) {
  auto p = std::make_shared<PreparedForecast>(std::move(prepared));
  // The request shares the window's bytes (they live as long as the window) instead of copying
  // them: every client asking for this series until the next bar sends the same window.
  models::Input input(std::shared_ptr<const std::string>(p->window, &p->window->input));
  const models::ModelHandle& handle = *p->handle;
  handle.Infer(std::move(input), options,
               [p, done = std::move(done)](core::Result<std::string> answer) {
                 if (!answer.ok()) return done(answer.status());
                 const ForecastBackendModel& model = *p->model;
                 const LstmShape& shape = model.shape();
                 const ModelInfo& info = model.info();
                 // Per thread: the batcher's threads answer every forecast.
                 thread_local std::vector<float> outputs;
                 thread_local std::vector<double> prices;
                 outputs.resize(shape.outputs());
                 prices.resize(shape.outputs());
                 if (auto s = DecodeBinaryOutputs(*answer, outputs); !s.ok()) return done(s);
                 const DataFreshness& data = p->window->data;
                 QuantilesToPrices(data.last_close, outputs, shape.horizon, shape.num_quantiles,
                                   info.norm.target_scale, prices);

                 Forecast f;
                 f.symbol = p->symbol;
                 f.interval = p->interval;
                 f.interval_ms = p->interval_ms;
                 for (int i : p->quantile_index) f.quantiles.push_back(info.quantiles[i]);
                 f.model_name = p->handle->name();
                 f.model_version = p->handle->version();
                 f.precision = model.precision();
                 f.kernel = std::string(model.kernel());
                 f.model_horizon = shape.horizon;
                 f.trained_at_ms = info.trained_at_ms;
                 f.made_at_ms = p->made_at_ms;
                 f.data = data;
                 f.data.age_s = std::max<int64_t>(0, (p->made_at_ms - data.last_close_ms) / 1000);
                 f.steps.resize(p->horizon);
                 for (int h = 1; h <= p->horizon; ++h) {
                   ForecastStep& step = f.steps[h - 1];
                   step.h = h;
                   step.open_time_ms = data.last_open_ms + h * p->interval_ms;
                   step.close_time_ms = step.open_time_ms + p->interval_ms;
                   for (int i : p->quantile_index) {
                     step.prices.push_back(prices[(h - 1) * shape.num_quantiles + i]);
                   }
                 }
                 f.skill_json = model.skill_json();
                 p->handle.reset();  // gives the model back before the caller's work
                 done(std::move(f));
               });
}

core::Result<Forecast> ForecastService::ForecastNow(const ForecastRequest& request,
                                                    std::string* param) {
  auto prepared = Prepare(request, param);
  if (!prepared.ok()) return prepared.status();
  std::promise<core::Result<Forecast>> promise;
  auto future = promise.get_future();
  Run(std::move(*prepared), {},
      [&promise](core::Result<Forecast> result) { promise.set_value(std::move(result)); });
  return future.get();
}

std::string QuantileKey(double q) {
  // "p" and the percentile as printf's %g writes it (6 significant digits, no trailing zeros).
  char text[48] = {'p'};
  const double percent = std::round(q * 1e6) / 1e4;
  char* end =
      std::to_chars(text + 1, text + sizeof(text), percent, std::chars_format::general, 6).ptr;
  return {text, static_cast<std::size_t>(end - text)};
}

namespace {

// Appends the forecast answer's text to a string through a cursor. Each piece first makes sure
// the string has room for its longest text and is then written in place: the keys are literals
// copied with their punctuation at a size known when compiling, numbers are formatted straight
// into the string by std::to_chars (shortest text that reads back to the same double; a whole
// number keeps a ".0", as rapidjson writes it, so that it stays a float for clients that tell
// the two apart), timestamps by core::Rfc3339To, and only strings are scanned for escapes.
class AnswerText {
 public:
  // `expected`: the text's likely length; the string grows past it when needed.
  AnswerText(std::string& out, std::size_t expected) : out_(out) {
    const std::size_t start = out_.size();
    out_.resize(start + expected);
    p_ = out_.data() + start;
  }
  AnswerText(const AnswerText&) = delete;  // No copying allowed.
  AnswerText& operator=(const AnswerText&) = delete;
  // Cuts the string back to the text written.
  ~AnswerText() { out_.resize(static_cast<std::size_t>(p_ - out_.data())); }

  template <std::size_t N>
  AnswerText& Raw(const char (&literal)[N]) {
    return Copy(literal, N - 1);
  }
  AnswerText& Raw(std::string_view text) { return Copy(text.data(), text.size()); }
  AnswerText& String(std::string_view s) {
    static constexpr char kHex[] = "0123456789abcdef";
    Room(2 + 6 * s.size());  // \u00XX at worst
    *p_++ = '"';
    for (char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      if (c >= 0x20 && c != '"' && c != '\\') {
        *p_++ = ch;
      } else if (c == '"' || c == '\\') {
        *p_++ = '\\';
        *p_++ = ch;
      } else {
        p_ = std::copy_n("\\u00", 4, p_);
        *p_++ = kHex[c >> 4];
        *p_++ = kHex[c & 15];
      }
    }
    *p_++ = '"';
    return *this;
  }
  AnswerText& Int(int64_t v) {
    Room(kNumberRoom);
    p_ = std::to_chars(p_, p_ + kNumberRoom, v).ptr;
    return *this;
  }
  AnswerText& Double(double v) {
    if (!std::isfinite(v)) return Raw("null");  // JSON has no NaN or infinity
    Room(kNumberRoom + 2);
    char* start = p_;
    p_ = std::to_chars(p_, p_ + kNumberRoom, v).ptr;
    if (std::find_if(start, p_, [](char c) { return c == '.' || c == 'e'; }) == p_) {
      *p_++ = '.';
      *p_++ = '0';
    }
    return *this;
  }
  AnswerText& Bool(bool v) { return v ? Raw("true") : Raw("false"); }
  AnswerText& Time(int64_t ms) {
    Room(core::kRfc3339Size + 2);
    *p_++ = '"';
    p_ += core::Rfc3339To(ms * 1000, p_);
    *p_++ = '"';
    return *this;
  }

 private:
  // The longest text std::to_chars writes for an int64_t or a double (shortest form).
  static constexpr std::size_t kNumberRoom = 32;

  AnswerText& Copy(const char* text, std::size_t n) {
    Room(n);
    std::memcpy(p_, text, n);
    p_ += n;
    return *this;
  }
  void Room(std::size_t n) {
    const auto used = static_cast<std::size_t>(p_ - out_.data());
    if (out_.size() - used >= n) return;
    out_.resize(std::max(2 * out_.size(), used + n));
    p_ = out_.data() + used;
  }

  std::string& out_;
  char* p_;
};

}  // namespace

std::string ForecastJson(const Forecast& forecast) {
  std::string out;
  AppendForecastJson(forecast, out);
  return out;
}

void AppendForecastJson(const Forecast& f, std::string& out) {
  // About 600 bytes plus 250 a step plus the skill summary: room for the whole text, so that
  // the string grows once at most.
  const std::size_t skill_size = f.skill_json ? f.skill_json->size() : 256;
  AnswerText t(out, 1024 + 256 * f.steps.size() + skill_size);
  t.Raw(R"({"object":"forecast","symbol":)").String(f.symbol);
  t.Raw(R"(,"interval":)").String(f.interval);
  t.Raw(R"(,"horizon":)").Int(static_cast<int64_t>(f.steps.size()));
  t.Raw(R"(,"quantiles":[)");
  for (std::size_t i = 0; i < f.quantiles.size(); ++i) {
    if (i > 0) t.Raw(",");
    t.Double(f.quantiles[i]);
  }
  t.Raw(R"(],"created_at":)").Time(f.made_at_ms);

  t.Raw(R"(,"model":{"name":)").String(f.model_name);
  t.Raw(R"(,"version":)").Int(f.model_version);
  t.Raw(R"(,"precision":)").String(PrecisionName(f.precision));
  t.Raw(R"(,"kernel":)").String(f.kernel);
  t.Raw(R"(,"horizon":)").Int(f.model_horizon);
  t.Raw(R"(,"trained_at":)");
  if (f.trained_at_ms > 0) {
    t.Time(f.trained_at_ms);
  } else {
    t.Raw("null");
  }

  const DataFreshness& d = f.data;
  t.Raw(R"(},"data":{"last_bar_open_time":)").Time(d.last_open_ms);
  t.Raw(R"(,"last_bar_open_time_ms":)").Int(d.last_open_ms);
  t.Raw(R"(,"last_bar_close_time":)").Time(d.last_close_ms);
  t.Raw(R"(,"last_close":)").Double(d.last_close);
  t.Raw(R"(,"age_seconds":)").Int(d.age_s);
  t.Raw(R"(,"partial_bar":)").Bool(d.partial_bar);
  t.Raw(R"(,"window_start":)").Time(d.first_open_ms);
  t.Raw(R"(,"gap_bars":)").Int(d.gap_bars);
  t.Raw(R"(,"gaps":)").Bool(d.gap_bars > 0);

  // The prices' keys, "p10": ...
  std::vector<std::string> keys;  // short enough to need no allocation of their own
  keys.reserve(f.quantiles.size());
  for (double q : f.quantiles) keys.push_back('"' + QuantileKey(q) + "\":");
  t.Raw(R"(},"steps":[)");
  for (std::size_t s = 0; s < f.steps.size(); ++s) {
    const ForecastStep& step = f.steps[s];
    if (s > 0) t.Raw(",");
    t.Raw(R"({"h":)").Int(step.h);
    t.Raw(R"(,"open_time":)").Time(step.open_time_ms);
    t.Raw(R"(,"open_time_ms":)").Int(step.open_time_ms);
    t.Raw(R"(,"close_time":)").Time(step.close_time_ms);
    t.Raw(R"(,"prices":{)");
    for (std::size_t i = 0; i < f.quantiles.size(); ++i) {
      if (i > 0) t.Raw(",");
      t.Raw(keys[i]).Double(step.prices[i]);
    }
    t.Raw("}}");
  }

  if (!f.skill_json) {
    t.Raw(R"(],"skill":null,"skill_note":)")
        .String(
            "this model has not been backtested; run `megaserve backtest` to measure its skill "
            "against naive persistence");
  } else {
    t.Raw(R"(],"skill":)").Raw(*f.skill_json);
  }
  t.Raw("}");
}

}  // namespace megaserve::forecast
