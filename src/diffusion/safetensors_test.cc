// Tests for the safetensors reader: a valid file's views, metadata and lookup, and a clean
// kInvalidArgument (never a crash) for each way a header can be malformed. File images are built
// here byte by byte, following the format: 8-byte little-endian header length, JSON, data.
#include "diffusion/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace megaserve::diffusion {
namespace {

using core::StatusCode;

// A file image: the header length as 8 little-endian bytes, the header, then the data bytes.
std::vector<std::byte> Image(const std::string& header, const std::vector<uint8_t>& data = {},
                             uint64_t header_len = UINT64_MAX) {
  if (header_len == UINT64_MAX) header_len = header.size();
  std::vector<std::byte> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((header_len >> (8 * i)) & 255));
  for (char c : header) out.push_back(static_cast<std::byte>(c));
  for (uint8_t b : data) out.push_back(static_cast<std::byte>(b));
  return out;
}

// Parses `bytes` and expects kInvalidArgument whose message names the label and contains `what`.
void ExpectInvalid(const std::vector<std::byte>& bytes, const std::string& what) {
  auto file = SafetensorsFile::Parse(bytes, "test.safetensors");
  ASSERT_FALSE(file.ok()) << "accepted a file that should fail with: " << what;
  EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument) << file.status().ToString();
  EXPECT_NE(file.status().message().find("test.safetensors"), std::string::npos)
      << file.status().message();
  EXPECT_NE(file.status().message().find(what), std::string::npos) << file.status().message();
}

// One F32 tensor "t" of shape [2] whose data_offsets are `offsets`, with 8 data bytes.
std::vector<std::byte> OneTensor(const std::string& dtype, const std::string& shape,
                                 const std::string& offsets, std::size_t data_bytes = 8) {
  return Image(R"({"t":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" +
                   offsets + "}}",
               std::vector<uint8_t>(data_bytes, 0));
}

TEST(SafetensorsTest, ParsesValidFileIntoViewsOfTheBuffer) {
  // "b" comes first in the header but second in the data: tensors() is in data order.
  const std::string header = R"({"b":{"dtype":"I16","shape":[3],"data_offsets":[8,14]},)"
                             R"("__metadata__":{"format":"pt","note":"hi"},)"
                             R"("a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},)"
                             R"("s":{"dtype":"BF16","shape":[],"data_offsets":[14,16]},)"
                             R"("z":{"dtype":"U8","shape":[0,5],"data_offsets":[16,16]}}   )";
  std::vector<uint8_t> data(16);
  const float a[2] = {1.5f, -2.0f};
  std::memcpy(data.data(), a, 8);
  const int16_t b[3] = {7, -8, 9};
  std::memcpy(data.data() + 8, b, 6);
  data[14] = 0x80;
  data[15] = 0x3f;  // bf16 1.0
  const auto bytes = Image(header, data);

  auto file = SafetensorsFile::Parse(bytes, "mem");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.path(), "mem");
  EXPECT_EQ(f.file_size(), bytes.size());
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.tensors()[0].name, "a");
  EXPECT_EQ(f.tensors()[1].name, "b");
  EXPECT_EQ(f.tensors()[2].name, "s");
  EXPECT_EQ(f.tensors()[3].name, "z");

  const std::byte* data_begin = bytes.data() + 8 + header.size();
  const TensorView* ta = f.Find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, DType::kF32);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(ta->numel(), 2);
  EXPECT_EQ(ta->nbytes, 8u);
  EXPECT_EQ(ta->data, data_begin);  // a view, not a copy
  float read_a[2];
  std::memcpy(read_a, ta->data, 8);
  EXPECT_EQ(read_a[0], 1.5f);
  EXPECT_EQ(read_a[1], -2.0f);

  const TensorView* tb = f.Find("b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->dtype, DType::kI16);
  EXPECT_EQ(tb->data, data_begin + 8);
  int16_t read_b[3];
  std::memcpy(read_b, tb->data, 6);
  EXPECT_EQ(read_b[1], -8);

  const TensorView* ts = f.Find("s");
  ASSERT_NE(ts, nullptr);
  EXPECT_TRUE(ts->shape.empty());
  EXPECT_EQ(ts->numel(), 1);
  EXPECT_EQ(std::to_integer<int>(ts->data[1]), 0x3f);

  const TensorView* tz = f.Find("z");
  ASSERT_NE(tz, nullptr);
  EXPECT_EQ(tz->numel(), 0);
  EXPECT_EQ(tz->nbytes, 0u);

  EXPECT_EQ(f.Find("missing"), nullptr);
  EXPECT_EQ(f.Find("__metadata__"), nullptr);
  EXPECT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hi");
}

TEST(SafetensorsTest, AcceptsEveryDType) {
  const struct {
    const char* name;
    DType dtype;
    std::size_t size;
  } kCases[] = {{"F64", DType::kF64, 8},   {"F32", DType::kF32, 4}, {"F16", DType::kF16, 2},
                {"BF16", DType::kBF16, 2}, {"I64", DType::kI64, 8}, {"I32", DType::kI32, 4},
                {"I16", DType::kI16, 2},   {"I8", DType::kI8, 1},   {"U8", DType::kU8, 1},
                {"BOOL", DType::kBool, 1}};
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(DTypeSize(c.dtype), c.size);
    EXPECT_EQ(DTypeName(c.dtype), c.name);
    const std::string end = std::to_string(3 * c.size);
    auto file = SafetensorsFile::Parse(OneTensor(c.name, "[3]", "[0," + end + "]", 3 * c.size));
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    EXPECT_EQ((*file)->tensors()[0].dtype, c.dtype);
  }
}

TEST(SafetensorsTest, EmptyHeaderObjectIsAnEmptyFile) {
  auto file = SafetensorsFile::Parse(Image("{}"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsTest, RejectsTruncatedHeaderLength) {
  ExpectInvalid({}, "shorter than the 8-byte header length");
  ExpectInvalid(std::vector<std::byte>(7, std::byte{0}), "shorter than the 8-byte header length");
}

TEST(SafetensorsTest, RejectsHeaderLongerThanFile) {
  ExpectInvalid(Image("{}", {}, 3), "truncated");
  ExpectInvalid(Image(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", {}, 1000),
                "truncated");
}

TEST(SafetensorsTest, RejectsHugeHeaderLengthBeforeReadingIt) {
  ExpectInvalid(Image("{}", {}, 100'000'001), "exceeds");
  ExpectInvalid(Image("{}", {}, UINT64_MAX - 1), "exceeds");
  ExpectInvalid(Image("{}", {}, uint64_t{1} << 63), "exceeds");
}

TEST(SafetensorsTest, RejectsHeaderThatIsNotJsonObject) {
  ExpectInvalid(Image("not json"), "header JSON");
  ExpectInvalid(Image(R"({"t":)"), "header JSON");
  ExpectInvalid(Image("\xff\xfe{}"), "header JSON");  // invalid UTF-8
  ExpectInvalid(Image("[1,2]"), "not a JSON object");
  ExpectInvalid(Image("42"), "not a JSON object");
  ExpectInvalid(Image(R"({"t":[1]})"), "is not an object");
}

TEST(SafetensorsTest, RejectsDeeplyNestedHeaderWithoutOverflowingTheStack) {
  // A recursive JSON parser would need a stack frame per bracket.
  ExpectInvalid(Image(std::string(2'000'000, '[')), "header JSON");
  ExpectInvalid(Image(std::string(1'000'000, '[') + std::string(1'000'000, ']')),
                "not a JSON object");
}

TEST(SafetensorsTest, RejectsBadMetadata) {
  ExpectInvalid(Image(R"({"__metadata__":[1]})"), "__metadata__ is not an object");
  ExpectInvalid(Image(R"({"__metadata__":{"k":1}})"), "values must be strings");
}

TEST(SafetensorsTest, RejectsUnknownOrMissingDType) {
  ExpectInvalid(OneTensor("F8", "[2]", "[0,8]"), "unknown dtype 'F8'");
  ExpectInvalid(OneTensor("f32", "[2]", "[0,8]"), "unknown dtype 'f32'");
  ExpectInvalid(Image(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", std::vector<uint8_t>(8)),
                "no string dtype");
  ExpectInvalid(
      Image(R"({"t":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", std::vector<uint8_t>(8)),
      "no string dtype");
}

TEST(SafetensorsTest, RejectsBadShapeEntries) {
  ExpectInvalid(OneTensor("F32", "[-2]", "[0,8]"), "shape entry");
  ExpectInvalid(OneTensor("F32", "[2.0]", "[0,8]"), "shape entry");
  ExpectInvalid(OneTensor("F32", R"(["2"])", "[0,8]"), "shape entry");
  ExpectInvalid(OneTensor("F32", "[null]", "[0,8]"), "shape entry");
  ExpectInvalid(OneTensor("F32", "[18446744073709551615]", "[0,8]"), "shape entry");
  ExpectInvalid(OneTensor("F32", "2", "[0,8]"), "no shape array");
  ExpectInvalid(Image(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", std::vector<uint8_t>(8)),
                "no shape array");
}

TEST(SafetensorsTest, RejectsShapesWhoseSizeOverflows) {
  ExpectInvalid(OneTensor("F32", "[4294967296,4294967296]", "[0,8]"), "too large");
  ExpectInvalid(OneTensor("U8", "[9223372036854775807,2]", "[0,8]"), "too large");
  // A zero later in the shape does not excuse an intermediate product that overflows int64_t:
  // TensorView::numel() multiplies in the same order.
  ExpectInvalid(OneTensor("U8", "[3,4611686018427387903,0]", "[0,0]"), "too large");
  // A leading zero keeps every product at zero, so this empty tensor is fine.
  auto file = SafetensorsFile::Parse(OneTensor("U8", "[0,4611686018427387903,5]", "[0,0]"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->tensors()[0].numel(), 0);
}

TEST(SafetensorsTest, RejectsBadOffsets) {
  ExpectInvalid(OneTensor("F32", "[2]", "[0]"), "data_offsets [begin, end]");
  ExpectInvalid(OneTensor("F32", "[2]", "[0,8,9]"), "data_offsets [begin, end]");
  ExpectInvalid(OneTensor("F32", "[2]", "{}"), "data_offsets [begin, end]");
  ExpectInvalid(OneTensor("F32", "[2]", "[-1,7]"), "invalid data_offsets");
  ExpectInvalid(OneTensor("F32", "[2]", "[8,0]"), "invalid data_offsets");
  ExpectInvalid(OneTensor("F32", "[2]", R"(["0","8"])"), "invalid data_offsets");
  ExpectInvalid(OneTensor("F32", "[0]", "[9,9]"), "ends at byte 9 of a 8 byte data section");
  ExpectInvalid(OneTensor("F32", "[2]", "[4,12]"), "ends at byte 12 of a 8 byte data section");
  ExpectInvalid(OneTensor("F32", "[2]", "[0,8]", 7), "ends at byte 8 of a 7 byte data section");
  ExpectInvalid(OneTensor("F32", "[2]", "[18446744073709551615,18446744073709551615]"),
                "ends at byte");
}

TEST(SafetensorsTest, RejectsSizeThatDoesNotMatchShape) {
  ExpectInvalid(OneTensor("F32", "[2]", "[0,4]"), "has 4 bytes");
  ExpectInvalid(OneTensor("F32", "[3]", "[0,8]"), "needs 12");
  ExpectInvalid(OneTensor("F16", "[]", "[0,8]"), "needs 2");
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectInvalid(Image(R"({"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"I8","shape":[4],"data_offsets":[3,7]}})",
                      std::vector<uint8_t>(8)),
                "overlap");
  // An empty tensor inside another's range overlaps it too.
  ExpectInvalid(Image(R"({"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"I8","shape":[0],"data_offsets":[2,2]}})",
                      std::vector<uint8_t>(8)),
                "overlap");
  // Touching ranges do not overlap.
  auto ok = SafetensorsFile::Parse(Image(R"({"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]},)"
                                         R"("b":{"dtype":"I8","shape":[4],"data_offsets":[4,8]}})",
                                         std::vector<uint8_t>(8)));
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
}

TEST(SafetensorsTest, RejectsDuplicateNames) {
  ExpectInvalid(Image(R"({"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]},)"
                      R"("a":{"dtype":"I8","shape":[4],"data_offsets":[4,8]}})",
                      std::vector<uint8_t>(8)),
                "'a' appears twice");
}

class SafetensorsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "megaserve-safetensors-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::vector<std::byte>& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<long>(bytes.size()));
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(SafetensorsFileTest, OpenMapsTheFile) {
  const float values[3] = {0.25f, 0.5f, 4.0f};
  std::vector<uint8_t> data(12);
  std::memcpy(data.data(), values, 12);
  const std::string path =
      Write("w.safetensors", Image(R"({"__metadata__":{"format":"pt"},)"
                                   R"("w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})",
                                   data));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const TensorView* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  float read[3];
  std::memcpy(read, w->data, 12);
  EXPECT_EQ(read[2], 4.0f);
}

TEST_F(SafetensorsFileTest, OpenReportsMissingFileAsNotFound) {
  const std::string path = (dir_ / "absent.safetensors").string();
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound);
  EXPECT_NE(file.status().message().find(path), std::string::npos) << file.status().message();
}

TEST_F(SafetensorsFileTest, OpenRejectsTruncatedAndMalformedFiles) {
  for (const auto& [name, bytes] : std::vector<std::pair<std::string, std::vector<std::byte>>>{
           {"empty", {}},
           {"short", std::vector<std::byte>(5, std::byte{1})},
           {"cut", Image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})",
                         std::vector<uint8_t>(11))}}) {
    const std::string path = Write(name, bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << name;
    EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(file.status().message().find(path), std::string::npos) << file.status().message();
  }
  auto dir = SafetensorsFile::Open(dir_.string());
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace megaserve::diffusion
