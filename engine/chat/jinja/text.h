// UTF-8 and Unicode helpers for the Jinja interpreter, with Python's str semantics: code points
// (not bytes) for lengths and indices, str.isspace()/isprintable() classes, full case mapping.
// Invalid UTF-8 decodes to U+FFFD per bad byte. Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvstash::engine::jinja {

std::vector<char32_t> DecodeUtf8(std::string_view s);
void AppendUtf8(std::string* out, char32_t cp);
std::string EncodeUtf8(const std::vector<char32_t>& cps);
size_t CodePointCount(std::string_view s);
bool IsPySpace(char32_t cp);    // str.isspace()
bool IsPrintable(char32_t cp);  // str.isprintable()
bool IsAlnumWord(char32_t cp);  // regex \w
std::string PyLower(std::string_view s);
std::string PyUpper(std::string_view s);
// str.capitalize() (first character title-cased, the rest lower-cased).
std::string Capitalize(std::string_view s);
// str.strip/lstrip/rstrip; `chars` null: whitespace.
std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right);

}  // namespace kvstash::engine::jinja
