// SentencePiece-style tokenizer for `tokenizer.ggml.model = "llama"` vocabs (Llama 2, Mistral
// v0.1, TinyLlama, the stories models): spaces become U+2581 "▁", an optional "▁" is prefixed to
// text that starts the input or follows a special token, and adjacent symbols are merged greedily
// by the score of the token they form (highest first, leftmost on ties) until no adjacent pair is
// a token. Characters that end up in no token fall back to their bytes' <0xXX> tokens. The result
// matches llama.cpp's SPM tokenizer token for token.
//
// Thread safety: the returned tokenizer is immutable; Encode/Decode may run concurrently.
#pragma once

#include <memory>

#include "base/status.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace kvstash::engine {

// `vocab.kind` must be kSpm; the vocab is assumed validated by Tokenizer::Create.
Result<std::unique_ptr<Tokenizer>> CreateSpmTokenizer(Vocab vocab);

}  // namespace kvstash::engine
