#include "models/backend.h"

#include <fmt/format.h>

#include <filesystem>
#include <system_error>

namespace megaserve::models {

std::vector<core::Result<std::string>> Model::InferBatch(const std::vector<Input>& inputs) {
  std::vector<core::Result<std::string>> out;
  out.reserve(inputs.size());
  for (const Input& input : inputs) out.push_back(Infer(input.view()));
  return out;
}

namespace {

class EchoModel final : public Model {
 public:
  explicit EchoModel(std::size_t bytes) : bytes_(bytes) {}

  std::size_t memory_bytes() const override { return bytes_; }
  core::Result<std::string> Infer(std::string_view input_json) override {
    return std::string(input_json);
  }

 private:
  const std::size_t bytes_;
};

}  // namespace

core::Result<std::unique_ptr<Model>> LoadEchoModel(const ModelSpec& spec) {
  std::error_code ec;
  std::size_t bytes = 0;
  for (std::filesystem::recursive_directory_iterator it(spec.dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->is_regular_file(ec)) bytes += it->file_size(ec);
    if (ec) break;
  }
  if (ec) return core::Internal(fmt::format("reading {}: {}", spec.dir, ec.message()));
  return std::unique_ptr<Model>(std::make_unique<EchoModel>(bytes));
}

}  // namespace megaserve::models
