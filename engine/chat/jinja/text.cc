// UTF-8 and Unicode helpers with Python's str semantics (text.h). Character classes and case
// mapping come from ICU (libicuuc), as in engine/tokenizer/unicode.cc.
#include "engine/chat/jinja/text.h"

#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <cctype>

namespace kvstash::engine::jinja {

std::vector<char32_t> DecodeUtf8(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    auto b0 = static_cast<unsigned char>(s[i]);
    size_t len = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    char32_t cp = len == 1 ? b0 : (b0 & (0x7F >> len));
    bool ok = true;
    for (size_t k = 1; k < len; ++k) {
      auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (b & 0x3F);
    }
    if (!ok) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

void AppendUtf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string EncodeUtf8(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t cp : cps) AppendUtf8(&out, cp);
  return out;
}

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

bool IsPySpace(char32_t cp) {
  if (cp >= 0x09 && cp <= 0x0D) return true;
  if (cp >= 0x1C && cp <= 0x20) return true;
  if (cp == 0x85 || cp == 0xA0 || cp == 0x1680) return true;
  if (cp >= 0x2000 && cp <= 0x200A) return true;
  return cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool IsPrintable(char32_t cp) {
  if (cp == U' ') return true;
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

bool IsAlnumWord(char32_t cp) {
  return cp == U'_' || u_isalnum(static_cast<UChar32>(cp)) ||
         u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_ALPHABETIC) ||
         u_charType(static_cast<UChar32>(cp)) == U_OTHER_NUMBER ||
         u_charType(static_cast<UChar32>(cp)) == U_LETTER_NUMBER;
}

namespace {

std::string CaseMap(std::string_view s, bool upper) {
  // Fast path: ASCII.
  bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return (c & 0x80) == 0; });
  if (ascii) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(upper ? std::toupper(c) : std::tolower(c));
    return out;
  }
  std::vector<UChar> src;
  for (char32_t cp : DecodeUtf8(s)) {
    if (cp >= 0x10000) {
      src.push_back(static_cast<UChar>(0xD800 + ((cp - 0x10000) >> 10)));
      src.push_back(static_cast<UChar>(0xDC00 + ((cp - 0x10000) & 0x3FF)));
    } else {
      src.push_back(static_cast<UChar>(cp));
    }
  }
  std::vector<UChar> dst(src.size() * 3 + 16);
  UErrorCode err = U_ZERO_ERROR;
  int32_t n = upper ? u_strToUpper(dst.data(), static_cast<int32_t>(dst.size()), src.data(),
                                   static_cast<int32_t>(src.size()), "", &err)
                    : u_strToLower(dst.data(), static_cast<int32_t>(dst.size()), src.data(),
                                   static_cast<int32_t>(src.size()), "", &err);
  if (U_FAILURE(err)) return std::string(s);
  std::string out;
  for (int32_t k = 0; k < n; ++k) {
    char32_t cp = dst[k];
    if (cp >= 0xD800 && cp < 0xDC00 && k + 1 < n) {
      cp = 0x10000 + ((cp - 0xD800) << 10) + (dst[k + 1] - 0xDC00);
      ++k;
    }
    AppendUtf8(&out, cp);
  }
  return out;
}

}  // namespace

std::string PyLower(std::string_view s) { return CaseMap(s, false); }
std::string PyUpper(std::string_view s) { return CaseMap(s, true); }

std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::vector<char32_t> cps = DecodeUtf8(s);
  std::vector<char32_t> set;
  if (chars) set = DecodeUtf8(*chars);
  auto strip_it = [&](char32_t cp) {
    return chars ? std::find(set.begin(), set.end(), cp) != set.end() : IsPySpace(cp);
  };
  size_t b = 0, e = cps.size();
  if (left) {
    while (b < e && strip_it(cps[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(cps[e - 1])) --e;
  }
  if (b == 0 && e == cps.size()) return std::string(s);
  return EncodeUtf8(std::vector<char32_t>(cps.begin() + b, cps.begin() + e));
}

std::string Capitalize(std::string_view s) {
  std::vector<char32_t> cps = DecodeUtf8(s);
  if (cps.empty()) return "";
  std::string out;
  AppendUtf8(&out, static_cast<char32_t>(u_totitle(static_cast<UChar32>(cps[0]))));
  out += PyLower(EncodeUtf8(std::vector<char32_t>(cps.begin() + 1, cps.end())));
  return out;
}

}  // namespace kvstash::engine::jinja
