// Tests for ClipTokenizer against tests/diffusion/ref_tokenizer.py, an independent Python
// implementation of the same algorithm, on a tiny tokenizer written by tiny_tokenizer.py: chosen
// prompts (punctuation, numbers, contractions, accents, Greek final sigma, CJK, emoji, extra
// whitespace, special tokens, over-long prompts), seeded random prompts, and probes of most of
// the Unicode code space. Hand-written vocabularies check the BPE rules and the load errors.
#include "diffusion/clip_tokenizer.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace megaserve::diffusion {
namespace {

namespace fs = std::filesystem;

fs::path SourceDir() {
  const char* dir = std::getenv("MEGASERVE_SOURCE_DIR");
  return dir != nullptr ? fs::path(dir) : fs::current_path();
}

fs::path MakeTempDir(const std::string& tag) {
  std::string pattern = (fs::temp_directory_path() / ("megaserve-" + tag + "-XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

int RunPython(const std::string& script, const std::string& args) {
  const std::string cmd =
      "/usr/bin/python3 " + (SourceDir() / "tests/diffusion" / script).string() + " " + args;
  return std::system(cmd.c_str());
}

void WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string Utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
  return out;
}

// A JSON string literal of UTF-8 text.
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::vector<std::vector<int32_t>> ReadIdLists(const rapidjson::Value& lists) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& list : lists.GetArray()) {
    out.emplace_back();
    for (const auto& id : list.GetArray()) out.back().push_back(id.GetInt());
  }
  return out;
}

struct Expected {
  std::vector<std::vector<int32_t>> encoded;  // Encode(prompt, 77)
  std::vector<std::vector<int32_t>> tokens;   // Tokenize(prompt)
};

// Runs ref_tokenizer.py on `prompts` with the tokenizer in `tokenizer_dir`.
Expected RunReference(const fs::path& tokenizer_dir, const fs::path& work,
                      const std::vector<std::string>& prompts) {
  std::string request = R"({"max_length": 77, "prompts": [)";
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    request += (i ? ",\n" : "\n") + JsonString(prompts[i]);
  }
  request += "]}";
  WriteFile(work / "prompts.json", request);
  const fs::path out = work / "expected.json";
  fs::remove(out);
  EXPECT_EQ(
      RunPython("ref_tokenizer.py", tokenizer_dir.string() + " " +
                                        (work / "prompts.json").string() + " " + out.string()),
      0);
  std::ifstream in(out);
  std::stringstream text;
  text << in.rdbuf();
  rapidjson::Document doc;
  doc.Parse(text.str().c_str());
  Expected e;
  if (doc.HasParseError() || !doc.IsObject()) {
    ADD_FAILURE() << "cannot read " << out;
    return e;
  }
  e.encoded = ReadIdLists(doc["encoded"]);
  e.tokens = ReadIdLists(doc["tokens"]);
  return e;
}

std::string Printable(const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) out += std::to_string(id) + " ";
  return out;
}

class ClipTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(MakeTempDir("clip-tokenizer"));
    ASSERT_EQ(RunPython("tiny_tokenizer.py", (*dir_ / "sd1").string()), 0);
    ASSERT_EQ(RunPython("tiny_tokenizer.py", (*dir_ / "sd2").string() + " '!'"), 0);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  static ClipTokenizer LoadTiny(const std::string& name = "sd1") {
    auto tok = ClipTokenizer::Load((*dir_ / name).string());
    EXPECT_TRUE(tok.ok()) << tok.status().ToString();
    if (!tok.ok()) throw std::runtime_error(tok.status().ToString());
    return std::move(tok).value();
  }

  // Compares Encode and Tokenize with the reference on every prompt.
  static void ExpectMatchesReference(const ClipTokenizer& tok, const std::string& name,
                                     const std::vector<std::string>& prompts) {
    const Expected e = RunReference(*dir_ / name, *dir_, prompts);
    ASSERT_EQ(e.encoded.size(), prompts.size());
    ASSERT_EQ(e.tokens.size(), prompts.size());
    int failures = 0;
    for (std::size_t i = 0; i < prompts.size() && failures < 10; ++i) {
      const auto encoded = tok.Encode(prompts[i]);
      const auto tokens = tok.Tokenize(prompts[i]);
      EXPECT_EQ(encoded, e.encoded[i])
          << "prompt " << i << ": " << JsonString(prompts[i])
          << "\n  actual:   " << Printable(encoded) << "\n  expected: " << Printable(e.encoded[i]);
      EXPECT_EQ(tokens, e.tokens[i])
          << "prompt " << i << ": " << JsonString(prompts[i])
          << "\n  actual:   " << Printable(tokens) << "\n  expected: " << Printable(e.tokens[i]);
      failures += (encoded != e.encoded[i] || tokens != e.tokens[i]);
    }
  }

  static fs::path* dir_;
};

fs::path* ClipTokenizerTest::dir_ = nullptr;

const std::vector<std::string>& ChosenPrompts() {
  static const std::vector<std::string> prompts = {
      "a photo of a cat",
      "",
      "    ",
      "   A  Photo\tof\n\nthe   CAT  ",
      "Hello, World!!! How's it going? I'm fine; they're here, we've been, you'll see, he'd go.",
      "IT'S JOHN'S CAT, DON'T",
      "''' 's 'S ''s '\u017f ' ll'll 're've'm'd't 'x",
      "numbers 2023 and 3.14159 and 1,000,000 and \u00bd \u00b2 \u0663 \u216b 4th",
      "mixed123abc456 x2 2x",
      "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00dcn\u00efc\u00f6d\u00e9 "
      "\u00c0\u00c9\u00ce\u00d5\u00dc "
      "stra\u00dfe",
      "e\u0301 decomposed and A\u030a",
      "\u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u039f\u03a3. \u03a3 \u0391\u03a3'\u03a3 "
      "\u0391\u03a3\u0301 \u03a3\u03a3\u03a3",
      "\u0130stanbul D\u0130YARBAKIR \u0130",
      "\u041c\u043e\u0441\u043a\u0432\u0430 \u041f\u0420\u0418\u0412\u0415\u0422 "
      "\u043c\u0438\u0440",
      "\u6f22\u5b57\u3068\u304b\u306a\u30ab\u30ca \ud55c\uad6d\uc5b4 \u4e2d\u6587\uff0c\u6807\u70b9"
      "\u3002",
      "emoji \U0001F642\U0001F431\u200d\U0001F464 \U0001F680\U0001F680 \U0001F44D\U0001F3FD "
      "\u2764\ufe0f",
      "<|startoftext|>a<|endoftext|> !<|endoftext|> x<|ENDOFTEXT|> <|endoftext "
      "<|\u017ftartoftext|>",
      "tabs\u00a0nbsp\u2003em\u3000ideographic\u2028line\u0085nel\x1c\x1fseparators\x0bvt",
      "control\x01"
      "chars\x7f and \u200bzero width \ufeffbom",
      "\ufffd replacement and \U0010FFFF last",
      "!!!???...,,,;;;--- (brackets) [square] {curly} \"quotes\" `back`",
      "$100 & 50% off @home #tag ~tilde ^caret | pipe \\ back / slash",
      "supercalifragilisticexpialidocious",
      std::string(300, 'x'),
      "\uff21\uff22\uff23 fullwidth \uff11\uff12\uff13",
      "\u1e9e capital sharp s, \u01c5 titlecase, \u2126 ohm, \u212a kelvin",
  };
  return prompts;
}

TEST_F(ClipTokenizerTest, LoadsTinyTokenizer) {
  const ClipTokenizer sd1 = LoadTiny("sd1");
  EXPECT_EQ(sd1.vocab_size(), 614);
  EXPECT_EQ(sd1.bos_id(), 612);
  EXPECT_EQ(sd1.eos_id(), 613);
  EXPECT_EQ(sd1.pad_id(), 613);
  EXPECT_EQ(sd1.unk_id(), 613);
  const ClipTokenizer sd2 = LoadTiny("sd2");
  EXPECT_EQ(sd2.pad_id(), 0);  // "!"
  EXPECT_EQ(sd2.eos_id(), 613);
}

TEST_F(ClipTokenizerTest, CommonWordsAreSingleTokens) {
  const ClipTokenizer tok = LoadTiny();
  const auto ids = tok.Encode("a photo of the cat");
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids[0], tok.bos_id());
  EXPECT_EQ(ids[6], tok.eos_id());
  for (int i = 7; i < 77; ++i) EXPECT_EQ(ids[i], tok.pad_id());
  // A one-letter word is its byte symbol with the end-of-word marker; longer common words are
  // merged into one token each.
  EXPECT_EQ(ids[1], 256 + 'a' - '!');
  for (int i = 2; i < 6; ++i) EXPECT_GE(ids[i], 512) << "word " << i << " is not one merged token";
}

TEST_F(ClipTokenizerTest, MatchesReferenceOnChosenPrompts) {
  std::vector<std::string> prompts = ChosenPrompts();
  std::string long_prompt;
  for (int i = 0; i < 30; ++i) long_prompt += "a photo of a cat, ";
  prompts.push_back(long_prompt);  // > 77 tokens: truncated
  ExpectMatchesReference(LoadTiny("sd1"), "sd1", prompts);
  ExpectMatchesReference(LoadTiny("sd2"), "sd2", prompts);
}

TEST_F(ClipTokenizerTest, TruncatesLongPromptsToMaxLength) {
  const ClipTokenizer tok = LoadTiny();
  std::string prompt;
  for (int i = 0; i < 40; ++i) prompt += "a cat, ";
  const auto tokens = tok.Tokenize(prompt);
  ASSERT_GT(tokens.size(), 75u);
  const auto ids = tok.Encode(prompt);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids.front(), tok.bos_id());
  EXPECT_EQ(ids.back(), tok.eos_id());
  EXPECT_TRUE(std::equal(tokens.begin(), tokens.begin() + 75, ids.begin() + 1));
  // Other lengths follow the same rule.
  for (int max_length : {2, 3, 16, 200}) {
    std::vector<int32_t> expected = {tok.bos_id()};
    for (std::size_t i = 0; i < tokens.size() && i + 2 < static_cast<std::size_t>(max_length);
         ++i) {
      expected.push_back(tokens[i]);
    }
    expected.push_back(tok.eos_id());
    expected.resize(max_length, tok.pad_id());
    EXPECT_EQ(tok.Encode(prompt, max_length), expected) << "max_length " << max_length;
  }
  EXPECT_THROW(tok.Encode(prompt, 1), std::invalid_argument);
  EXPECT_THROW(tok.Encode(prompt, -5), std::invalid_argument);
}

// Seeded random prompts mixing the characters whose handling differs: letters of several
// scripts and cases, digits, punctuation, apostrophes, whitespace, combining marks, emoji.
TEST_F(ClipTokenizerTest, MatchesReferenceOnRandomPrompts) {
  const std::vector<char32_t> palette = {
      U'a',    U'b',    U'e',   U's',   U't',   U'A',  U'S',   U'Z',   U'0',   U'7',
      U'\'',   U'\'',   U'!',   U',',   U'.',   U'<',  U'|',   U'>',   U' ',   U' ',
      U'\t',   U'\n',   0xA0,   0x3000, 0xE9,   0xC9,  0xDF,   0x130,  0x17F,  0x3A3,
      0x3A3,   0x391,   0x3C3,  0x301,  0x2019, 0x41F, 0x436,  0x6F22, 0x3042, 0xAC00,
      0x1F642, 0x1F3FD, 0x200D, 0xFE0F, 0x663,  0xBD,  0x2160, 0x24B6, 0xFF21, 0x10400};
  std::mt19937 rng(1234);
  std::vector<std::string> prompts;
  for (int i = 0; i < 300; ++i) {
    std::string p;
    const int length = std::uniform_int_distribution<int>(0, 50)(rng);
    for (int k = 0; k < length; ++k) {
      p += Utf8(palette[std::uniform_int_distribution<std::size_t>(0, palette.size() - 1)(rng)]);
    }
    prompts.push_back(p);
  }
  ExpectMatchesReference(LoadTiny(), "sd1", prompts);
}

// Each code point c is probed in words whose split and lower-casing depend on whether c is a
// letter, a number, cased or case-ignorable, and on its lower case: "acc!" splits as one letter
// run, as single numbers or as a punctuation run; the capital sigmas become final or not.
TEST_F(ClipTokenizerTest, MatchesReferenceAcrossTheCodeSpace) {
  std::vector<char32_t> code_points;
  for (char32_t c = 1; c < 0x3400; ++c) code_points.push_back(c);
  for (auto [first, last] : std::vector<std::pair<char32_t, char32_t>>{{0xA640, 0xA6FF},
                                                                       {0xA720, 0xA7FF},
                                                                       {0xAB70, 0xABBF},
                                                                       {0xFB00, 0xFB4F},
                                                                       {0xFE00, 0xFFFD},
                                                                       {0x10400, 0x104FF},
                                                                       {0x10570, 0x105BF},
                                                                       {0x10C80, 0x10CFF},
                                                                       {0x118A0, 0x118FF},
                                                                       {0x16E40, 0x16E9F},
                                                                       {0x1D400, 0x1D4FF},
                                                                       {0x1E900, 0x1E95F}}) {
    for (char32_t c = first; c <= last; ++c) code_points.push_back(c);
  }
  for (char32_t c = 0x3400; c < 0x110000; c += 97) {
    if (c < 0xD800 || c > 0xDFFF) code_points.push_back(c);
  }
  const std::string sigma = Utf8(0x3A3);
  std::vector<std::string> prompts;
  for (std::size_t i = 0; i < code_points.size(); i += 64) {
    std::string p;
    for (std::size_t k = i; k < std::min(i + 64, code_points.size()); ++k) {
      const std::string c = Utf8(code_points[k]);
      p += "a" + c + c + "! " + c + sigma + " a" + sigma + c + " a" + c + sigma + " ";
    }
    prompts.push_back(p);
  }
  ExpectMatchesReference(LoadTiny(), "sd1", prompts);
}

TEST_F(ClipTokenizerTest, InvalidUtf8ReadsAsReplacementCharacter) {
  const ClipTokenizer tok = LoadTiny();
  const std::string fffd = Utf8(0xFFFD);
  const std::pair<std::string, std::string> cases[] = {
      {"caf\xff", "caf" + fffd},
      {"caf\xc3", "caf" + fffd},
      {"a\xe2\x82z", "a" + fffd + "z"},                    // truncated 3-byte sequence: one U+FFFD
      {"a\xf0\x9f\x99z", "a" + fffd + "z"},                // truncated 4-byte sequence
      {"a\xc0\xafz", "a" + fffd + fffd + "z"},             // overlong: each byte
      {"a\xed\xa0\x80z", "a" + fffd + fffd + fffd + "z"},  // surrogate
      {"a\x80\x80z", "a" + fffd + fffd + "z"},
      {"a\xf4\x90\x80\x80z", "a" + fffd + fffd + fffd + fffd + "z"},  // above U+10FFFF
  };
  for (const auto& [bad, good] : cases) {
    EXPECT_EQ(tok.Tokenize(bad), tok.Tokenize(good)) << JsonString(good);
  }
  EXPECT_NE(tok.Tokenize("caf\xff"), tok.Tokenize("caf"));
}

TEST_F(ClipTokenizerTest, RepeatedAndConcurrentEncodingAgree) {
  const ClipTokenizer tok = LoadTiny();
  std::vector<std::vector<int32_t>> first;
  for (const auto& p : ChosenPrompts()) first.push_back(tok.Encode(p));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (std::size_t i = 0; i < ChosenPrompts().size(); ++i) {
          mismatches[t] += tok.Encode(ChosenPrompts()[i]) != first[i];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST_F(ClipTokenizerTest, MovedTokenizerStillWorks) {
  ClipTokenizer tok = LoadTiny();
  const auto before = tok.Encode("a photo of a cat");
  ClipTokenizer moved = std::move(tok);
  EXPECT_EQ(moved.Encode("a photo of a cat"), before);
}

// A hand-written vocabulary, to check the BPE rules themselves.
class HandWrittenTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("clip-hand"); }
  void TearDown() override { fs::remove_all(dir_); }

  void Write(const std::string& vocab, const std::string& merges) {
    WriteFile(dir_ / "vocab.json", vocab);
    WriteFile(dir_ / "merges.txt", merges);
  }
  ClipTokenizer Load() {
    auto tok = ClipTokenizer::Load(dir_.string());
    EXPECT_TRUE(tok.ok()) << tok.status().ToString();
    if (!tok.ok()) throw std::runtime_error(tok.status().ToString());
    return std::move(tok).value();
  }
  core::Status LoadError() {
    auto tok = ClipTokenizer::Load(dir_.string());
    return tok.ok() ? core::Status::Ok() : tok.status();
  }

  fs::path dir_;
};

constexpr const char* kHandVocab =
    R"({"<|startoftext|>": 0, "<|endoftext|>": 1, "h": 2, "e": 3, "l": 4, "o</w>": 5,)"
    R"( "he": 6, "ll": 7, "hell": 8, "hello</w>": 9, "x": 10, "y": 11, "z</w>": 12, "xy": 13,)"
    R"( "yz</w>": 14, "a": 15, "a</w>": 16, "aa": 17, "l</w>": 18})";

TEST_F(HandWrittenTokenizerTest, AppliesLowestRankFirstAndMarksWordEnds) {
  Write(kHandVocab, "#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\na a\n");
  const ClipTokenizer tok = Load();
  EXPECT_EQ(tok.vocab_size(), 19);
  EXPECT_EQ(tok.Tokenize("hello"), (std::vector<int32_t>{9}));
  EXPECT_EQ(tok.Tokenize("HELLO hello"), (std::vector<int32_t>{9, 9}));
  // "l l</w>" is not "l l": the last l carries the end-of-word marker.
  EXPECT_EQ(tok.Tokenize("hell"), (std::vector<int32_t>{6, 4, 18}));
  // Every occurrence of a pair merges in one left-to-right pass: a a a</w> -> aa a</w>.
  EXPECT_EQ(tok.Tokenize("aaa"), (std::vector<int32_t>{17, 16}));
  EXPECT_EQ(tok.Tokenize("aaaa"), (std::vector<int32_t>{17, 15, 16}));
  // Symbols without a vocabulary entry become the unknown token (<|endoftext|>).
  EXPECT_EQ(tok.Tokenize("hq"), (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(tok.Encode("hello", 4), (std::vector<int32_t>{0, 9, 1, 1}));
}

TEST_F(HandWrittenTokenizerTest, RepeatedMergeKeepsItsLastRank) {
  Write(kHandVocab, "#version: 0.2\nx y\ny z</w>\n");
  EXPECT_EQ(Load().Tokenize("xyz"), (std::vector<int32_t>{13, 12}));
  Write(kHandVocab, "#version: 0.2\nx y\ny z</w>\nx y\n");
  EXPECT_EQ(Load().Tokenize("xyz"), (std::vector<int32_t>{10, 14}));
}

TEST_F(HandWrittenTokenizerTest, ReadsSpecialTokensFromBothFiles) {
  Write(kHandVocab, "#version: 0.2\n");
  // special_tokens_map.json wins over tokenizer_config.json, as in transformers.
  WriteFile(dir_ / "tokenizer_config.json",
            R"({"pad_token": "x", "bos_token": {"content": "h", "lstrip": false}})");
  WriteFile(dir_ / "special_tokens_map.json",
            R"({"pad_token": {"content": "y"}, "unk_token": null})");
  const ClipTokenizer tok = Load();
  EXPECT_EQ(tok.pad_id(), 11);
  EXPECT_EQ(tok.bos_id(), 2);
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_EQ(tok.unk_id(), 1);
  EXPECT_EQ(tok.Encode("", 4), (std::vector<int32_t>{2, 1, 11, 11}));
}

TEST_F(HandWrittenTokenizerTest, ReportsMissingFilesAsNotFound) {
  core::Status s = LoadError();
  EXPECT_EQ(s.code(), core::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("vocab.json"), std::string::npos) << s.message();
  WriteFile(dir_ / "vocab.json", kHandVocab);
  s = LoadError();
  EXPECT_EQ(s.code(), core::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("merges.txt"), std::string::npos) << s.message();
}

TEST_F(HandWrittenTokenizerTest, ReportsMalformedFilesAsInvalidArgument) {
  const struct {
    std::string vocab, merges, config, special, file, what;
  } kCases[] = {
      {"{not json", "", "", "", "vocab.json", "invalid JSON"},
      {"[1, 2]", "", "", "", "vocab.json", "expected a JSON object"},
      {R"({"<|endoftext|>": "1"})", "", "", "", "vocab.json", "'<|endoftext|>'"},
      {R"({"<|endoftext|>": -1})", "", "", "", "vocab.json", "non-negative"},
      {R"({"<|endoftext|>": 1})", "", "", "", "vocab.json", "bos_token '<|startoftext|>'"},
      {kHandVocab, "#version: 0.2\nh e\nl l l\n", "", "", "merges.txt", "line 3"},
      {kHandVocab, "#version: 0.2\nh e\n\nl l\n", "", "", "merges.txt", "line 3"},
      {kHandVocab, "", R"({"pad_token": "!"})", "", "tokenizer_config.json", "pad_token '!'"},
      {kHandVocab, "", "", R"({"pad_token": 3})", "special_tokens_map.json", "pad_token must"},
      {kHandVocab, "", "", R"({"eos_token": {"id": 3}})", "special_tokens_map.json",
       "eos_token must"},
      {kHandVocab, "", "{", "", "tokenizer_config.json", "invalid JSON"},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.what);
    fs::remove(dir_ / "tokenizer_config.json");
    fs::remove(dir_ / "special_tokens_map.json");
    Write(c.vocab, c.merges);
    if (!c.config.empty()) WriteFile(dir_ / "tokenizer_config.json", c.config);
    if (!c.special.empty()) WriteFile(dir_ / "special_tokens_map.json", c.special);
    const core::Status s = LoadError();
    EXPECT_EQ(s.code(), core::StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find(c.file), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(c.what), std::string::npos) << s.message();
  }
}

TEST_F(HandWrittenTokenizerTest, MergesWithoutHeaderOrWithCrLfStillLoad) {
  Write(kHandVocab, "h e\r\nl l\r\nhe ll\r\nhell o</w>\r\n\r\n");
  EXPECT_EQ(Load().Tokenize("hello"), (std::vector<int32_t>{9}));
}

}  // namespace
}  // namespace megaserve::diffusion
