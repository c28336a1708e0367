// Jinja lexer (lexer.h). jinja2 lexes with regular expressions; this is a hand-written scanner
// that makes the same decisions at the same places. The two rules that decide most whitespace in
// chat templates are (jinja2/lexer.py, tokeniter):
//  - before a tag: `{%-` rstrips the preceding text; otherwise, for block and comment tags only,
//    lstrip_blocks removes spaces/tabs between the last newline (or the start of a line) and the
//    tag;
//  - after a tag: `-%}` / `-}}` / `-#}` skip all following whitespace; a plain `%}` or `#}`
//    swallows one following '\n' (trim_blocks); `+%}` keeps it.
#include "engine/chat/jinja/lexer.h"

#include <cstring>

#include "engine/chat/jinja/value.h"

namespace kvstash::engine::jinja {
namespace {

// Python's str.isspace() for the ASCII range plus any non-ASCII whitespace in UTF-8 form.
// Returns the byte length of the whitespace character at s[i], or 0.
size_t SpaceLen(std::string_view s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
  if (c < 0x80) return 0;
  std::vector<char32_t> cp = DecodeUtf8(s.substr(i, 4));
  if (cp.empty() || !IsPySpace(cp[0])) return 0;
  return cp[0] < 0x800 ? 2 : (cp[0] < 0x10000 ? 3 : 4);
}

// text.rstrip() (Unicode whitespace).
std::string_view RStripSpace(std::string_view text) {
  std::vector<char32_t> cps = DecodeUtf8(text);
  size_t bytes = text.size();
  for (size_t k = cps.size(); k > 0 && IsPySpace(cps[k - 1]); --k) {
    char32_t c = cps[k - 1];
    bytes -= c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return text.substr(0, bytes);
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) : src_(src) {
    for (size_t k = 0; k < src_.size(); ++k) {
      if (src_[k] == '\n') newlines_.push_back(k);
    }
  }

  std::vector<Token> Run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = FindTagStart(pos_);
      if (tag == std::string_view::npos) {
        Emit(TokenKind::kData, std::string(src_.substr(pos_)), pos_);
        break;
      }
      std::string_view text = src_.substr(pos_, tag - pos_);
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = tag + 2 < src_.size() ? src_[tag + 2] : 0;
      bool is_raw = kind == '%' && MatchRawBegin(tag);
      text = StripBefore(text, sign, kind != '{', line_starting);
      if (!text.empty()) Emit(TokenKind::kData, std::string(text), pos_);
      size_t after = tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (is_raw) {
        line_starting = LexRaw(tag);
      } else if (kind == '#') {
        line_starting = LexComment(tag, after);
      } else {
        line_starting = LexTag(tag, after, kind == '%');
      }
    }
    Emit(TokenKind::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t FindTagStart(size_t from) const {
    for (size_t k = src_.find('{', from); k != std::string_view::npos; k = src_.find('{', k + 1)) {
      if (k + 1 < src_.size() && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) {
        return k;
      }
    }
    return std::string_view::npos;
  }

  std::string_view StripBefore(std::string_view text, char sign, bool is_block,
                               bool line_starting) const {
    if (sign == '-') return RStripSpace(text);
    if (sign == '+' || !is_block) return text;
    size_t nl = text.rfind('\n');
    size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting) return text;
    if (l_pos == text.size()) return text;
    for (size_t k = l_pos; k < text.size();) {
      size_t n = SpaceLen(text, k);
      if (n == 0) return text;
      k += n;
    }
    return text.substr(0, l_pos);
  }

  size_t SkipSpace(size_t p) const {
    while (p < src_.size()) {
      size_t n = SpaceLen(src_, p);
      if (n == 0) break;
      p += n;
    }
    return p;
  }

  bool StartsWith(size_t p, std::string_view s) const { return src_.substr(p, s.size()) == s; }

  // `{%[-+]?\s*raw\s*(-%}|%})`
  bool MatchRawBegin(size_t tag) const {
    size_t p = tag + 2;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    p = SkipSpace(p);
    if (!StartsWith(p, "raw")) return false;
    p = SkipSpace(p + 3);
    return StartsWith(p, "-%}") || StartsWith(p, "%}");
  }

  // Returns the position after the tag end if `p` starts one (handling -, + and trim_blocks).
  size_t MatchEnd(size_t p, char close, bool trim) const {
    const std::string end{close, '}'};
    if (close != '}' && src_[p] == '+' && src_.substr(p + 1, 2) == end) return p + 3;
    if (src_[p] == '-' && src_.substr(p + 1, 2) == end) return SkipSpace(p + 3);
    if (src_.substr(p, 2) == end) {
      p += 2;
      if (trim && p < src_.size() && src_[p] == '\n') ++p;
      return p;
    }
    return std::string_view::npos;
  }

  bool LexRaw(size_t tag) {
    size_t p = SkipSpace(tag + 2 + ((src_[tag + 2] == '-' || src_[tag + 2] == '+') ? 1 : 0));
    p = SkipSpace(p + 3);
    p = src_[p] == '-' ? SkipSpace(p + 3) : p + 2;  // no trim_blocks after {% raw %}
    bool line_starting = p > 0 && src_[p - 1] == '\n';
    // Find `{%[-+]?\s*endraw\s*(+%}|-%}\s*|%}\n?)`.
    for (size_t k = src_.find("{%", p); k != std::string_view::npos; k = src_.find("{%", k + 1)) {
      size_t q = k + 2;
      char sign = src_[q] == '-' || src_[q] == '+' ? src_[q] : 0;
      if (sign) ++q;
      q = SkipSpace(q);
      if (!StartsWith(q, "endraw")) continue;
      q = SkipSpace(q + 6);
      size_t end = q < src_.size() ? MatchEnd(q, '%', true) : std::string_view::npos;
      if (end == std::string_view::npos) continue;
      std::string_view text = StripBefore(src_.substr(p, k - p), sign, true, line_starting);
      if (!text.empty()) Emit(TokenKind::kData, std::string(text), p);
      pos_ = end;
      return src_[end - 1] == '\n';
    }
    Error(tag, "missing end of raw directive");
  }

  bool LexComment(size_t tag, size_t p) {
    for (size_t k = src_.find("#}", p); k != std::string_view::npos; k = src_.find("#}", k + 1)) {
      size_t start = (k > p && (src_[k - 1] == '-' || src_[k - 1] == '+')) ? k - 1 : k;
      size_t end = MatchEnd(start, '#', true);
      if (end == std::string_view::npos) continue;
      pos_ = end;
      return src_[end - 1] == '\n';
    }
    Error(tag, "missing end of comment tag");
  }

  bool LexTag(size_t tag, size_t p, bool block) {
    Emit(block ? TokenKind::kBlockBegin : TokenKind::kVarBegin, "", tag);
    const char close = block ? '%' : '}';
    int balance = 0;
    while (true) {
      if (p >= src_.size())
        Error(tag, block ? "unexpected end of template inside a {% %} tag"
                         : "unexpected end of template inside a {{ }} tag");
      if (balance == 0) {
        size_t end = MatchEnd(p, close, block);
        if (end != std::string_view::npos) {
          Emit(block ? TokenKind::kBlockEnd : TokenKind::kVarEnd, "", p);
          pos_ = end;
          return src_[end - 1] == '\n';
        }
      }
      size_t n = SpaceLen(src_, p);
      if (n) {
        p += n;
        continue;
      }
      char c = src_[p];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        p = LexNumber(p);
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t q = p;
        while (q < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) {
          ++q;
        }
        Emit(TokenKind::kName, std::string(src_.substr(p, q - p)), p);
        p = q;
      } else if (c == '\'' || c == '"') {
        p = LexString(p);
      } else {
        static const char* kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "*",
                                     "/",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                     ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
        const char* op = nullptr;
        for (const char* o : kOps) {
          if (StartsWith(p, o)) {
            op = o;
            break;
          }
        }
        if (op == nullptr) Error(p, std::string("unexpected char '") + c + "'");
        if (*op == '(' || *op == '[' || *op == '{') ++balance;
        if (*op == ')' || *op == ']' || *op == '}') {
          if (balance == 0) Error(p, std::string("unexpected '") + op + "'");
          --balance;
        }
        Emit(TokenKind::kOp, op, p);
        p += std::strlen(op);
      }
    }
  }

  size_t Digits(size_t p) const {
    // (\d+_)*\d+
    size_t q = p;
    while (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) {
      ++q;
      if (q + 1 < src_.size() && src_[q] == '_' &&
          std::isdigit(static_cast<unsigned char>(src_[q + 1]))) {
        ++q;
      }
    }
    return q;
  }

  size_t LexNumber(size_t p) {
    size_t q = Digits(p);
    bool is_float = false;
    size_t r = q;
    if (r + 1 < src_.size() && src_[r] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[r + 1]))) {
      r = Digits(r + 1);
      is_float = true;
    }
    if (r < src_.size() && (src_[r] == 'e' || src_[r] == 'E')) {
      size_t s = r + 1;
      if (s < src_.size() && (src_[s] == '+' || src_[s] == '-')) ++s;
      if (s < src_.size() && std::isdigit(static_cast<unsigned char>(src_[s]))) {
        r = Digits(s);
        is_float = true;
      }
    }
    if (!is_float) r = q;
    std::string text;
    for (size_t k = p; k < r; ++k) {
      if (src_[k] != '_') text.push_back(src_[k]);
    }
    Emit(is_float ? TokenKind::kFloat : TokenKind::kInt, text, p);
    return r;
  }

  static int Hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // Python's unicode-escape decoding of the literal's body.
  size_t LexString(size_t p) {
    const char quote = src_[p];
    std::string out;
    size_t q = p + 1;
    while (true) {
      if (q >= src_.size()) Error(p, "unterminated string literal");
      char c = src_[q];
      if (c == quote) break;
      if (c != '\\') {
        out.push_back(c);
        ++q;
        continue;
      }
      if (q + 1 >= src_.size()) Error(p, "unterminated string literal");
      char e = src_[q + 1];
      q += 2;
      switch (e) {
        case '\n':
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '\'':
          out.push_back('\'');
          break;
        case '"':
          out.push_back('"');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'x':
        case 'u':
        case 'U': {
          int n = e == 'x' ? 2 : (e == 'u' ? 4 : 8);
          uint32_t cp = 0;
          for (int k = 0; k < n; ++k) {
            int h = q + k < src_.size() ? Hex(src_[q + k]) : -1;
            if (h < 0) Error(q, std::string("truncated \\") + e + " escape in string literal");
            cp = cp * 16 + h;
          }
          if (cp > 0x10FFFF) Error(q, "illegal Unicode character in string literal");
          q += n;
          AppendUtf8(&out, cp);
          break;
        }
        case 'N':
          Error(q, "\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = e - '0';
            for (int k = 0; k < 2 && q < src_.size() && src_[q] >= '0' && src_[q] <= '7'; ++k) {
              cp = cp * 8 + (src_[q++] - '0');
            }
            AppendUtf8(&out, cp);
          } else {
            out.push_back('\\');
            out.push_back(e);
          }
      }
    }
    Emit(TokenKind::kString, std::move(out), p);
    return q + 1;
  }

  void LineCol(size_t pos, int* line, int* col) const {
    size_t lo = 0, hi = newlines_.size();
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (newlines_[mid] < pos) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    *line = static_cast<int>(lo) + 1;
    *col = static_cast<int>(pos - (lo == 0 ? 0 : newlines_[lo - 1] + 1)) + 1;
  }

  void Emit(TokenKind kind, std::string value, size_t pos) {
    Token t{kind, std::move(value), 1, 1};
    LineCol(pos, &t.line, &t.col);
    tokens_.push_back(std::move(t));
  }

  [[noreturn]] void Error(size_t pos, std::string what) const {
    JinjaError e{std::move(what), 1, 1};
    LineCol(pos, &e.line, &e.col);
    throw e;
  }

  std::string_view src_;
  size_t pos_ = 0;
  std::vector<size_t> newlines_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> Tokenize(std::string_view source) {
  // Newlines (\r\n, \r, \n) become \n and one trailing newline is dropped
  // (keep_trailing_newline=False), as jinja2 does before lexing.
  std::string norm;
  norm.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      norm.push_back('\n');
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      norm.push_back(source[k]);
    }
  }
  if (!norm.empty() && norm.back() == '\n') norm.pop_back();
  return Lexer(norm).Run();
}

}  // namespace kvstash::engine::jinja
