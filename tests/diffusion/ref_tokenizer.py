"""Reference CLIP tokenizer in plain Python, the expected output for clip_tokenizer_test.cc.

Written independently of the C++ ClipTokenizer from the published algorithm (Radford et al.
2021, "Learning Transferable Visual Models From Natural Language Supervision"; byte-level BPE
of GPT-2, Radford et al. 2019), with the conventions of Hugging Face's CLIPTokenizer:

  1. clean: runs of whitespace (str.isspace) become one space, the ends are stripped, then
     str.lower() (full Unicode lower-casing, Greek final sigma included);
  2. split with CLIP's pattern
       <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+
     (case-insensitive), classifying characters with unicodedata.category;
  3. each piece's UTF-8 bytes become printable characters (GPT-2's bytes_to_unicode), the last
     one gets the "</w>" end-of-word marker, and merges.txt pairs are applied lowest rank first;
  4. ids: BOS, the first max_length - 2 tokens, EOS, then the pad id up to max_length.

Not done (nor by the C++ tokenizer): ftfy's text repairs and Unicode normalisation (the input is
taken as it comes; prompts are normally NFC already).

Usage:
  ref_tokenizer.py TOKENIZER_DIR PROMPTS_JSON OUT_JSON
      PROMPTS_JSON: {"prompts": [str, ...], "max_length": 77}
      OUT_JSON: {"encoded": [[id] * max_length, ...], "tokens": [[id, ...], ...]} where "tokens"
      are the ids of each prompt without BOS/EOS, truncation or padding.
  ref_tokenizer.py --cxx-tables
      prints the Unicode tables of clip_tokenizer.cc (letters, numbers, cased, case-ignorable,
      lower-case mapping), derived from this Python's unicodedata.
"""
import json
import os
import re
import sys
import unicodedata

# Hugging Face reads at most this many merges: the CLIP vocabulary (49408) less the 2 * 256
# byte symbols and the 2 special tokens.
MAX_MERGES = 49152 - 256 - 2

SPECIALS = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def byte_alphabet():
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to
    themselves, the other 68 to U+0100 onwards in byte order."""
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


def _token_content(value):
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().strip().split("\n")
        if lines and lines[0].startswith("#"):
            lines = lines[1:]
        self.ranks = {}
        for rank, line in enumerate(lines[:MAX_MERGES]):
            a, b = line.split()
            self.ranks[(a, b)] = rank
        tokens = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        # special_tokens_map.json overrides tokenizer_config.json, as in transformers.
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
                for key in tokens:
                    content = _token_content(config.get(key))
                    if content is not None:
                        tokens[key] = content
        self.bos = self.vocab[tokens["bos_token"]]
        self.eos = self.vocab[tokens["eos_token"]]
        self.unk = self.vocab[tokens["unk_token"]]
        self.pad = self.vocab[tokens["pad_token"]]
        self.alphabet = byte_alphabet()
        self.cache = {}

    def bpe(self, piece):
        """The BPE symbols of one pre-token (a str of byte characters)."""
        if piece in self.cache:
            return self.cache[piece]
        symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(symbols) > 1:
            best = None
            for pair in zip(symbols, symbols[1:]):
                rank = self.ranks.get(pair)
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, pair)
            if best is None:
                break
            first, second = best[1]
            merged = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[piece] = symbols
        return symbols

    def tokenize(self, text):
        """Token ids of `text` without BOS/EOS, truncation or padding."""
        ids = []
        for piece in pre_tokenize(clean(text)):
            if piece in SPECIALS:
                ids.append(self.vocab.get(piece, self.unk))
                continue
            chars = "".join(self.alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab.get(s, self.unk) for s in self.bpe(chars))
        return ids

    def encode(self, text, max_length=77, tokens=None):
        """BOS + the first max_length - 2 tokens + EOS, padded to max_length; `tokens` may
        pass tokenize(text) when it is already known."""
        if tokens is None:
            tokens = self.tokenize(text)
        ids = [self.bos] + tokens[: max_length - 2] + [self.eos]
        return ids + [self.pad] * (max_length - len(ids))


def clean(text):
    return re.sub(r"\s+", " ", text).strip().lower()


def _is_letter(c):
    return unicodedata.category(c).startswith("L")


def _is_number(c):
    return unicodedata.category(c).startswith("N")


def _is_other(c):
    return not c.isspace() and not _is_letter(c) and not _is_number(c)


def pre_tokenize(text):
    """CLIP's regular expression as a hand-written scanner: the first alternative that matches
    at each position wins, whitespace between matches is skipped."""
    pieces = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        # The pattern is case-insensitive; after lower() only the long s still folds to 's'.
        folded = text[i:i + 15].replace("\u017f", "s")
        special = next((s for s in SPECIALS if folded.startswith(s)), None)
        if special is not None:
            # Only the exact text is the special token; a long-s variant is BPE-encoded.
            pieces.append(text[i:i + len(special)])
            i += len(special)
            continue
        if c == "'":
            rest = folded[1:3]
            suffix = next((s for s in CONTRACTIONS if rest.startswith(s)), None)
            if suffix is not None:
                pieces.append(text[i:i + 1 + len(suffix)])
                i += 1 + len(suffix)
                continue
        if _is_number(c):
            pieces.append(c)
            i += 1
            continue
        same_class = _is_letter if _is_letter(c) else _is_other
        j = i + 1
        while j < n and same_class(text[j]):
            j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _ranges(pred):
    out = []
    start = None
    for cp in range(0x110000):
        if pred(cp):
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def _emit(name, comment, rows):
    print(f"// {comment}")
    print(f"constexpr {name} = {{")
    line = ""
    for row in rows:
        if line and len(line) + len(row) + 2 > 96:
            print("    " + line)
            line = ""
        line += (" " if line else "") + row + ","
    print("    " + line)
    print("};")
    print()


def cxx_tables():
    """Prints the C++ tables; the sigma probes read Python's own Cased and Case_Ignorable
    properties through str.lower()'s final-sigma rule."""
    cat = [unicodedata.category(chr(c)) for c in range(0x110000)]
    cased = [(chr(c) + "\u03a3").lower()[-1] == "\u03c2" for c in range(0x110000)]
    ignorable = [("A" + chr(c) + "\u03a3").lower()[-1] == "\u03c2" and not cased[c]
                 for c in range(0x110000)]
    hexr = lambda r: "{0x%X,0x%X}" % r
    print(f"// Generated by tests/diffusion/ref_tokenizer.py --cxx-tables from Python "
          f"{sys.version.split()[0]}'s\n// unicodedata (Unicode {unicodedata.unidata_version}).")
    print("// clang-format off")
    _emit("CodeRange kLetters[]", "General category L*: CLIP's \\p{L}.",
          [hexr(r) for r in _ranges(lambda c: cat[c][0] == "L")])
    _emit("CodeRange kNumbers[]", "General category N*: CLIP's \\p{N}.",
          [hexr(r) for r in _ranges(lambda c: cat[c][0] == "N")])
    _emit("CodeRange kCased[]", "Cased and not Case_Ignorable (for the final-sigma rule).",
          [hexr(r) for r in _ranges(lambda c: cased[c])])
    _emit("CodeRange kCaseIgnorable[]", "Case_Ignorable (for the final-sigma rule).",
          [hexr(r) for r in _ranges(lambda c: ignorable[c])])
    runs = []
    for c in range(0x110000):
        if c in (0x130, 0x3A3):  # two-character result / context-dependent: handled in code
            continue
        lower = chr(c).lower()
        if lower == chr(c):
            continue
        assert len(lower) == 1, hex(c)
        delta = ord(lower) - c
        if runs and runs[-1][2] == delta:
            first, last, _, stride = runs[-1]
            if first == last and c - last in (1, 2):
                runs[-1] = [first, c, delta, c - last]
                continue
            if c - last == stride:
                runs[-1][1] = c
                continue
        runs.append([c, c, delta, 1])
    _emit("LowerRun kLower[]",
          "str.lower() as runs {first, last, delta, stride}: every stride-th code point from "
          "first\n// to last maps to itself plus delta.",
          ["{0x%X,0x%X,%d,%d}" % tuple(r) for r in runs])
    print("// clang-format on")


def main(argv):
    if argv[1:] == ["--cxx-tables"]:
        cxx_tables()
        return 0
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    tok = Tokenizer(argv[1])
    with open(argv[2], encoding="utf-8") as f:
        request = json.load(f)
    max_length = request.get("max_length", 77)
    prompts = request["prompts"]
    tokens = [tok.tokenize(p) for p in prompts]
    result = {"encoded": [tok.encode(p, max_length, t) for p, t in zip(prompts, tokens)],
              "tokens": tokens}
    with open(argv[3], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
