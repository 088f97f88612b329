#include "core/progress_bar.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace megaserve::core {
namespace {

std::string ReadAll(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[512];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, f)) s.append(buf, n);
  return s;
}

TEST(ProgressBarTest, RendersCountsBarRateAndEta) {
  EXPECT_EQ(ProgressBar::Render("denoise", 5, 20, 2.5, 10),
            "denoise [##--------] 5/20  2.00 it/s  ETA 8s");
  EXPECT_EQ(ProgressBar::Render("decode", 1, 4, 4.0, 4), "decode [#---] 1/4  4.00 s/it  ETA 12s");
  EXPECT_EQ(ProgressBar::Render("x", 4, 4, 2.0, 4), "x [####] 4/4  2.00 it/s  2.0s");
  EXPECT_EQ(ProgressBar::Render("x", 0, 4, 0.0, 4), "x [----] 0/4");
  // A phase first reported with 2 of 8 done: its rate counts from there, and at its first
  // report there is none yet.
  EXPECT_EQ(ProgressBar::Render("b", 2, 8, 0.0, 4, 2), "b [#---] 2/8");
  EXPECT_EQ(ProgressBar::Render("b", 4, 8, 1.0, 4, 2), "b [##--] 4/8  2.00 it/s  ETA 2s");
}

TEST(ProgressBarTest, NonInteractiveOutputPrintsOneLinePerTenth) {
  std::FILE* f = std::tmpfile();
  {
    ProgressBar bar(f, 0);
    for (int i = 0; i <= 100; ++i) bar.Update("train", i, 100);
  }
  const std::string out = ReadAll(f);
  std::fclose(f);
  int lines = 0;
  for (char c : out) lines += c == '\n';
  EXPECT_EQ(lines, 11) << out;  // 0%, 10%, ..., 100%
  EXPECT_NE(out.find("train [##############################] 100/100"), std::string::npos) << out;
}

TEST(ProgressBarTest, InteractiveOutputRedrawsOneLinePerPhase) {
  std::FILE* f = std::tmpfile();
  {
    ProgressBar bar(f, 1);
    bar.Update("encode", 1, 1);
    for (int i = 1; i <= 3; ++i) bar.Update("denoise", i, 3);
  }
  const std::string out = ReadAll(f);
  std::fclose(f);
  int lines = 0;
  for (char c : out) lines += c == '\n';
  EXPECT_EQ(lines, 2) << out;
  EXPECT_NE(out.find("\rdenoise [##############################] 3/3"), std::string::npos);
}

}  // namespace
}  // namespace megaserve::core
