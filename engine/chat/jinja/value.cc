// Python value semantics for the Jinja interpreter (value.h). The formatting functions reproduce
// CPython's byte output: float repr picks the shortest round-trip digits and switches to
// exponent notation outside 1e-4 <= |x| < 1e16; str repr prefers single quotes and escapes what
// str.isprintable() rejects; json.dumps keeps non-ASCII text (ensure_ascii=False) and escapes only
// the control characters. Unicode categories and case mapping come from ICU, as in the tokenizer.
#include "engine/chat/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace kvstash::engine::jinja {

void Fail(std::string message, int line) { throw JinjaError{std::move(message), line}; }

Value Value::Undefined(std::string hint) {
  Value v;
  if (!hint.empty()) v.str = std::make_shared<const std::string>(std::move(hint));
  return v;
}
Value Value::None() {
  Value v;
  v.kind = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind = Kind::kBool;
  v.b = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind = Kind::kInt;
  v.i = i;
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind = Kind::kFloat;
  v.f = f;
  return v;
}
Value Value::Str(std::string s) {
  Value v;
  v.kind = Kind::kString;
  v.str = std::make_shared<const std::string>(std::move(s));
  return v;
}
namespace {

void SetNesting(Value* v, const Value& child) {
  v->depth = std::max(v->depth, child.depth + 1);
  v->holds_namespace = v->holds_namespace || child.holds_namespace;
}

void CheckNesting(const Value& v) {
  if (v.depth > kMaxValueDepth) {
    Fail("value nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
  }
}

}  // namespace

Value Value::MakeList(List items) {
  Value v;
  v.kind = Kind::kList;
  v.depth = 1;
  for (const Value& item : items) SetNesting(&v, item);
  CheckNesting(v);
  v.list = std::make_shared<const List>(std::move(items));
  return v;
}
Value Value::MakeTuple(List items) {
  Value v = MakeList(std::move(items));
  v.kind = Kind::kTuple;
  return v;
}
Value Value::SafeStr(std::string s) {
  Value v = Str(std::move(s));
  v.safe = true;
  return v;
}
Value Value::MakeGenerator(List items) {
  Value v = MakeList(std::move(items));
  v.kind = Kind::kGenerator;
  return v;
}
Value Value::MakeDict(std::shared_ptr<Dict> d) {
  Value v;
  v.kind = Kind::kDict;
  v.depth = 1;
  for (const auto& [key, item] : d->entries) {
    SetNesting(&v, key);
    SetNesting(&v, item);
  }
  CheckNesting(v);
  v.dict = std::move(d);
  return v;
}
Value Value::MakeNamespace(std::shared_ptr<Dict> d) {
  Value v = MakeDict(std::move(d));
  v.kind = Kind::kNamespace;
  v.holds_namespace = true;
  return v;
}
Value Value::MakeCallable(std::string name, std::function<Value(CallArgs&)> fn) {
  Value v;
  v.kind = Kind::kCallable;
  v.fn = std::make_shared<const Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

std::string Value::UndefinedMessage() const {
  return str ? *str : std::string("value is undefined");
}

// ---- Dict ---------------------------------------------------------------------------------------

const Value* Dict::Find(const Value& key) const {
  for (const auto& [k, v] : entries) {
    if (Equal(k, key)) return &v;
  }
  return nullptr;
}

const Value* Dict::Find(std::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k.kind == Kind::kString && *k.str == key) return &v;
  }
  return nullptr;
}

void Dict::Set(Value key, Value value) {
  for (auto& [k, v] : entries) {
    if (Equal(k, key)) {
      v = std::move(value);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(value));
}

Value CallArgs::Get(size_t index, std::string_view name, Value dflt) const {
  if (index < pos.size()) return pos[index];
  for (const auto& [k, v] : kw) {
    if (k == name) return v;
  }
  return dflt;
}

bool CallArgs::Has(size_t index, std::string_view name) const {
  if (index < pos.size()) return true;
  for (const auto& [k, v] : kw) {
    if (k == name) return true;
  }
  return false;
}

// ---- Truthiness, str, repr ---------------------------------------------------------------------

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return v.b;
    case Kind::kInt:
      return v.i != 0;
    case Kind::kFloat:
      return v.f != 0.0;
    case Kind::kString:
      return !v.str->empty();
    case Kind::kList:
    case Kind::kTuple:
      return !v.list->empty();
    case Kind::kDict:
      return !v.dict->entries.empty();
    default:
      return true;
  }
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  // sci: [-]D[.DDD]e(+|-)XX
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  int exp10 = std::stoi(sci.substr(e + 1));
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits.push_back(c);
  }
  std::string out = neg ? "-" : "";
  if (exp10 >= -5 + 1 && exp10 < 16) {
    // Fixed notation.
    int point = exp10 + 1;  // digits before the decimal point
    if (point <= 0) {
      out += "0." + std::string(-point, '0') + digits;
    } else if (point >= static_cast<int>(digits.size())) {
      out += digits + std::string(point - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, point) + "." + digits.substr(point);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char ebuf[16];
  std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
  return out + ebuf;
}

std::string PyStrRepr(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t cp : DecodeUtf8(s)) {
    if (cp == static_cast<char32_t>(quote) || cp == U'\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == U'\t') {
      out += "\\t";
    } else if (cp == U'\n') {
      out += "\\n";
    } else if (cp == U'\r') {
      out += "\\r";
    } else if (cp < 0x20 || cp == 0x7f || !IsPrintable(cp)) {
      char buf[16];
      if (cp < 0x100) {
        std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(cp));
      } else if (cp < 0x10000) {
        std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
      } else {
        std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(cp));
      }
      out += buf;
    } else {
      AppendUtf8(&out, cp);
    }
  }
  out.push_back(quote);
  return out;
}

std::string HtmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string Repr(const Value& v) {
  switch (v.kind) {
    case Kind::kString:
      return v.safe ? "Markup(" + PyStrRepr(*v.str) + ")" : PyStrRepr(*v.str);
    case Kind::kList:
    case Kind::kTuple: {
      bool tuple = v.kind == Kind::kTuple;
      std::string out = tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += Repr((*v.list)[k]);
      }
      if (tuple && v.list->size() == 1) out += ",";
      out += tuple ? ")" : "]";
      return out;
    }
    case Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, val] : v.dict->entries) {
        if (!first) out += ", ";
        first = false;
        out += Repr(k) + ": " + Repr(val);
      }
      return out + "}";
    }
    case Kind::kUndefined:
      return "Undefined";
    default:
      return ToStr(v);
  }
}

std::string ToStr(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.b ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.i);
    case Kind::kFloat:
      return FloatRepr(v.f);
    case Kind::kString:
      return *v.str;
    case Kind::kNamespace:
      return "<Namespace " + Repr(Value::MakeDict(v.dict)) + ">";
    case Kind::kCallable:
      return "<function " + v.fn->name + ">";
    case Kind::kGenerator:
      return "<generator object>";
    case Kind::kLoop:
      return "<LoopContext " + std::to_string(v.loop->index0 + 1) + "/" +
             std::to_string(v.loop->items->size()) + ">";
    default:
      return Repr(v);
  }
}

std::string TypeName(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kTuple:
      return "tuple";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "Namespace";
    case Kind::kCallable:
      return "function";
    case Kind::kLoop:
      return "LoopContext";
    case Kind::kGenerator:
      return "generator";
  }
  return "object";
}

// ---- Equality and ordering ----------------------------------------------------------------------

namespace {

double AsDouble(const Value& v) {
  if (v.kind == Kind::kFloat) return v.f;
  if (v.kind == Kind::kBool) return v.b ? 1 : 0;
  return static_cast<double>(v.i);
}
int64_t AsInt(const Value& v) { return v.kind == Kind::kBool ? (v.b ? 1 : 0) : v.i; }

}  // namespace

bool Equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::kFloat || b.kind == Kind::kFloat) return AsDouble(a) == AsDouble(b);
    return AsInt(a) == AsInt(b);
  }
  if (a.is_sequence() && b.is_sequence()) {
    if (a.kind != b.kind || a.list->size() != b.list->size()) return false;
    for (size_t k = 0; k < a.list->size(); ++k) {
      if (!Equal((*a.list)[k], (*b.list)[k])) return false;
    }
    return true;
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return *a.str == *b.str;
    case Kind::kDict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : a.dict->entries) {
        const Value* other = b.dict->Find(k);
        if (other == nullptr || !Equal(v, *other)) return false;
      }
      return true;
    }
    case Kind::kNamespace:
      return a.dict == b.dict;
    case Kind::kCallable:
      return a.fn == b.fn;
    case Kind::kLoop:
      return a.loop == b.loop;
    default:
      return false;
  }
}

int Compare(const Value& a, const Value& b, int line) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::kFloat || b.kind == Kind::kFloat) {
      double x = AsDouble(a), y = AsDouble(b);
      return x < y ? -1 : (x > y ? 1 : 0);
    }
    int64_t x = AsInt(a), y = AsInt(b);
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.kind == Kind::kString && b.kind == Kind::kString) {
    // Code point order equals UTF-8 byte order.
    int c = a.str->compare(*b.str);
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_sequence() && a.kind == b.kind) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (!Equal((*a.list)[k], (*b.list)[k])) return Compare((*a.list)[k], (*b.list)[k], line);
    }
    return a.list->size() < b.list->size() ? -1 : (a.list->size() > b.list->size() ? 1 : 0);
  }
  if (a.is_undefined()) Fail(a.UndefinedMessage(), line);
  if (b.is_undefined()) Fail(b.UndefinedMessage(), line);
  Fail("'<' not supported between instances of '" + TypeName(a) + "' and '" + TypeName(b) + "'",
       line);
}

// ---- JSON
// -----------------------------------------------------------------------------------------

namespace {

void JsonString(std::string* out, std::string_view s, bool ensure_ascii) {
  out->push_back('"');
  for (char32_t cp : DecodeUtf8(s)) {
    switch (cp) {
      case U'"':
        *out += "\\\"";
        break;
      case U'\\':
        *out += "\\\\";
        break;
      case U'\n':
        *out += "\\n";
        break;
      case U'\r':
        *out += "\\r";
        break;
      case U'\t':
        *out += "\\t";
        break;
      case U'\b':
        *out += "\\b";
        break;
      case U'\f':
        *out += "\\f";
        break;
      default:
        if (cp < 0x20 || (ensure_ascii && cp > 0x7e)) {
          char buf[16];
          auto emit = [&](unsigned u) {
            std::snprintf(buf, sizeof(buf), "\\u%04x", u);
            *out += buf;
          };
          if (cp >= 0x10000) {
            char32_t c = cp - 0x10000;
            emit(0xD800 + (c >> 10));
            emit(0xDC00 + (c & 0x3FF));
          } else {
            emit(cp);
          }
        } else {
          AppendUtf8(out, cp);
        }
    }
  }
  out->push_back('"');
}

std::string JsonKey(const Value& k, int line) {
  switch (k.kind) {
    case Kind::kString:
      return *k.str;
    case Kind::kInt:
      return std::to_string(k.i);
    case Kind::kFloat:
      return FloatRepr(k.f);
    case Kind::kBool:
      return k.b ? "true" : "false";
    case Kind::kNone:
      return "null";
    default:
      Fail("keys must be str, int, float, bool or None, not " + TypeName(k), line);
  }
}

void JsonDump(std::string* out, const Value& v, const JsonDumpOptions& o, int depth, int line) {
  if (depth > 500) Fail("json.dumps: maximum recursion depth exceeded", line);
  auto newline = [&](int d) {
    if (!o.has_indent) return;
    out->push_back('\n');
    for (int k = 0; k < d; ++k) *out += o.indent_str;
  };
  switch (v.kind) {
    case Kind::kNone:
      *out += "null";
      return;
    case Kind::kBool:
      *out += v.b ? "true" : "false";
      return;
    case Kind::kInt:
      *out += std::to_string(v.i);
      return;
    case Kind::kFloat:
      if (std::isnan(v.f)) {
        *out += "NaN";
      } else if (std::isinf(v.f)) {
        *out += v.f > 0 ? "Infinity" : "-Infinity";
      } else {
        *out += FloatRepr(v.f);
      }
      return;
    case Kind::kString:
      JsonString(out, *v.str, o.ensure_ascii);
      return;
    case Kind::kList:
    case Kind::kTuple: {
      if (v.list->empty()) {
        *out += "[]";
        return;
      }
      out->push_back('[');
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) *out += o.item_sep;
        newline(depth + 1);
        JsonDump(out, (*v.list)[k], o, depth + 1, line);
      }
      newline(depth);
      out->push_back(']');
      return;
    }
    case Kind::kDict: {
      if (v.dict->entries.empty()) {
        *out += "{}";
        return;
      }
      std::vector<std::pair<std::string, const Value*>> entries;
      for (const auto& [k, val] : v.dict->entries) {
        if (k.kind == Kind::kNone && false) continue;
        entries.emplace_back(JsonKey(k, line), &val);
      }
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto& x, const auto& y) { return x.first < y.first; });
      }
      out->push_back('{');
      for (size_t k = 0; k < entries.size(); ++k) {
        if (k) *out += o.item_sep;
        newline(depth + 1);
        JsonString(out, entries[k].first, o.ensure_ascii);
        *out += o.key_sep;
        JsonDump(out, *entries[k].second, o, depth + 1, line);
      }
      newline(depth);
      out->push_back('}');
      return;
    }
    default:
      Fail("Object of type " + TypeName(v) + " is not JSON serializable", line);
  }
}

template <typename J>
Value FromJsonImpl(const J& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::None();
    case nlohmann::json::value_t::boolean:
      return Value::Bool(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::Int(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::Float(static_cast<double>(u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::Float(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value::Str(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(FromJsonImpl(e));
      return Value::MakeList(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      auto d = std::make_shared<Dict>();
      d->entries.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        d->entries.emplace_back(Value::Str(it.key()), FromJsonImpl(it.value()));
      }
      return Value::MakeDict(std::move(d));
    }
    default:
      return Value::None();
  }
}

}  // namespace

std::string JsonDumps(const Value& v, const JsonDumpOptions& options, int line) {
  std::string out;
  JsonDump(&out, v, options, 0, line);
  return out;
}

Value FromJson(const nlohmann::ordered_json& j) { return FromJsonImpl(j); }
Value FromJson(const nlohmann::json& j) { return FromJsonImpl(j); }

int64_t ArgInt(const Value& v, int line, const char* what) {
  if (!IsIntLike(v)) Fail(std::string(what) + ": expected an integer, got " + TypeName(v), line);
  return IntOf(v);
}

std::string ArgStr(const Value& v, int line, const char* what) {
  if (v.kind != Kind::kString) {
    Fail(std::string(what) + ": expected a string, got " + TypeName(v), line);
  }
  return *v.str;
}

}  // namespace kvstash::engine::jinja
