// `megaserve generate`: one text-to-image generation from the command line, through the
// libtorch plugin, written as a PNG that carries its parameters.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "diffusion/engine.h"

namespace megaserve::cli {

struct GenerateFlags {
  diffusion::LoadParams load;
  diffusion::GenerateParams params;
  std::string size = "512x512";
  std::string seed = "random";
  std::string memory_budget;  // "8GiB", "512MiB", bytes; empty = none
  std::string out = "image.png";
  bool quiet = false;
};

// Adds the `generate` subcommand with its options bound to `flags`.
CLI::App* AddGenerateCommand(CLI::App& app, GenerateFlags& flags);

// Runs it; returns the process exit code (0 ok, 1 failure, 2 bad arguments).
int RunGenerate(GenerateFlags& flags);

// "512x768" -> width and height. False for anything else.
bool ParseSize(const std::string& text, int& width, int& height);
// "8GiB", "512MiB", "1.5G", "4096" -> bytes. False for anything else.
bool ParseBytes(const std::string& text, int64_t& bytes);

}  // namespace megaserve::cli
