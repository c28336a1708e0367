// Writes a Vocab as the tokenizer.* keys of a GGUF file (the inverse of Vocab::FromGguf), so
// kvstash-mkmodel can give synthetic models a real tokenizer imported from tokenizer.json.
#pragma once

#include "engine/gguf/gguf_writer.h"
#include "engine/tokenizer/vocab.h"

namespace kvstash::engine {

// Adds tokenizer.ggml.{model, pre, tokens, scores, token_type, merges, *_token_id, add_*} and
// tokenizer.chat_template (when non-empty). Returns the token count.
int64_t AddVocabToGguf(GgufWriter& w, const Vocab& v);

}  // namespace kvstash::engine
