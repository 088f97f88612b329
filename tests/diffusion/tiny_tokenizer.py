"""Writes a tiny CLIP tokenizer folder in the Hugging Face layout, for tests.

The files have the real format (vocab.json, merges.txt with its "#version" header,
special_tokens_map.json, tokenizer_config.json) and the real vocabulary layout: the 256 byte
characters of GPT-2's byte-level alphabet, the same 256 with the "</w>" end-of-word marker, one
entry per learnt merge, then <|startoftext|> and <|endoftext|>. The merges are learnt with BPE
(Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units") on a small
corpus of image prompts, so common words ("a", "photo", "of", "the") become single tokens. With
100 merges the vocabulary has 614 entries: it fits the shared tiny text encoder (vocab_size 1000).

Usage: tiny_tokenizer.py FOLDER [PAD_TOKEN]
"""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_tokenizer  # noqa: E402

CORPUS = """
a photo of a cat sitting on the table
a photo of a dog running in the park
a painting of a mountain landscape at sunset, oil on canvas
an astronaut riding a horse on the moon, highly detailed
a portrait of a woman with red hair, digital art
the city at night in the rain, cinematic lighting
a bowl of fruit on a wooden table, still life painting
a castle on a hill under the stars, fantasy art
a close up photo of a flower in the garden
a watercolor painting of the sea and the boats
a robot reading a book in the library
a red car on the street of an old town
"""

NUM_MERGES = 100


def _vocab_order(alphabet):
    """The byte characters in GPT-2's order: printable bytes first, then the remapped ones;
    both are ascending in the character's code point."""
    return sorted(alphabet.values(), key=ord)


def learn_merges(corpus, num_merges):
    """Greedy BPE: repeatedly merges the most frequent adjacent pair (ties: the smallest pair)."""
    tok_alphabet = ref_tokenizer.byte_alphabet()
    words = collections.Counter()
    for piece in ref_tokenizer.pre_tokenize(ref_tokenizer.clean(corpus)):
        chars = "".join(tok_alphabet[b] for b in piece.encode("utf-8"))
        words[tuple(chars[:-1]) + (chars[-1] + "</w>",)] += 1
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = collections.Counter()
        for word, count in words.items():
            out = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def _added_token(content):
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": True}


def write(folder, pad="<|endoftext|>", num_merges=NUM_MERGES):
    """Writes vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json into
    `folder` (created if needed). `pad` is the padding token: "<|endoftext|>" like Stable
    Diffusion 1.x, or "!" (id 0) like Stable Diffusion 2.x."""
    os.makedirs(folder, exist_ok=True)
    letters = _vocab_order(ref_tokenizer.byte_alphabet())
    tokens = letters + [c + "</w>" for c in letters]
    merges = learn_merges(CORPUS, num_merges)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens) < 1000
    if pad not in vocab:
        raise ValueError(f"pad token {pad!r} is not in the vocabulary")
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    specials = {"bos_token": _added_token("<|startoftext|>"),
                "eos_token": _added_token("<|endoftext|>"),
                "unk_token": _added_token("<|endoftext|>"), "pad_token": pad}
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(specials, f, indent=2)
    config = dict(specials, add_prefix_space=False, do_lower_case=True, errors="replace",
                  model_max_length=77, tokenizer_class="CLIPTokenizer")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return vocab


def write_tiny(folder, seed=0, pad="<|endoftext|>", **overrides):
    """The shared tiny-pipeline entry point: writes the tokenizer files into `folder` itself
    (pass the pipeline's "tokenizer" sub-folder). The tokenizer is deterministic, so `seed` is
    accepted for the common signature and unused; `num_merges` may be overridden."""
    return write(folder, pad=pad, **overrides)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    write(sys.argv[1], *sys.argv[2:])
