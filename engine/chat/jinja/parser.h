// Jinja parser: tokens (lexer.h) to a syntax tree (ast.h), following jinja2's grammar and
// operator precedence (jinja2/parser.py). Constructs outside the supported subset (include,
// import, extends, block, recursive loops, ...) are rejected with an error naming them.
//
// Thread safety: Parse() is a pure function.
#pragma once

#include <string_view>

#include "engine/chat/jinja/ast.h"

namespace kvstash::engine::jinja {

// Throws JinjaError with line and column on syntax errors and unsupported constructs.
Body ParseTemplate(std::string_view source);

// Throws JinjaError for a filter or test name unknown to jinja2 outside an `if` or conditional
// expression (names.cc). `soft`: whether `s` sits in such a frame. Called by ParseTemplate.
void CheckNames(const Stmt& s, bool soft);

}  // namespace kvstash::engine::jinja
