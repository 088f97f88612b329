#include "core/progress_bar.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace megaserve::core {

ProgressBar::ProgressBar(std::FILE* out, int interactive)
    : out_(out),
      interactive_(interactive < 0 ? isatty(fileno(out)) != 0 : interactive != 0),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { Finish(); }

std::string ProgressBar::Render(const std::string& phase, int done, int total, double elapsed_s,
                                int width, int done_at_start) {
  total = std::max(total, 1);
  done = std::clamp(done, 0, total);
  const int filled = static_cast<int>(static_cast<int64_t>(width) * done / total);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.append(static_cast<std::size_t>(width - filled), '-');
  std::string text = fmt::format("{} [{}] {}/{}", phase, bar, done, total);
  if (done > done_at_start && elapsed_s > 0) {
    const double rate = (done - done_at_start) / elapsed_s;
    text += rate >= 1 ? fmt::format("  {:.2f} it/s", rate) : fmt::format("  {:.2f} s/it", 1 / rate);
    if (done < total)
      text += fmt::format("  ETA {:.0f}s", (total - done) / rate);
    else
      text += fmt::format("  {:.1f}s", elapsed_s);
  }
  return text;
}

void ProgressBar::Update(const std::string& phase, int done, int total) {
  if (phase != phase_) {
    Finish();
    phase_ = phase;
    last_decile_ = -1;
    done_at_start_ = done;
    start_ = std::chrono::steady_clock::now();
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (interactive_) {
    std::fprintf(out_, "\r%s\x1b[K",
                 Render(phase, done, total, elapsed, kWidth, done_at_start_).c_str());
    open_line_ = true;
  } else {
    const int decile = total > 0 ? 10 * std::clamp(done, 0, total) / total : 10;
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(out_, "%s\n", Render(phase, done, total, elapsed, kWidth, done_at_start_).c_str());
  }
  std::fflush(out_);
}

void ProgressBar::Finish() {
  if (open_line_) {
    std::fputc('\n', out_);
    std::fflush(out_);
    open_line_ = false;
  }
}

}  // namespace megaserve::core
