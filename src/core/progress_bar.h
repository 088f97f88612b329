// A progress bar for long command-line work (generation, training), drawn on stderr.
//
// On a terminal it redraws one line in place ("denoise [#####-----] 10/20  2.1 it/s  ETA 5s");
// elsewhere (logs, CI) it prints a plain line at each tenth of the work so output stays short.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace megaserve::core {

class ProgressBar {
 public:
  // `out` defaults to stderr; `interactive` defaults to whether `out` is a terminal.
  explicit ProgressBar(std::FILE* out = stderr, int interactive = -1);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Reports `done` of `total` units of `phase`; a new phase starts a new bar.
  void Update(const std::string& phase, int done, int total);
  // Ends the current bar's line (also done by the destructor and by a new phase).
  void Finish();

  static constexpr int kWidth = 30;  // cells of the bar

  // The text of one bar, for tests: phase, bar of `width` cells, counts, rate and ETA. The rate
  // counts the units done since `done_at_start`, the count when the elapsed time began (a phase
  // whose first report already has units done must not count them as done in no time).
  static std::string Render(const std::string& phase, int done, int total, double elapsed_s,
                            int width = kWidth, int done_at_start = 0);

 private:
  std::FILE* out_;
  bool interactive_;
  std::string phase_;
  int last_decile_ = -1;
  int done_at_start_ = 0;  // the phase's first reported count
  bool open_line_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace megaserve::core
