// Converts a Hugging Face tokenizer (tokenizer.json plus, optionally, tokenizer_config.json) into
// the Vocab a GGUF file would carry, so a model's tokenizer can be used without a GGUF.
//
// Supported: byte-level BPE models (GPT-2, Llama 3, Qwen2/2.5/3, SmolLM/StarCoder). The mapping
// follows llama.cpp's convert_hf_to_gguf.py:
//   - tokens: model.vocab by id plus added_tokens; id gaps become "[PAD<id>]" of type Unused.
//   - types: an added token with "special": true, or one that looks like a control token
//     ("<|...|>"), is Control; any other added token is UserDefined; the rest are Normal.
//   - merges: "a b" strings or ["a", "b"] pairs; model.ignore_merges is kept.
//   - pre: the Split regex of the pre_tokenizer picks "llama-bpe", "qwen2" or "gpt-2"; a plain
//     ByteLevel pre-tokenizer (its built-in regex) is "gpt-2"; Digits(individual) + ByteLevel is
//     "smollm". Anything else is Incompatible, naming the pattern.
//   - normalize_nfc when the normalizer is NFC (alone or in a Sequence).
//   - from tokenizer_config.json: bos/eos/unk/pad tokens (string or {"content": ...}),
//     add_bos_token/add_eos_token, chat_template (string, or the "default" entry of a list).
//     Without add_bos_token, BOS is added when the post_processor template starts with it, and
//     for the Llama 3 family (llama.cpp's default).
//   - eot: the first of <|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>, <EOT> in the vocab.
// JSON errors are returned as InvalidArgument naming the file and the offending field; no
// exception escapes. Thread-safe (pure functions).
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"
#include "engine/tokenizer/vocab.h"

namespace kvstash::engine {

// `tokenizer_config_json` may be empty (no config file).
Result<Vocab> VocabFromHfJson(std::string_view tokenizer_json,
                              std::string_view tokenizer_config_json);

// Reads `tokenizer_json_path` and, when it exists, tokenizer_config.json in the same directory.
Result<Vocab> LoadHfVocab(const std::string& tokenizer_json_path);

}  // namespace kvstash::engine
