// Jinja lexer: splits template source into data text and the tokens inside {{ }} / {% %},
// applying the whitespace rules of Hugging Face's chat-template environment exactly as jinja2's
// lexer does: trim_blocks (drop the newline after a block or comment tag), lstrip_blocks (drop
// spaces/tabs before a block or comment tag that starts its line), `-` and `+` modifiers,
// {% raw %}, comments, newline normalisation and the removal of one trailing newline.
//
// Thread safety: Tokenize() is a pure function.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvstash::engine::jinja {

enum class TokenKind : uint8_t {
  kData,        // literal template text
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // value: the unescaped literal
  kInt,
  kFloat,
  kOp,  // value: the operator text
  kEof,
};

struct Token {
  TokenKind kind;
  std::string value;
  int line = 1;
  int col = 1;
};

// Throws JinjaError (caught by Template::Parse) on malformed input: an unterminated tag, comment,
// string or raw block, an unexpected character, unbalanced brackets.
std::vector<Token> Tokenize(std::string_view source);

}  // namespace kvstash::engine::jinja
