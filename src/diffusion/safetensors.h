// Reader for the safetensors weight format (Hugging Face): an 8-byte little-endian header
// length N, N bytes of JSON mapping each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end]} (offsets relative to the end of the header) plus an optional "__metadata__"
// object of string values, then the raw little-endian tensor bytes.
//
// Files are memory-mapped and tensors are views into the mapping: nothing is copied. The header
// is checked completely before any view is handed out: size bounds, JSON shape, known dtypes,
// shape products matching the byte ranges, ranges inside the data section and not overlapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace megaserve::diffusion {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element of a dtype.
std::size_t DTypeSize(DType dtype);
// The format's name of a dtype ("F32", "BF16", ...).
std::string_view DTypeName(DType dtype);

// One tensor inside a file: a borrowed view, valid while its SafetensorsFile lives.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t nbytes = 0;

  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and parses its header. Errors name the file and what is wrong:
  // kNotFound when it cannot be opened, kInvalidArgument when it is truncated or malformed.
  static core::Result<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  // Parses an in-memory file image; the bytes must outlive the result. For tests and fuzzing.
  static core::Result<std::unique_ptr<SafetensorsFile>> Parse(std::span<const std::byte> bytes,
                                                              std::string label = "<memory>");

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Tensors in data-offset order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // The tensor called `name`, or nullptr.
  const TensorView* Find(std::string_view name) const;
  // The "__metadata__" entries (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The path given to Open, or the label given to Parse.
  const std::string& path() const { return path_; }
  // Size of the whole file in bytes.
  std::size_t file_size() const { return bytes_.size(); }

 private:
  SafetensorsFile() = default;
  core::Status ParseHeader();

  std::string path_;
  std::span<const std::byte> bytes_;
  void* mapping_ = nullptr;  // owned mmap region, or nullptr for Parse()
  std::vector<TensorView> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace megaserve::diffusion
