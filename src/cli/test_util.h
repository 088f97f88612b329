// Test helpers for CLI commands: run one with its output and errors captured.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace megaserve::cli::testing {

// What a command printed and returned (code 2 with the parser's message when parsing failed).
struct Outcome {
  int code = -1;
  std::string out;
  std::string err;
};

// Parses `command_line` with `app` and, when that succeeds, calls run(out, err) with two
// in-memory streams whose text ends up in the Outcome.
template <typename Run>
Outcome ParseAndRun(CLI::App& app, const std::string& command_line, Run run) {
  Outcome o;
  try {
    app.parse(command_line, false);
  } catch (const CLI::ParseError& e) {
    o.code = 2;
    o.err = e.what();
    return o;
  }
  char* out_buf = nullptr;
  char* err_buf = nullptr;
  size_t out_len = 0, err_len = 0;
  std::FILE* out = open_memstream(&out_buf, &out_len);
  std::FILE* err = open_memstream(&err_buf, &err_len);
  o.code = run(out, err);
  std::fclose(out);
  std::fclose(err);
  o.out.assign(out_buf, out_len);
  o.err.assign(err_buf, err_len);
  std::free(out_buf);
  std::free(err_buf);
  return o;
}

}  // namespace megaserve::cli::testing
