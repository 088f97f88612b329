#include "diffusion/torch/weights.h"

#include <fmt/format.h>

#include <algorithm>

#include "diffusion/safetensors.h"

namespace megaserve::diffusion {
namespace {

at::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return at::kDouble;
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kI64:
      return at::kLong;
    case DType::kI32:
      return at::kInt;
    case DType::kI16:
      return at::kShort;
    case DType::kI8:
      return at::kChar;
    case DType::kU8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  throw WeightError("unknown safetensors dtype");
}

std::string ShapeText(at::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace

Weights Weights::FromFile(const std::string& path, const ComputeOptions& options) {
  auto opened = SafetensorsFile::Open(path);
  if (!opened.ok()) throw WeightError(opened.status().message());
  // Every zero-copy tensor keeps the mapping alive through its deleter.
  std::shared_ptr<SafetensorsFile> file = std::move(opened).value();
  Weights w;
  w.source_ = path;
  for (const TensorView& t : file->tensors()) {
    const at::ScalarType stored = ToScalarType(t.dtype);
    at::Tensor view = at::from_blob(
        const_cast<std::byte*>(t.data), t.shape, [file](void*) {},
        at::TensorOptions().dtype(stored));
    const bool floating = at::isFloatingType(stored);
    if (floating && stored != options.dtype) {
      view = view.to(options.dtype);
    } else if (reinterpret_cast<std::uintptr_t>(t.data) % DTypeSize(t.dtype) != 0) {
      view = view.clone();  // unaligned element data: copy once rather than read it unaligned
    }
    if (view.device() != options.device) view = view.to(options.device);
    w.tensors_.insert_or_assign(t.name, std::move(view));
  }
  return w;
}

void Weights::Add(std::string name, at::Tensor tensor) {
  tensors_.insert_or_assign(std::move(name), std::move(tensor));
}

const at::Tensor& Weights::Get(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    throw WeightError(fmt::format("weight '{}' is missing from {}", name,
                                  source_.empty() ? std::string("the weights") : source_));
  }
  return it->second;
}

const at::Tensor& Weights::Get(std::string_view name, at::IntArrayRef shape) const {
  const at::Tensor& t = Get(name);
  if (t.sizes() != shape) {
    throw WeightError(fmt::format("weight '{}' in {} has shape {}, the config implies {}", name,
                                  source_.empty() ? std::string("the weights") : source_,
                                  ShapeText(t.sizes()), ShapeText(shape)));
  }
  return t;
}

bool Weights::Has(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

std::vector<std::string> Weights::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, _] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

std::size_t Weights::bytes() const {
  std::size_t total = 0;
  for (const auto& [_, t] : tensors_) total += t.numel() * t.element_size();
  return total;
}

}  // namespace megaserve::diffusion
