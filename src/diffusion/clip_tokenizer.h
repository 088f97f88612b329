// The CLIP text tokenizer (Radford et al. 2021, "Learning Transferable Visual Models From Natural
// Language Supervision"): GPT-2's byte-level BPE with an end-of-word marker, as Stable Diffusion's
// text encoders use it. Reads a Hugging Face `tokenizer/` folder (vocab.json, merges.txt and the
// special tokens) and turns a prompt into the fixed-length id sequence that
// CLIPTokenizer(padding="max_length", truncation=True, max_length=77) produces.
//
// Algorithm (details in clip_tokenizer.cc):
//   1. clean: decode UTF-8, collapse whitespace runs to one space, strip the ends, lower-case;
//   2. split with CLIP's pattern  <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|
//      [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+  (Unicode letters and numbers);
//   3. map each piece's UTF-8 bytes to GPT-2's printable byte characters, mark the last symbol
//      with "</w>" and apply merges.txt's pairs, lowest rank first;
//   4. BOS + the first max_length - 2 tokens + EOS, padded with the pad token.
// Not done: ftfy's repair of mis-decoded text and Unicode normalisation; text is used as given.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace megaserve::diffusion {

class ClipTokenizer {
 public:
  // Reads `dir`/vocab.json and `dir`/merges.txt (its first line, a "#version" header, is
  // skipped; like transformers, at most 48,894 merges are used), and the special tokens from
  // `dir`/tokenizer_config.json then `dir`/special_tokens_map.json when present (either may hold
  // bos_token, eos_token, unk_token, pad_token as a string or as {"content": ...}; defaults are
  // <|startoftext|>, <|endoftext|>, <|endoftext|>, <|endoftext|>). Errors name the file:
  // kNotFound when vocab.json or merges.txt is missing, kInvalidArgument when a file is
  // malformed or a special token is not in the vocabulary.
  static core::Result<ClipTokenizer> Load(const std::string& dir);

  ClipTokenizer(ClipTokenizer&&) noexcept;
  ClipTokenizer& operator=(ClipTokenizer&&) noexcept;
  ~ClipTokenizer();

  // The ids the text encoder takes: BOS, the prompt's tokens truncated to max_length - 2, EOS,
  // then pad ids up to exactly max_length entries. Invalid UTF-8 bytes read as U+FFFD. Throws
  // std::invalid_argument when max_length < 2. Thread-safe.
  std::vector<int32_t> Encode(std::string_view text, int max_length = 77) const;

  // The prompt's token ids alone: no BOS/EOS, truncation or padding. Thread-safe.
  std::vector<int32_t> Tokenize(std::string_view text) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }
  // Ids of symbols that are not in vocab.json (never for a consistent vocabulary).
  int32_t unk_id() const { return unk_id_; }
  // The number of entries in vocab.json.
  int32_t vocab_size() const { return static_cast<int32_t>(vocab_.size()); }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;  // symbol id of the merged pair
  };
  struct WordCache;

  ClipTokenizer();
  // Appends the ids of `text`'s tokens to `ids`, stopping once it holds `limit` ids.
  void AppendTokens(std::string_view text, std::size_t limit, std::vector<int32_t>& ids) const;
  // Appends the vocabulary ids of one pre-token's BPE symbols (UTF-8 bytes of the piece).
  void AppendWord(std::string_view piece, std::vector<int32_t>& ids) const;
  int32_t InternSymbol(const std::string& symbol);

  std::unordered_map<std::string, int32_t> vocab_;
  // BPE works on symbol ids: every string that occurs in merges.txt or as a byte character, with
  // or without "</w>". symbol_vocab_ maps each to its vocabulary id (unk_id_ when absent).
  std::unordered_map<std::string, int32_t> symbol_ids_;
  std::vector<int32_t> symbol_vocab_;
  std::unordered_map<uint64_t, Merge> merges_;     // key: left symbol << 32 | right symbol
  std::array<int32_t, 256> byte_symbol_{};         // byte character
  std::array<int32_t, 256> byte_end_symbol_{};     // byte character + "</w>"
  int32_t startoftext_id_ = 0, endoftext_id_ = 0;  // the pattern's literal special tokens
  int32_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = 0;
  std::unique_ptr<WordCache> cache_;  // BPE results per piece, bounded
};

}  // namespace megaserve::diffusion
