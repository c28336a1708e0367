// Python str/dict/list methods that templates call, and the globals of the chat-template
// environment (range, dict, namespace, raise_exception, strftime_now) (interpreter.h). Methods
// follow CPython on code points; mutating methods are refused as ImmutableSandboxedEnvironment
// refuses them.
#include <unicode/uchar.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "engine/chat/jinja/interpreter.h"

namespace kvstash::engine::jinja {

namespace {

// str.title(): a cased character after an uncased one starts a word.
std::string PyTitle(std::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (char32_t cp : DecodeUtf8(s)) {
    auto c = static_cast<UChar32>(cp);
    std::string one;
    AppendUtf8(&one, cp);
    if (prev_cased) {
      out += PyLower(one);
    } else {
      out += u_hasBinaryProperty(c, UCHAR_LOWERCASE) || u_hasBinaryProperty(c, UCHAR_UPPERCASE)
                 ? (u_totitle(c) == c ? PyUpper(one) : [&] {
                     std::string t;
                     AppendUtf8(&t, static_cast<char32_t>(u_totitle(c)));
                     return t;
                   }())
                 : one;
    }
    prev_cased = u_hasBinaryProperty(c, UCHAR_CASED);
  }
  return out;
}

std::vector<std::string> SplitWhitespace(std::string_view s, int64_t maxsplit, bool from_right) {
  std::vector<char32_t> cps = DecodeUtf8(s);
  std::vector<std::string> parts;
  if (!from_right) {
    size_t k = 0, n = cps.size();
    while (true) {
      while (k < n && IsPySpace(cps[k])) ++k;
      if (k == n) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        // The remainder keeps its trailing whitespace, as in CPython.
        parts.push_back(EncodeUtf8(std::vector<char32_t>(cps.begin() + k, cps.end())));
        break;
      }
      size_t b = k;
      while (k < n && !IsPySpace(cps[k])) ++k;
      parts.push_back(EncodeUtf8(std::vector<char32_t>(cps.begin() + b, cps.begin() + k)));
    }
    return parts;
  }
  int64_t k = static_cast<int64_t>(cps.size());
  while (true) {
    while (k > 0 && IsPySpace(cps[k - 1])) --k;
    if (k == 0) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
      parts.push_back(EncodeUtf8(std::vector<char32_t>(cps.begin(), cps.begin() + k)));
      break;
    }
    int64_t e = k;
    while (k > 0 && !IsPySpace(cps[k - 1])) --k;
    parts.push_back(EncodeUtf8(std::vector<char32_t>(cps.begin() + k, cps.begin() + e)));
  }
  std::reverse(parts.begin(), parts.end());
  return parts;
}

std::vector<std::string> SplitSep(const std::string& s, const std::string& sep, int64_t maxsplit,
                                  bool from_right, int line) {
  if (sep.empty()) Fail("empty separator", line);
  std::vector<std::string> parts;
  if (!from_right) {
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      size_t p = s.find(sep, start);
      if (p == std::string::npos) break;
      parts.push_back(s.substr(start, p - start));
      start = p + sep.size();
    }
    parts.push_back(s.substr(start));
    return parts;
  }
  size_t end = s.size();
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    if (end < sep.size()) break;
    size_t p = s.rfind(sep, end - sep.size());
    if (p == std::string::npos) break;
    parts.push_back(s.substr(p + sep.size(), end - p - sep.size()));
    end = p;
  }
  parts.push_back(s.substr(0, end));
  std::reverse(parts.begin(), parts.end());
  return parts;
}

Value StrList(const std::vector<std::string>& parts) {
  List items;
  for (const auto& p : parts) items.push_back(Value::Str(p));
  return Value::MakeList(std::move(items));
}

std::vector<std::string> SplitLines(std::string_view s, bool keepends) {
  std::vector<char32_t> cps = DecodeUtf8(s);
  std::vector<std::string> lines;
  size_t b = 0;
  for (size_t k = 0; k < cps.size(); ++k) {
    char32_t c = cps[k];
    bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
               c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) continue;
    size_t e = k + 1;
    if (c == '\r' && k + 1 < cps.size() && cps[k + 1] == '\n') e = k + 2;
    lines.push_back(
        EncodeUtf8(std::vector<char32_t>(cps.begin() + b, cps.begin() + (keepends ? e : k))));
    b = e;
    k = e - 1;
  }
  if (b < cps.size())
    lines.push_back(EncodeUtf8(std::vector<char32_t>(cps.begin() + b, cps.end())));
  return lines;
}

// Code-point index of the byte offset `pos` (for find/rfind results).
int64_t CpIndex(const std::string& s, size_t pos) {
  return static_cast<int64_t>(CodePointCount(std::string_view(s).substr(0, pos)));
}

// Byte offset of code point `cp` (clamped), for start/end arguments.
size_t ByteOffset(const std::string& s, int64_t cp) {
  int64_t n = static_cast<int64_t>(CodePointCount(s));
  if (cp < 0) cp = std::max<int64_t>(0, cp + n);
  if (cp >= n) return s.size();
  size_t k = 0;
  for (int64_t seen = 0; k < s.size(); ++k) {
    if ((static_cast<unsigned char>(s[k]) & 0xC0) != 0x80) {
      if (seen == cp) return k;
      ++seen;
    }
  }
  return s.size();
}

std::string Pad(std::string_view fill, int64_t n) {
  std::string out;
  for (int64_t k = 0; k < n; ++k) out += fill;
  return out;
}

bool AllCp(const std::string& s, bool (*pred)(char32_t)) {
  std::vector<char32_t> cps = DecodeUtf8(s);
  return !cps.empty() && std::all_of(cps.begin(), cps.end(), pred);
}

std::string FormatSimple(const std::string& fmt, const CallArgs& args, int line) {
  // str.format with {} / {N} / {name} and no format spec or conversion.
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '{' && k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out.push_back('{');
      ++k;
    } else if (c == '}' && k + 1 < fmt.size() && fmt[k + 1] == '}') {
      out.push_back('}');
      ++k;
    } else if (c == '{') {
      size_t e = fmt.find('}', k);
      if (e == std::string::npos) Fail("Single '{' encountered in format string", line);
      std::string field = fmt.substr(k + 1, e - k - 1);
      if (field.find_first_of(":!.[") != std::string::npos) {
        Fail("unsupported construct 'str.format with a format spec'", line);
      }
      Value v;
      if (field.empty()) {
        v = args.Get(auto_index++, "\x01");
      } else if (std::all_of(field.begin(), field.end(), ::isdigit)) {
        v = args.Get(std::stoul(field), "\x01");
      } else {
        v = args.Get(SIZE_MAX, field);
      }
      if (v.is_undefined()) Fail("format: missing argument '" + field + "'", line);
      out += ToStr(v);
      k = e;
    } else if (c == '}') {
      Fail("Single '}' encountered in format string", line);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

[[noreturn]] void Unsafe(const std::string& name, const Value& self, int line) {
  Fail("access to attribute '" + name + "' of '" + TypeName(self) + "' object is unsafe.", line);
}

}  // namespace

// printf-style `str % args` for the conversions templates use: %s %r %d %i %f %x %% with
// optional flags (-, 0, +, space), width and precision. A dict argument (%(name)s) is refused.
std::string PercentFormat(const std::string& fmt, const Value& arg, int line, bool escape) {
  List args = arg.kind == Kind::kTuple ? *arg.list : List{arg};
  if (arg.kind == Kind::kDict) Fail("unsupported construct '%(name)s formatting'", line);
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out.push_back(fmt[k]);
      continue;
    }
    size_t spec_start = k;
    ++k;
    while (k < fmt.size() && std::strchr("-0+ #", fmt[k]) != nullptr) ++k;
    while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) ++k;
    if (k < fmt.size() && fmt[k] == '.') {
      ++k;
      while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) ++k;
    }
    if (k >= fmt.size()) Fail("incomplete format", line);
    char conv = fmt[k];
    std::string spec = fmt.substr(spec_start, k - spec_start);
    if (conv == '%') {
      out.push_back('%');
      continue;
    }
    if (spec.size() > 12) Fail("format spec too long", line);
    if (next >= args.size()) Fail("not enough arguments for format string", line);
    const Value& v = args[next++];
    char buf[512];
    if (conv == 's' || conv == 'r') {
      std::string text = conv == 's' ? ToStr(v) : Repr(v);
      if (escape && !v.safe) text = HtmlEscape(text);
      if (spec.size() > 1) {
        // Width pads by code points; precision truncates.
        int64_t width = std::atoll(spec.c_str() + 1 + (spec[1] == '-' ? 1 : 0));
        int64_t len = static_cast<int64_t>(CodePointCount(text));
        if (width > len) {
          std::string pad(static_cast<size_t>(std::min<int64_t>(width - len, 1 << 20)), ' ');
          text = spec[1] == '-' ? text + pad : pad + text;
        }
      }
      out += text;
    } else if (conv == 'd' || conv == 'i' || conv == 'x' || conv == 'X' || conv == 'o') {
      if (!v.is_number()) Fail("%" + std::string(1, conv) + " format: a number is required", line);
      long long n = v.kind == Kind::kFloat ? static_cast<long long>(v.f) : IntOf(v);
      std::string f = spec + "ll" + (conv == 'i' ? 'd' : conv);
      std::snprintf(buf, sizeof(buf), f.c_str(), n);
      out += buf;
    } else if (conv == 'f' || conv == 'F' || conv == 'e' || conv == 'g') {
      if (!v.is_number()) Fail("must be real number, not " + TypeName(v), line);
      double x = v.kind == Kind::kFloat ? v.f : static_cast<double>(IntOf(v));
      std::snprintf(buf, sizeof(buf), (spec + conv).c_str(), x);
      out += buf;
    } else {
      Fail("unsupported format character '" + std::string(1, conv) + "'", line);
    }
  }
  if (next < args.size()) Fail("not all arguments converted during string formatting", line);
  return out;
}

Value Renderer::StringMethod(const Value& self, const std::string& name, int line) {
  static const char* kNames[] = {
      "strip",        "lstrip",       "rstrip",     "split",     "rsplit",   "startswith",
      "endswith",     "replace",      "lower",      "upper",     "title",    "capitalize",
      "find",         "rfind",        "index",      "rindex",    "count",    "join",
      "splitlines",   "isdigit",      "isalpha",    "isspace",   "isalnum",  "islower",
      "isupper",      "format",       "center",     "ljust",     "rjust",    "zfill",
      "removeprefix", "removesuffix", "isnumeric",  "isdecimal", "casefold", "swapcase",
      "partition",    "rpartition",   "expandtabs", "istitle"};
  if (std::find_if(std::begin(kNames), std::end(kNames),
                   [&](const char* n) { return name == n; }) == std::end(kNames)) {
    return Value::Undefined();
  }
  const std::string s = *self.str;
  auto impl = [s, name, self](CallArgs& a) -> Value {
    const int line = a.line;
    auto str_arg = [&](size_t i, const char* kw) {
      return ArgStr(a.Get(i, kw), line, name.c_str());
    };
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      Value chars = a.Get(0, "chars", Value::None());
      std::string cs;
      if (!chars.is_none()) cs = ArgStr(chars, line, name.c_str());
      return Value::Str(
          PyStrip(s, chars.is_none() ? nullptr : &cs, name != "rstrip", name != "lstrip"));
    }
    if (name == "split" || name == "rsplit") {
      Value sep = a.Get(0, "sep", Value::None());
      int64_t maxsplit = ArgInt(a.Get(1, "maxsplit", Value::Int(-1)), line, "maxsplit");
      if (sep.is_none()) return StrList(SplitWhitespace(s, maxsplit, name == "rsplit"));
      return StrList(SplitSep(s, ArgStr(sep, line, "sep"), maxsplit, name == "rsplit", line));
    }
    if (name == "startswith" || name == "endswith") {
      Value pre = a.Get(0, "prefix");
      std::string sub = s;
      if (a.pos.size() > 1 || a.pos.size() > 2) {
        size_t b = ByteOffset(s, ArgInt(a.pos[1], line, "start"));
        size_t e = a.pos.size() > 2 ? ByteOffset(s, ArgInt(a.pos[2], line, "end")) : s.size();
        sub = b <= e ? s.substr(b, e - b) : std::string();
      }
      List cands;
      if (pre.kind == Kind::kTuple) {
        cands = *pre.list;
      } else {
        cands.push_back(pre);
      }
      for (const Value& c : cands) {
        std::string p = ArgStr(c, line, name.c_str());
        bool hit = name == "startswith" ? sub.compare(0, p.size(), p) == 0 && sub.size() >= p.size()
                                        : sub.size() >= p.size() &&
                                              sub.compare(sub.size() - p.size(), p.size(), p) == 0;
        if (hit) return Value::Bool(true);
      }
      return Value::Bool(false);
    }
    if (name == "replace") {
      std::string from = str_arg(0, "old"), to = str_arg(1, "new");
      int64_t count = ArgInt(a.Get(2, "count", Value::Int(-1)), line, "count");
      std::string out;
      if (from.empty()) {
        // Python inserts `to` between every character (and at both ends).
        std::vector<char32_t> cps = DecodeUtf8(s);
        int64_t done = 0;
        for (size_t k = 0; k <= cps.size(); ++k) {
          if (count < 0 || done < count) {
            out += to;
            ++done;
          }
          if (k < cps.size()) AppendUtf8(&out, cps[k]);
        }
        return Value::Str(out);
      }
      size_t start = 0;
      int64_t done = 0;
      while (count < 0 || done < count) {
        size_t p = s.find(from, start);
        if (p == std::string::npos) break;
        out += s.substr(start, p - start) + to;
        start = p + from.size();
        ++done;
      }
      out += s.substr(start);
      return Value::Str(out);
    }
    if (name == "lower" || name == "casefold") return Value::Str(PyLower(s));
    if (name == "upper") return Value::Str(PyUpper(s));
    if (name == "title") return Value::Str(PyTitle(s));
    if (name == "capitalize") return Value::Str(Capitalize(s));
    if (name == "find" || name == "rfind" || name == "index" || name == "rindex" ||
        name == "count") {
      std::string sub = str_arg(0, "sub");
      size_t b = a.pos.size() > 1 && !a.pos[1].is_none()
                     ? ByteOffset(s, ArgInt(a.pos[1], line, "start"))
                     : 0;
      size_t e = a.pos.size() > 2 && !a.pos[2].is_none()
                     ? ByteOffset(s, ArgInt(a.pos[2], line, "end"))
                     : s.size();
      std::string hay = b <= e ? s.substr(b, e - b) : std::string();
      if (b > e || (b == s.size() && b > 0 && !sub.empty() && name != "count")) {
        if (name == "index" || name == "rindex") Fail("substring not found", line);
        if (name == "count") return Value::Int(0);
        if (b > e) return Value::Int(-1);
      }
      if (name == "count") {
        if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePointCount(hay)) + 1);
        int64_t n = 0;
        for (size_t p = hay.find(sub); p != std::string::npos; p = hay.find(sub, p + sub.size()))
          ++n;
        return Value::Int(n);
      }
      size_t p = (name == "find" || name == "index") ? hay.find(sub) : hay.rfind(sub);
      if (p == std::string::npos) {
        if (name == "index" || name == "rindex") Fail("substring not found", line);
        return Value::Int(-1);
      }
      return Value::Int(CpIndex(s, b + p));
    }
    if (name == "join") {
      Value it = a.Get(0, "iterable");
      List items;
      if (it.is_sequence() || it.kind == Kind::kGenerator) {
        items = *it.list;
      } else if (it.kind == Kind::kString) {
        for (char32_t cp : DecodeUtf8(*it.str)) {
          std::string one;
          AppendUtf8(&one, cp);
          items.push_back(Value::Str(one));
        }
      } else if (it.kind == Kind::kDict) {
        for (const auto& [k, v] : it.dict->entries) items.push_back(k);
      } else {
        Fail("can only join an iterable", line);
      }
      std::string out;
      for (size_t k = 0; k < items.size(); ++k) {
        if (items[k].kind != Kind::kString) {
          Fail("sequence item " + std::to_string(k) + ": expected str instance, " +
                   TypeName(items[k]) + " found",
               line);
        }
        if (k) out += s;
        out += *items[k].str;
      }
      return Value::Str(out);
    }
    if (name == "splitlines") return StrList(SplitLines(s, Truthy(a.Get(0, "keepends"))));
    if (name == "isdigit" || name == "isnumeric" || name == "isdecimal") {
      return Value::Bool(
          AllCp(s, [](char32_t c) { return u_isdigit(static_cast<UChar32>(c)) != 0; }));
    }
    if (name == "isalpha") {
      return Value::Bool(
          AllCp(s, [](char32_t c) { return u_isalpha(static_cast<UChar32>(c)) != 0; }));
    }
    if (name == "isalnum") {
      return Value::Bool(AllCp(s, [](char32_t c) { return IsAlnumWord(c) && c != U'_'; }));
    }
    if (name == "isspace") return Value::Bool(AllCp(s, IsPySpace));
    if (name == "islower" || name == "isupper") {
      bool any_cased = false;
      for (char32_t c : DecodeUtf8(s)) {
        auto uc = static_cast<UChar32>(c);
        bool lower = u_hasBinaryProperty(uc, UCHAR_LOWERCASE),
             upper = u_hasBinaryProperty(uc, UCHAR_UPPERCASE);
        if (name == "islower" ? upper : lower) return Value::Bool(false);
        if (lower || upper || u_istitle(uc)) any_cased = true;
        if (u_istitle(uc)) return Value::Bool(false);
      }
      return Value::Bool(any_cased);
    }
    if (name == "format") return Value::Str(FormatSimple(s, a, line));
    if (name == "center" || name == "ljust" || name == "rjust") {
      int64_t width = ArgInt(a.Get(0, "width"), line, "width");
      std::string fill = a.Has(1, "fillchar") ? str_arg(1, "fillchar") : " ";
      if (CodePointCount(fill) != 1)
        Fail("The fill character must be exactly one character long", line);
      int64_t len = static_cast<int64_t>(CodePointCount(s));
      if (width <= len) return Value::Str(s);
      if (width > (1 << 24)) Fail("width too large", line);
      int64_t marg = width - len;
      if (name == "ljust") return Value::Str(s + Pad(fill, marg));
      if (name == "rjust") return Value::Str(Pad(fill, marg) + s);
      int64_t left = marg / 2 + (marg & width & 1);
      return Value::Str(Pad(fill, left) + s + Pad(fill, marg - left));
    }
    if (name == "zfill") {
      int64_t width = ArgInt(a.Get(0, "width"), line, "width");
      int64_t len = static_cast<int64_t>(CodePointCount(s));
      if (width <= len) return Value::Str(s);
      if (width > (1 << 24)) Fail("width too large", line);
      std::string out = s;
      size_t at = (!out.empty() && (out[0] == '+' || out[0] == '-')) ? 1 : 0;
      out.insert(at, std::string(width - len, '0'));
      return Value::Str(out);
    }
    if (name == "removeprefix") {
      std::string p = str_arg(0, "prefix");
      return Value::Str(s.compare(0, p.size(), p) == 0 && s.size() >= p.size() ? s.substr(p.size())
                                                                               : s);
    }
    if (name == "removesuffix") {
      std::string p = str_arg(0, "suffix");
      bool hit =
          !p.empty() && s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
      return Value::Str(hit ? s.substr(0, s.size() - p.size()) : s);
    }
    if (name == "partition" || name == "rpartition") {
      std::string sep = str_arg(0, "sep");
      if (sep.empty()) Fail("empty separator", line);
      size_t p = name == "partition" ? s.find(sep) : s.rfind(sep);
      if (p == std::string::npos) {
        return name == "partition"
                   ? Value::MakeTuple({Value::Str(s), Value::Str(""), Value::Str("")})
                   : Value::MakeTuple({Value::Str(""), Value::Str(""), Value::Str(s)});
      }
      return Value::MakeTuple(
          {Value::Str(s.substr(0, p)), Value::Str(sep), Value::Str(s.substr(p + sep.size()))});
    }
    Fail("unsupported construct 'str." + name + "()'", line);
  };
  // markupsafe.Markup wraps these methods so that a Markup stays Markup.
  static const char* kKeepSafe[] = {"strip",      "lstrip", "rstrip", "lower", "upper", "title",
                                    "capitalize", "center", "ljust",  "rjust", "zfill"};
  const bool keep_safe = self.safe && std::any_of(std::begin(kKeepSafe), std::end(kKeepSafe),
                                                  [&](const char* n) { return name == n; });
  const bool split_safe =
      self.safe && (name == "split" || name == "rsplit" || name == "splitlines");
  return Value::MakeCallable(name, [impl, keep_safe, split_safe](CallArgs& a) -> Value {
    Value r = impl(a);
    if (keep_safe && r.kind == Kind::kString) r.safe = true;
    if (split_safe && r.kind == Kind::kList) {
      List parts = *r.list;
      for (Value& p : parts) p.safe = true;
      r = Value::MakeList(std::move(parts));
    }
    return r;
  });
}

Value Renderer::DictMethod(const Value& self, const std::string& name, int line) {
  if (name == "pop" || name == "popitem" || name == "setdefault" || name == "update" ||
      name == "clear") {
    return Value::MakeCallable(name,
                               [name, self](CallArgs& a) -> Value { Unsafe(name, self, a.line); });
  }
  if (name != "items" && name != "keys" && name != "values" && name != "get" && name != "copy") {
    return Value::Undefined();
  }
  (void)line;
  return Value::MakeCallable(name, [name, self](CallArgs& a) -> Value {
    const Dict& d = *self.dict;
    if (name == "get") {
      const Value* v = d.Find(a.Get(0, "key"));
      return v ? *v : a.Get(1, "default", Value::None());
    }
    if (name == "copy") {
      auto c = std::make_shared<Dict>(d);
      return Value::MakeDict(std::move(c));
    }
    List out;
    for (const auto& [k, v] : d.entries) {
      if (name == "items") {
        out.push_back(Value::MakeTuple({k, v}));
      } else {
        out.push_back(name == "keys" ? k : v);
      }
    }
    return Value::MakeList(std::move(out));
  });
}

Value Renderer::ListMethod(const Value& self, const std::string& name, int line) {
  if (name == "append" || name == "extend" || name == "insert" || name == "pop" ||
      name == "remove" || name == "reverse" || name == "sort" || name == "clear") {
    return Value::MakeCallable(name,
                               [name, self](CallArgs& a) -> Value { Unsafe(name, self, a.line); });
  }
  if (name != "index" && name != "count" && name != "copy") return Value::Undefined();
  (void)line;
  return Value::MakeCallable(name, [name, self](CallArgs& a) -> Value {
    const List& l = *self.list;
    if (name == "copy") return Value::MakeList(l);
    Value x = a.Get(0, "value");
    int64_t n = 0;
    for (size_t k = 0; k < l.size(); ++k) {
      if (Equal(l[k], x)) {
        if (name == "index") return Value::Int(static_cast<int64_t>(k));
        ++n;
      }
    }
    if (name == "index") Fail(Repr(x) + " is not in list", a.line);
    return Value::Int(n);
  });
}

Value Renderer::MakeGlobal(const std::string& name) {
  Renderer* self = this;
  if (name == "range") {
    return Value::MakeCallable(name, [](CallArgs& a) -> Value {
      int64_t start = 0, stop, step = 1;
      if (a.pos.size() == 1) {
        stop = ArgInt(a.pos[0], a.line, "range");
      } else if (a.pos.size() == 2 || a.pos.size() == 3) {
        start = ArgInt(a.pos[0], a.line, "range");
        stop = ArgInt(a.pos[1], a.line, "range");
        if (a.pos.size() == 3) step = ArgInt(a.pos[2], a.line, "range");
      } else {
        Fail("range expected 1 to 3 arguments, got " + std::to_string(a.pos.size()), a.line);
      }
      if (step == 0) Fail("range() arg 3 must not be zero", a.line);
      // The sandbox refuses ranges longer than MAX_RANGE (100000).
      double len = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) /
                             static_cast<double>(step));
      if (len > 100000)
        Fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).", a.line);
      List items;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step)
        items.push_back(Value::Int(k));
      return Value::MakeList(std::move(items));
    });
  }
  if (name == "dict" || name == "namespace") {
    const bool ns = name == "namespace";
    return Value::MakeCallable(name, [ns](CallArgs& a) -> Value {
      auto d = std::make_shared<Dict>();
      if (a.pos.size() > 1) Fail("expected at most 1 positional argument", a.line);
      if (!a.pos.empty()) {
        const Value& init = a.pos[0];
        if (init.kind == Kind::kDict || init.kind == Kind::kNamespace) {
          d->entries = init.dict->entries;
        } else if (init.is_sequence() || init.kind == Kind::kGenerator) {
          for (const Value& pair : *init.list) {
            if (!pair.is_sequence() || pair.list->size() != 2) {
              Fail("dictionary update sequence element has wrong length", a.line);
            }
            d->Set((*pair.list)[0], (*pair.list)[1]);
          }
        } else {
          Fail("'" + TypeName(init) + "' object is not iterable", a.line);
        }
      }
      for (const auto& [k, v] : a.kw) d->Set(Value::Str(k), v);
      return ns ? Value::MakeNamespace(std::move(d)) : Value::MakeDict(std::move(d));
    });
  }
  if (name == "raise_exception") {
    return Value::MakeCallable(
        name, [](CallArgs& a) -> Value { Fail(ToStr(a.Get(0, "message")), a.line); });
  }
  if (name == "strftime_now") {
    return Value::MakeCallable(name, [self](CallArgs& a) -> Value {
      std::string fmt = ArgStr(a.Get(0, "format"), a.line, "strftime_now");
      auto now = self->options_.now ? self->options_.now() : std::chrono::system_clock::now();
      std::time_t t = std::chrono::system_clock::to_time_t(now);
      std::tm tm{};
      localtime_r(&t, &tm);
      if (fmt.empty()) return Value::Str("");
      std::vector<char> buf(fmt.size() * 8 + 256);
      size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
      return Value::Str(std::string(buf.data(), n));
    });
  }
  return Value::Undefined();
}

}  // namespace kvstash::engine::jinja
