// Candle file parsing; see candle_files.h for the layouts.
//
// Dates are converted with Howard Hinnant's days_from_civil / civil_from_days algorithms
// ("chrono-Compatible Low-Level Date Algorithms", howardhinnant.github.io/date_algorithms.html),
// exact for the proleptic Gregorian calendar, so no time zone database or locale is involved.
#include "forecast/candle_files.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <fstream>
#include <map>
#include <sstream>

namespace megaserve::forecast {
namespace {

using core::Result;
using core::Status;

constexpr int64_t kMillisPerDay = 86'400'000;
// Open times at or above this are microseconds (16 digits); milliseconds have 13 until 2286.
constexpr int64_t kMicrosThreshold = 100'000'000'000'000;  // 1e14

int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void CivilFromDays(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
}

bool IsLeap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned DaysInMonth(int64_t y, unsigned m) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && IsLeap(y) ? 29 : kDays[m - 1];
}

// Parses exactly `width` decimal digits at text[pos].
bool Digits(std::string_view text, size_t pos, size_t width, unsigned& out) {
  if (pos + width > text.size()) return false;
  out = 0;
  for (size_t i = pos; i < pos + width; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    out = out * 10 + static_cast<unsigned>(text[i] - '0');
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

std::vector<std::string_view> SplitFields(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  while (true) {
    size_t comma = line.find(',', start);
    fields.push_back(Trim(line.substr(start, comma - start)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return fields;
}

bool ParseDouble(std::string_view text, double& out) {
  if (text.empty()) return false;
  if (text.front() == '+') text.remove_prefix(1);
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

bool ParseInt(std::string_view text, int64_t& out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

bool AllDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// Reads one CSV file line by line, tracking the line number for messages.
class Parser {
 public:
  Parser(std::string_view name) : name_(name) {}

  Status Error(size_t line, std::string_view message) const {
    return core::InvalidArgument(fmt::format("{}:{}: {}", name_, line, message));
  }
  Status FieldError(size_t line, std::string_view field, std::string_view value,
                    std::string_view what) const {
    return Error(line, fmt::format("field \"{}\": \"{}\" {}", field, value, what));
  }

  // Parses the OHLCV columns fields[first..first+4] into `c`.
  Status Prices(size_t line, const std::vector<std::string_view>& fields, size_t first,
                Candle& c) const {
    static constexpr const char* kNames[] = {"open", "high", "low", "close", "volume"};
    double* slots[] = {&c.open, &c.high, &c.low, &c.close, &c.volume};
    for (size_t i = 0; i < 5; ++i) {
      if (!ParseDouble(fields[first + i], *slots[i])) {
        return FieldError(line, kNames[i], fields[first + i], "is not a number");
      }
    }
    return Status::Ok();
  }

  // The open time in milliseconds from a Binance time column (milliseconds or microseconds).
  Status BinanceTime(size_t line, std::string_view field, std::string_view text,
                     int64_t& ms) const {
    int64_t value = 0;
    if (!ParseInt(text, value) || value < 0) {
      return FieldError(line, field, text, "is not a Unix time in milliseconds or microseconds");
    }
    ms = value >= kMicrosThreshold ? value / 1000 : value;
    return Status::Ok();
  }

 private:
  std::string_view name_;
};

}  // namespace

std::string_view CandleFileLayoutName(CandleFileLayout layout) {
  return layout == CandleFileLayout::kBinanceKlines ? "binance klines" : "timestamp csv";
}

Result<int64_t> ParseUtcTimestamp(std::string_view text) {
  auto bad = [&] {
    return core::InvalidArgument(
        fmt::format("\"{}\" is not a UTC time as \"YYYY-MM-DD HH:MM:SS\" or \"YYYY-MM-DD\"", text));
  };
  unsigned year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (text.size() != 10 && text.size() != 19) return bad();
  if (!Digits(text, 0, 4, year) || text[4] != '-' || !Digits(text, 5, 2, month) || text[7] != '-' ||
      !Digits(text, 8, 2, day)) {
    return bad();
  }
  if (text.size() == 19 &&
      (text[10] != ' ' || !Digits(text, 11, 2, hour) || text[13] != ':' ||
       !Digits(text, 14, 2, minute) || text[16] != ':' || !Digits(text, 17, 2, second))) {
    return bad();
  }
  if (month < 1 || month > 12 || day < 1 || day > DaysInMonth(year, month) || hour > 23 ||
      minute > 59 || second > 59) {
    return bad();
  }
  return DaysFromCivil(year, month, day) * kMillisPerDay +
         ((hour * 60 + minute) * 60 + second) * int64_t{1000};
}

std::string FormatUtcTimestamp(int64_t unix_ms) {
  int64_t days = unix_ms / kMillisPerDay;
  int64_t rest = unix_ms % kMillisPerDay;
  if (rest < 0) {
    rest += kMillisPerDay;
    --days;
  }
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(days, y, m, d);
  int64_t seconds = rest / 1000;
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", y, m, d, seconds / 3600,
                     seconds / 60 % 60, seconds % 60);
}

int64_t DetectIntervalMillis(std::span<const Candle> candles) {
  if (candles.size() < 2) return 0;
  std::map<int64_t, int64_t> counts;  // ordered, so a tie goes to the smaller spacing
  for (size_t i = 1; i < candles.size(); ++i) {
    ++counts[candles[i].open_time_ms - candles[i - 1].open_time_ms];
  }
  int64_t best = 0, best_count = 0;
  for (const auto& [spacing, count] : counts) {
    if (count > best_count) {
      best = spacing;
      best_count = count;
    }
  }
  return best;
}

std::string IntervalNameForMillis(int64_t interval_ms) {
  for (const std::string& name : IntervalNames()) {
    auto ms = IntervalMillis(name);
    if (ms.ok() && *ms == interval_ms) return name;
  }
  return "";
}

Result<CandleFile> ParseCandleCsv(std::string_view text, std::string_view name) {
  Parser parser(name);
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 byte order mark
  CandleFile file;
  bool layout_known = false;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = Trim(text.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    std::vector<std::string_view> fields = SplitFields(line);

    if (!layout_known) {
      layout_known = true;
      if (fields.size() == 12) {
        file.layout = CandleFileLayout::kBinanceKlines;
        if (!AllDigits(fields[0])) continue;  // a header ("open_time,open,...")
      } else if (fields.size() == 6) {
        file.layout = CandleFileLayout::kTimestampCsv;
        // A header ("timestamp,open,..."): a timestamp starts with a digit.
        if (!fields[0].empty() && std::isalpha(static_cast<unsigned char>(fields[0][0]))) continue;
      } else {
        return parser.Error(line_no,
                            fmt::format("{} fields; expected 6 (timestamp,open,high,low,close,"
                                        "volume) or 12 (a Binance kline dump)",
                                        fields.size()));
      }
    }

    Candle c;
    if (file.layout == CandleFileLayout::kBinanceKlines) {
      if (fields.size() != 12) {
        return parser.Error(line_no,
                            fmt::format("{} fields; a Binance kline row has 12", fields.size()));
      }
      if (Status s = parser.BinanceTime(line_no, "open time", fields[0], c.open_time_ms); !s.ok()) {
        return s;
      }
      if (Status s = parser.Prices(line_no, fields, 1, c); !s.ok()) return s;
      int64_t close_ms = 0;
      if (Status s = parser.BinanceTime(line_no, "close time", fields[6], close_ms); !s.ok()) {
        return s;
      }
      if (close_ms < c.open_time_ms) {
        return parser.FieldError(line_no, "close time", fields[6], "is before the open time");
      }
    } else {
      if (fields.size() != 6) {
        return parser.Error(line_no, fmt::format("{} fields; expected 6 (timestamp,open,high,low,"
                                                 "close,volume)",
                                                 fields.size()));
      }
      auto t = ParseUtcTimestamp(fields[0]);
      if (!t.ok()) {
        return parser.FieldError(line_no, "timestamp", fields[0],
                                 "is not \"YYYY-MM-DD HH:MM:SS\" or \"YYYY-MM-DD\" (UTC)");
      }
      c.open_time_ms = *t;
      if (Status s = parser.Prices(line_no, fields, 1, c); !s.ok()) return s;
    }
    if (Status s = ValidateCandle(c); !s.ok()) return parser.Error(line_no, s.message());
    if (!file.candles.empty() && c.open_time_ms <= file.candles.back().open_time_ms) {
      return parser.Error(line_no,
                          fmt::format("open time {} is not after the previous row's ({})",
                                      FormatUtcTimestamp(c.open_time_ms),
                                      FormatUtcTimestamp(file.candles.back().open_time_ms)));
    }
    file.candles.push_back(c);
  }
  if (file.candles.empty()) {
    return core::InvalidArgument(fmt::format("{}: no candles in the file", name));
  }
  file.candles.back().partial = true;
  file.interval_ms = DetectIntervalMillis(file.candles);
  return file;
}

Result<CandleFile> ReadCandleFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return core::NotFound(fmt::format("{}: cannot open the file", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return core::Internal(fmt::format("{}: read error", path));
  return ParseCandleCsv(buffer.str(), path);
}

}  // namespace megaserve::forecast
