// Text <-> token ids. One implementation per TokenizerKind; Create() picks it from the Vocab.
// Encode/Decode are const and thread-safe (implementations may keep internal caches guarded
// for concurrent use).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/tokenizer/vocab.h"

namespace kvstash::engine {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  static Result<std::unique_ptr<Tokenizer>> Create(Vocab vocab);

  // Encodes UTF-8 text. `add_bos` prepends BOS when the vocab has one. With `parse_special`,
  // control/user-defined token strings in the text ("<|im_start|>") map to their ids; without
  // it they are tokenized as plain text.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                                      bool parse_special) const = 0;
  // The bytes one token stands for (byte tokens decoded, SPM "▁" → " "). Control tokens give
  // their text only when `render_special`.
  virtual std::string TokenToPiece(int32_t id, bool render_special) const = 0;
  // Concatenated pieces; strips the SPM leading space after BOS like llama.cpp does.
  virtual std::string Decode(std::span<const int32_t> ids, bool render_special) const = 0;

  virtual const Vocab& vocab() const = 0;
  bool IsEog(int32_t id) const;  // EOS or EOT
};

}  // namespace kvstash::engine
