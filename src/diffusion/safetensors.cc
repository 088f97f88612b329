#include "diffusion/safetensors.h"

#include <fcntl.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "fmt/format.h"

namespace megaserve::diffusion {
namespace {

// The reference implementation refuses headers above 100 MB; so do we, before reading them.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeInfo {
  std::string_view name;
  DType dtype;
  std::size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {"F64", DType::kF64, 8},   {"F32", DType::kF32, 4}, {"F16", DType::kF16, 2},
    {"BF16", DType::kBF16, 2}, {"I64", DType::kI64, 8}, {"I32", DType::kI32, 4},
    {"I16", DType::kI16, 2},   {"I8", DType::kI8, 1},   {"U8", DType::kU8, 1},
    {"BOOL", DType::kBool, 1},
};

const DTypeInfo* FindDType(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

// Reads a non-negative JSON integer that fits in uint64_t.
bool ReadUint(const rapidjson::Value& v, uint64_t& out) {
  if (v.IsUint64()) {
    out = v.GetUint64();
    return true;
  }
  return false;
}

}  // namespace

std::size_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, bytes_.size());
}

core::Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return core::NotFound(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return core::InvalidArgument(fmt::format("{} is not a regular file", path));
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return core::InvalidArgument(
        fmt::format("{} is truncated: {} bytes, a safetensors file starts with 8", path, size));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return core::Internal(fmt::format("cannot map {}: {}", path, std::strerror(errno)));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = map;
  file->bytes_ = {static_cast<const std::byte*>(map), size};
  if (auto s = file->ParseHeader(); !s.ok()) return s;
  return file;
}

core::Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::span<const std::byte> bytes, std::string label) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::move(label);
  file->bytes_ = bytes;
  if (auto s = file->ParseHeader(); !s.ok()) return s;
  return file;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

core::Status SafetensorsFile::ParseHeader() {
  auto bad = [this](std::string why) {
    return core::InvalidArgument(fmt::format("{}: not a valid safetensors file: {}", path_, why));
  };
  if (bytes_.size() < 8) {
    return bad(fmt::format("{} bytes, shorter than the 8-byte header length", bytes_.size()));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | std::to_integer<uint64_t>(bytes_[i]);
  if (header_len > kMaxHeaderBytes) {
    return bad(
        fmt::format("header length {} exceeds the {} byte limit", header_len, kMaxHeaderBytes));
  }
  if (header_len > bytes_.size() - 8) {
    return bad(fmt::format("truncated: the header needs {} bytes, the file has {} after the length",
                           header_len, bytes_.size() - 8));
  }
  const auto* header = reinterpret_cast<const char*>(bytes_.data() + 8);
  const std::size_t data_begin = 8 + header_len;
  const std::size_t data_size = bytes_.size() - data_begin;

  // The iterative parser keeps its nesting on the heap: the default recursive one overflows the
  // stack on a header of a few hundred thousand '['.
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag | rapidjson::kParseStopWhenDoneFlag |
            rapidjson::kParseIterativeFlag>(header, header_len);
  if (doc.HasParseError()) {
    return bad(fmt::format("header JSON: {} at byte {}",
                           rapidjson::GetParseError_En(doc.GetParseError()), doc.GetErrorOffset()));
  }
  if (!doc.IsObject()) return bad("header is not a JSON object");

  struct Range {
    uint64_t begin, end;
    std::size_t index;
  };
  std::vector<Range> ranges;
  for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
    std::string name(it->name.GetString(), it->name.GetStringLength());
    const rapidjson::Value& v = it->value;
    if (name == "__metadata__") {
      if (!v.IsObject()) return bad("__metadata__ is not an object");
      for (auto m = v.MemberBegin(); m != v.MemberEnd(); ++m) {
        if (!m->value.IsString()) return bad("__metadata__ values must be strings");
        metadata_[m->name.GetString()] =
            std::string(m->value.GetString(), m->value.GetStringLength());
      }
      continue;
    }
    if (!v.IsObject()) return bad(fmt::format("entry '{}' is not an object", name));
    auto dt = v.FindMember("dtype");
    auto sh = v.FindMember("shape");
    auto off = v.FindMember("data_offsets");
    if (dt == v.MemberEnd() || !dt->value.IsString()) {
      return bad(fmt::format("tensor '{}' has no string dtype", name));
    }
    const DTypeInfo* info = FindDType({dt->value.GetString(), dt->value.GetStringLength()});
    if (info == nullptr) {
      return bad(fmt::format("tensor '{}' has unknown dtype '{}'", name, dt->value.GetString()));
    }
    if (sh == v.MemberEnd() || !sh->value.IsArray()) {
      return bad(fmt::format("tensor '{}' has no shape array", name));
    }
    if (off == v.MemberEnd() || !off->value.IsArray() || off->value.Size() != 2) {
      return bad(fmt::format("tensor '{}' needs data_offsets [begin, end]", name));
    }
    TensorView t;
    t.name = name;
    t.dtype = info->dtype;
    // Every prefix product of the shape times the element size must fit in int64_t, so that
    // neither this loop nor TensorView::numel() overflows, even when a later dimension is 0.
    constexpr auto kMaxBytes = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    uint64_t elements = 1;
    for (const auto& d : sh->value.GetArray()) {
      uint64_t dim = 0;
      if (!ReadUint(d, dim) || dim > kMaxBytes) {
        return bad(
            fmt::format("tensor '{}' has a shape entry that is not a non-negative integer", name));
      }
      if (dim != 0 && elements > kMaxBytes / dim / info->size) {
        return bad(fmt::format("tensor '{}' has a shape too large to address", name));
      }
      elements *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t begin = 0, end = 0;
    if (!ReadUint(off->value[0], begin) || !ReadUint(off->value[1], end) || end < begin) {
      return bad(fmt::format("tensor '{}' has invalid data_offsets", name));
    }
    if (end > data_size) {
      return bad(fmt::format("truncated: tensor '{}' ends at byte {} of a {} byte data section",
                             name, end, data_size));
    }
    if (end - begin != elements * info->size) {
      return bad(fmt::format("tensor '{}' has {} bytes, its {} shape needs {}", name, end - begin,
                             DTypeName(info->dtype), elements * info->size));
    }
    t.data = bytes_.data() + data_begin + begin;
    t.nbytes = end - begin;
    if (!index_.emplace(name, tensors_.size()).second) {
      return bad(fmt::format("tensor '{}' appears twice", name));
    }
    ranges.push_back({begin, end, tensors_.size()});
    tensors_.push_back(std::move(t));
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return bad(fmt::format("tensors '{}' and '{}' overlap", tensors_[ranges[i - 1].index].name,
                             tensors_[ranges[i].index].name));
    }
  }
  std::vector<TensorView> ordered;
  ordered.reserve(tensors_.size());
  for (const auto& r : ranges) ordered.push_back(std::move(tensors_[r.index]));
  tensors_ = std::move(ordered);
  index_.clear();
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return core::Status::Ok();
}

}  // namespace megaserve::diffusion
