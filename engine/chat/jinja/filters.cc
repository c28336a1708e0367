// Jinja filters and tests (interpreter.h), following jinja2 3.1's filters.py and tests.py with
// transformers' `tojson`. Where jinja2 returns a generator (map, select, reject, selectattr,
// rejectattr, items, unique, batch, reverse of a list) the result is a kGenerator value: it
// iterates like a list but is truthy even when empty and has no length, as in Python.
#include <unicode/uchar.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/chat/jinja/interpreter.h"

namespace kvstash::engine::jinja {
namespace {

// The item `attribute` of `v`, with jinja2's make_attrgetter: dotted paths, integer parts index.
Value AttrGet(Renderer* r, const Value& v, const std::string& attribute, int line) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    size_t dot = attribute.find('.', start);
    std::string part =
        attribute.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits =
        !part.empty() && part.size() < 18 &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = digits ? r->GetItem(cur, Value::Int(std::stoll(part)), line)
                 : r->GetItem(cur, Value::Str(part), line);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// jinja2's ignore_case: strings are compared lower-cased.
Value IgnoreCase(const Value& v) {
  return v.kind == Kind::kString ? Value::Str(PyLower(*v.str)) : v;
}

Value Attribute(Renderer* r, const Value& item, const Value& attribute, int line) {
  if (attribute.is_none() || attribute.is_undefined()) return item;
  if (IsIntLike(attribute)) return r->GetItem(item, attribute, line);
  return AttrGet(r, item, ToStr(attribute), line);
}

// A filter result built from `v`'s text: Markup in, Markup out (markupsafe wraps these str
// methods).
Value KeepSafe(const Value& v, std::string text) {
  return v.safe ? Value::SafeStr(std::move(text)) : Value::Str(std::move(text));
}

// Python's len().
int64_t Length(const Value& v, int line) {
  switch (v.kind) {
    case Kind::kUndefined:
      return 0;
    case Kind::kString:
      return static_cast<int64_t>(CodePointCount(*v.str));
    case Kind::kList:
    case Kind::kTuple:
      return static_cast<int64_t>(v.list->size());
    case Kind::kDict:
      return static_cast<int64_t>(v.dict->size());
    case Kind::kLoop:
      return static_cast<int64_t>(v.loop->items->size());
    default:
      Fail("object of type '" + TypeName(v) + "' has no len()", line);
  }
}

// Sorting with a key; Compare raises for mixed types like Python's sorted().
void SortValues(std::vector<std::pair<Value, Value>>* keyed, bool reverse, int line) {
  std::stable_sort(keyed->begin(), keyed->end(), [&](const auto& x, const auto& y) {
    return reverse ? Compare(y.first, x.first, line) < 0 : Compare(x.first, y.first, line) < 0;
  });
}

std::string Indent(const std::string& s0, const std::string& indention, bool first, bool blank) {
  // jinja2 do_indent: s += "\n" then splitlines (which also splits on \r, \x0b, ...).
  std::string s = s0 + "\n";
  std::vector<std::string> lines;
  {
    std::vector<char32_t> cps = DecodeUtf8(s);
    size_t b = 0;
    for (size_t k = 0; k < cps.size(); ++k) {
      char32_t c = cps[k];
      bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
                 c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
      if (!brk) continue;
      lines.push_back(EncodeUtf8(std::vector<char32_t>(cps.begin() + b, cps.begin() + k)));
      if (c == '\r' && k + 1 < cps.size() && cps[k + 1] == '\n') ++k;
      b = k + 1;
    }
    if (b < cps.size())
      lines.push_back(EncodeUtf8(std::vector<char32_t>(cps.begin() + b, cps.end())));
  }
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) rv += "\n" + indention;
      rv += lines[k];
    }
  } else {
    rv = lines.empty() ? "" : lines[0];
    if (lines.size() > 1) {
      rv += "\n";
      for (size_t k = 1; k < lines.size(); ++k) {
        if (k > 1) rv += "\n";
        rv += lines[k].empty() ? lines[k] : indention + lines[k];
      }
    }
  }
  if (first) rv = indention + rv;
  return rv;
}

// Python's round(x, ndigits) for floats: correctly rounded, ties to even (printf does the same
// on the exact binary value).
double PyRound(double x, int64_t ndigits) {
  if (!std::isfinite(x)) return x;
  if (ndigits > 300) return x;
  if (ndigits < -300) return std::copysign(0.0, x);
  if (ndigits >= 0) {
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(ndigits), x);
    return std::strtod(buf, nullptr);
  }
  double p = std::pow(10.0, static_cast<double>(-ndigits));
  double y = x / p;
  double r = std::nearbyint(y);
  return r * p;
}

bool ParsePyInt(std::string s, int64_t base, int64_t* out) {
  std::string t = PyStrip(s, nullptr, true, true);
  std::string digits;
  for (size_t k = 0; k < t.size(); ++k) {
    if (t[k] == '_' && k > 0 && k + 1 < t.size() &&
        std::isalnum(static_cast<unsigned char>(t[k - 1])) &&
        std::isalnum(static_cast<unsigned char>(t[k + 1]))) {
      continue;
    }
    digits.push_back(t[k]);
  }
  if (digits.empty() || base < 2 || base > 36) return false;
  size_t start = (digits[0] == '+' || digits[0] == '-') ? 1 : 0;
  if (start == digits.size()) return false;
  for (size_t k = start; k < digits.size(); ++k) {
    if (!std::isalnum(static_cast<unsigned char>(digits[k]))) return false;
  }
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(digits.c_str(), &end, static_cast<int>(base));
  if (errno == ERANGE || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParsePyFloat(const std::string& s, double* out) {
  std::string t = PyStrip(s, nullptr, true, true);
  if (t.empty()) return false;
  std::string low = PyLower(t);
  std::string body = (low[0] == '+' || low[0] == '-') ? low.substr(1) : low;
  double sign = low[0] == '-' ? -1 : 1;
  if (body == "inf" || body == "infinity") {
    *out = sign * HUGE_VAL;
    return true;
  }
  if (body == "nan") {
    *out = NAN;
    return true;
  }
  for (char c : body) {
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' ||
          c == '-' || c == '_')) {
      return false;
    }
  }
  std::string clean;
  for (char c : t) {
    if (c != '_') clean.push_back(c);
  }
  char* end = nullptr;
  double v = std::strtod(clean.c_str(), &end);
  if (*end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

Value Renderer::ApplyFilter(const std::string& name, const Value& v, CallArgs& a,
                            const ScopePtr& scope) {
  (void)scope;
  const int line = a.line;
  auto as_str = [&]() { return ToStr(v); };
  auto list_of = [&]() { return Iterate(v, line); };
  if (name == "safe" || name == "list") {
    if (name == "safe") return v.safe ? v : Value::SafeStr(ToStr(v));
    return Value::MakeList(list_of());
  }
  if (name == "trim") {
    Value chars = a.Get(0, "chars", Value::None());
    std::string cs = chars.is_none() ? "" : ToStr(chars);
    return KeepSafe(v, PyStrip(as_str(), chars.is_none() ? nullptr : &cs, true, true));
  }
  if (name == "length" || name == "count") return Value::Int(Length(v, line));
  if (name == "string") return v.safe ? v : Value::Str(as_str());
  if (name == "lower") return KeepSafe(v, PyLower(as_str()));
  if (name == "upper") return KeepSafe(v, PyUpper(as_str()));
  if (name == "capitalize") return KeepSafe(v, Capitalize(as_str()));
  if (name == "title") {
    // Words start after [-\s({\[<]; each is item[0].upper() + item[1:].lower().
    std::vector<char32_t> cps = DecodeUtf8(as_str());
    std::string out;
    bool start = true;
    for (char32_t c : cps) {
      bool sep = c == '-' || IsPySpace(c) || c == '(' || c == '{' || c == '[' || c == '<';
      std::string one;
      AppendUtf8(&one, c);
      if (sep) {
        out += one;
        start = true;
      } else {
        out += start ? PyUpper(one) : PyLower(one);
        start = false;
      }
    }
    return Value::Str(out);
  }
  if (name == "replace") {
    CallArgs m;
    m.line = line;
    m.pos = {a.Get(0, "old"), a.Get(1, "new")};
    Value count = a.Get(2, "count", Value::None());
    if (!count.is_none()) m.pos.push_back(count);
    for (Value& p : m.pos) p = Value::Str(ToStr(p));
    if (m.pos.size() == 3) m.pos[2] = count;
    Value s = Value::Str(as_str());
    return CallValue(StringMethod(s, "replace", line), m, line);
  }
  if (name == "join") {
    std::string d = ToStr(a.Get(0, "d", Value::Str("")));
    Value attribute = a.Get(1, "attribute", Value::None());
    std::string out;
    List items = list_of();
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) out += d;
      out += ToStr(Attribute(this, items[k], attribute, line));
      CheckSize(out.size(), line);
    }
    return Value::Str(out);
  }
  if (name == "first") {
    List items = list_of();
    return items.empty() ? Value::Undefined("No first item, sequence was empty.") : items[0];
  }
  if (name == "last") {
    if (v.kind == Kind::kGenerator) Fail("'generator' object is not reversible", line);
    List items = list_of();
    return items.empty() ? Value::Undefined("No last item, sequence was empty.") : items.back();
  }
  if (name == "default" || name == "d") {
    Value dflt = a.Get(0, "default_value", Value::Str(""));
    bool boolean = Truthy(a.Get(1, "boolean", Value::Bool(false)));
    if (v.is_undefined() || (boolean && !Truthy(v))) return dflt;
    return v;
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::MakeGenerator({});
    if (v.kind != Kind::kDict) Fail("Can only get item pairs from a mapping.", line);
    List out;
    for (const auto& [k, val] : v.dict->entries) out.push_back(Value::MakeTuple({k, val}));
    return Value::MakeGenerator(std::move(out));
  }
  if (name == "map") {
    List out;
    if (a.pos.empty() && a.Has(SIZE_MAX, "attribute")) {
      Value attribute = a.Get(SIZE_MAX, "attribute");
      Value dflt = a.Get(SIZE_MAX, "default", Value::None());
      for (const Value& item : list_of()) {
        Value r = Attribute(this, item, attribute, line);
        out.push_back(r.is_undefined() && !dflt.is_none() ? dflt : r);
      }
    } else {
      if (a.pos.empty()) Fail("map requires a filter argument", line);
      std::string fname = ToStr(a.pos[0]);
      CallArgs rest;
      rest.line = line;
      rest.pos.assign(a.pos.begin() + 1, a.pos.end());
      rest.kw = a.kw;
      for (const Value& item : list_of()) {
        CallArgs copy = rest;
        out.push_back(ApplyFilter(fname, item, copy, scope));
      }
    }
    return Value::MakeGenerator(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_if = name == "select" || name == "selectattr";
    size_t off = 0;
    Value attribute;
    if (by_attr) {
      if (a.pos.empty()) Fail("Missing parameter for attribute name", line);
      attribute = a.pos[0];
      off = 1;
    }
    std::string test;
    bool has_test = a.pos.size() > off;
    if (has_test) test = ToStr(a.pos[off]);
    CallArgs rest;
    rest.line = line;
    if (has_test) rest.pos.assign(a.pos.begin() + off + 1, a.pos.end());
    rest.kw = a.kw;
    List out;
    if (Truthy(v) || v.kind == Kind::kGenerator) {
      for (const Value& item : list_of()) {
        Value x = by_attr ? AttrGet(this, item, ToStr(attribute), line) : item;
        bool r;
        if (has_test) {
          CallArgs copy = rest;
          r = ApplyTest(test, x, copy);
        } else {
          r = Truthy(x);
        }
        if (r == keep_if) out.push_back(item);
      }
    }
    return Value::MakeGenerator(std::move(out));
  }
  if (name == "unique") {
    bool case_sensitive = Truthy(a.Get(0, "case_sensitive", Value::Bool(false)));
    Value attribute = a.Get(1, "attribute", Value::None());
    List out, seen;
    for (const Value& item : list_of()) {
      Value key = Attribute(this, item, attribute, line);
      if (!case_sensitive) key = IgnoreCase(key);
      if (key.kind == Kind::kList || key.kind == Kind::kDict) {
        Fail("unhashable type: '" + TypeName(key) + "'", line);
      }
      if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return Equal(s, key); })) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::MakeGenerator(std::move(out));
  }
  if (name == "tojson") {
    JsonDumpOptions o;
    Value indent = a.Get(0, "indent", Value::None());
    if (!indent.is_none()) {
      o.has_indent = true;
      if (indent.kind == Kind::kString) {
        o.indent_str = *indent.str;
      } else {
        int64_t n = ArgInt(indent, line, "indent");
        o.indent_str = std::string(static_cast<size_t>(std::clamp<int64_t>(n, 0, 1 << 16)), ' ');
      }
      o.item_sep = ",";
    }
    Value seps = a.Get(1, "separators", Value::None());
    if (!seps.is_none()) {
      if (!seps.is_sequence() || seps.list->size() != 2) Fail("separators must be a pair", line);
      o.item_sep = ArgStr((*seps.list)[0], line, "separators");
      o.key_sep = ArgStr((*seps.list)[1], line, "separators");
    }
    o.sort_keys = Truthy(a.Get(2, "sort_keys", Value::Bool(false)));
    o.ensure_ascii = Truthy(a.Get(SIZE_MAX, "ensure_ascii", Value::Bool(false)));
    std::string out = JsonDumps(v, o, line);
    CheckSize(out.size(), line);
    return Value::Str(std::move(out));
  }
  if (name == "indent") {
    Value width = a.Get(0, "width", Value::Int(4));
    std::string ind = width.kind == Kind::kString
                          ? *width.str
                          : std::string(static_cast<size_t>(std::clamp<int64_t>(
                                            ArgInt(width, line, "width"), 0, 1 << 16)),
                                        ' ');
    return Value::Str(Indent(as_str(), ind, Truthy(a.Get(1, "first")), Truthy(a.Get(2, "blank"))));
  }
  if (name == "int") {
    Value dflt = a.Get(0, "default", Value::Int(0));
    int64_t base = ArgInt(a.Get(1, "base", Value::Int(10)), line, "base");
    int64_t out;
    if (v.kind == Kind::kString && ParsePyInt(*v.str, base, &out)) return Value::Int(out);
    if (IsIntLike(v)) return Value::Int(IntOf(v));
    if (v.kind == Kind::kFloat && std::isfinite(v.f) && std::fabs(v.f) < 9.2e18) {
      return Value::Int(static_cast<int64_t>(v.f));
    }
    double f;
    if (v.kind == Kind::kString && ParsePyFloat(*v.str, &f) && std::isfinite(f) &&
        std::fabs(f) < 9.2e18) {
      return Value::Int(static_cast<int64_t>(f));
    }
    return dflt;
  }
  if (name == "float") {
    Value dflt = a.Get(0, "default", Value::Float(0.0));
    if (v.kind == Kind::kFloat) return v;
    if (IsIntLike(v)) return Value::Float(static_cast<double>(IntOf(v)));
    double f;
    if (v.kind == Kind::kString && ParsePyFloat(*v.str, &f)) return Value::Float(f);
    return dflt;
  }
  if (name == "abs") {
    if (IsIntLike(v)) {
      if (IntOf(v) == INT64_MIN) Fail("integer overflow", line);
      return Value::Int(std::llabs(IntOf(v)));
    }
    if (v.kind == Kind::kFloat) return Value::Float(std::fabs(v.f));
    Fail("bad operand type for abs(): '" + TypeName(v) + "'", line);
  }
  if (name == "round") {
    int64_t precision = ArgInt(a.Get(0, "precision", Value::Int(0)), line, "precision");
    std::string method = ToStr(a.Get(1, "method", Value::Str("common")));
    if (method != "common" && method != "ceil" && method != "floor") {
      Fail("method must be 'common', 'ceil' or 'floor'", line);
    }
    if (method == "common") {
      if (IsIntLike(v)) return Value::Int(IntOf(v));
      if (v.kind != Kind::kFloat) Fail("type " + TypeName(v) + " doesn't define __round__", line);
      return Value::Float(PyRound(v.f, precision));
    }
    if (!v.is_number()) Fail("must be real number, not " + TypeName(v), line);
    double x = v.kind == Kind::kFloat ? v.f : static_cast<double>(IntOf(v));
    double p = std::pow(10.0, static_cast<double>(precision));
    double r = method == "ceil" ? std::ceil(x * p) : std::floor(x * p);
    return Value::Float(r / p);
  }
  if (name == "dictsort") {
    if (v.kind != Kind::kDict) Fail("dictsort: expected a mapping", line);
    bool case_sensitive = Truthy(a.Get(0, "case_sensitive", Value::Bool(false)));
    std::string by = ToStr(a.Get(1, "by", Value::Str("key")));
    bool reverse = Truthy(a.Get(2, "reverse", Value::Bool(false)));
    if (by != "key" && by != "value")
      Fail("You can only sort by either \"key\" or \"value\"", line);
    std::vector<std::pair<Value, Value>> keyed;
    for (const auto& [k, val] : v.dict->entries) {
      Value key = by == "key" ? k : val;
      keyed.emplace_back(case_sensitive ? key : IgnoreCase(key), Value::MakeTuple({k, val}));
    }
    SortValues(&keyed, reverse, line);
    List out;
    for (auto& [k, item] : keyed) out.push_back(item);
    return Value::MakeList(std::move(out));
  }
  if (name == "sort") {
    bool reverse = Truthy(a.Get(0, "reverse", Value::Bool(false)));
    bool case_sensitive = Truthy(a.Get(1, "case_sensitive", Value::Bool(false)));
    Value attribute = a.Get(2, "attribute", Value::None());
    std::vector<std::pair<Value, Value>> keyed;
    for (const Value& item : list_of()) {
      Value key = Attribute(this, item, attribute, line);
      keyed.emplace_back(case_sensitive ? key : IgnoreCase(key), item);
    }
    SortValues(&keyed, reverse, line);
    List out;
    for (auto& [k, item] : keyed) out.push_back(item);
    return Value::MakeList(std::move(out));
  }
  if (name == "reverse") {
    if (v.kind == Kind::kString) {
      std::vector<char32_t> cps = DecodeUtf8(*v.str);
      std::reverse(cps.begin(), cps.end());
      return Value::Str(EncodeUtf8(cps));
    }
    List items = list_of();
    std::reverse(items.begin(), items.end());
    return v.kind == Kind::kGenerator ? Value::MakeList(std::move(items))
                                      : Value::MakeGenerator(std::move(items));
  }
  if (name == "batch") {
    int64_t n = ArgInt(a.Get(0, "linecount"), line, "linecount");
    Value fill = a.Get(1, "fill_with", Value::None());
    if (n <= 0) Fail("batch: linecount must be positive", line);
    List out, tmp;
    for (const Value& item : list_of()) {
      if (static_cast<int64_t>(tmp.size()) == n) {
        out.push_back(Value::MakeList(std::move(tmp)));
        tmp.clear();
      }
      tmp.push_back(item);
    }
    if (!tmp.empty()) {
      if (!fill.is_none()) {
        while (static_cast<int64_t>(tmp.size()) < n) tmp.push_back(fill);
      }
      out.push_back(Value::MakeList(std::move(tmp)));
    }
    return Value::MakeGenerator(std::move(out));
  }
  if (name == "wordcount") {
    int64_t n = 0;
    bool in_word = false;
    for (char32_t c : DecodeUtf8(as_str())) {
      bool w = IsAlnumWord(c);
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value::Int(n);
  }
  if (name == "center") {
    CallArgs m;
    m.line = line;
    m.pos = {a.Get(0, "width", Value::Int(80))};
    return KeepSafe(v, *CallValue(StringMethod(Value::Str(as_str()), "center", line), m, line).str);
  }
  if (name == "escape" || name == "e" || name == "forceescape") {
    if (v.safe && name != "forceescape") return v;
    return Value::SafeStr(v.is_none() && name != "forceescape" ? "None" : HtmlEscape(as_str()));
  }
  if (name == "attr") return GetAttr(v, ToStr(a.Get(0, "name")), line);
  if (name == "sum") {
    Value attribute = a.Get(0, "attribute", Value::None());
    Value total = a.Get(1, "start", Value::Int(0));
    for (const Value& item : list_of()) {
      Value x = Attribute(this, item, attribute, line);
      if (!total.is_number() || !x.is_number()) {
        Fail("unsupported operand type(s) for +: '" + TypeName(total) + "' and '" + TypeName(x) +
                 "'",
             line);
      }
      if (total.kind == Kind::kFloat || x.kind == Kind::kFloat) {
        double s = (total.kind == Kind::kFloat ? total.f : static_cast<double>(IntOf(total))) +
                   (x.kind == Kind::kFloat ? x.f : static_cast<double>(IntOf(x)));
        total = Value::Float(s);
      } else {
        int64_t s;
        if (__builtin_add_overflow(IntOf(total), IntOf(x), &s)) Fail("integer overflow", line);
        total = Value::Int(s);
      }
    }
    return total;
  }
  if (name == "min" || name == "max") {
    bool case_sensitive = Truthy(a.Get(0, "case_sensitive", Value::Bool(false)));
    Value attribute = a.Get(1, "attribute", Value::None());
    List items = list_of();
    if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
    size_t best = 0;
    auto key = [&](size_t k) {
      Value x = Attribute(this, items[k], attribute, line);
      return case_sensitive ? x : IgnoreCase(x);
    };
    for (size_t k = 1; k < items.size(); ++k) {
      int c = Compare(key(k), key(best), line);
      if (name == "min" ? c < 0 : c > 0) best = k;
    }
    return items[best];
  }
  Fail("unsupported filter '" + name + "'", line);
}

bool Renderer::ApplyTest(const std::string& name, const Value& v, CallArgs& a) {
  const int line = a.line;
  auto arg = [&]() { return a.Get(0, "other"); };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.kind == Kind::kString;
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind == Kind::kInt;
  if (name == "float") return v.kind == Kind::kFloat;
  if (name == "boolean") return v.kind == Kind::kBool;
  if (name == "true") return v.kind == Kind::kBool && v.b;
  if (name == "false") return v.kind == Kind::kBool && !v.b;
  if (name == "mapping") return v.kind == Kind::kDict;
  // jinja2: len() and __getitem__ exist -> str, list, tuple, dict, and Undefined.
  if (name == "sequence") {
    return v.kind == Kind::kString || v.is_sequence() || v.kind == Kind::kDict || v.is_undefined();
  }
  if (name == "iterable") {
    return v.kind == Kind::kString || v.is_sequence() || v.kind == Kind::kDict ||
           v.kind == Kind::kGenerator || v.is_undefined();
  }
  if (name == "callable") return v.kind == Kind::kCallable;
  if (name == "odd" || name == "even") {
    if (!IsIntLike(v)) {
      if (v.kind == Kind::kFloat)
        return std::fmod(std::fabs(v.f), 2.0) == (name == "odd" ? 1.0 : 0.0);
      Fail("unsupported operand type(s) for %: '" + TypeName(v) + "' and 'int'", line);
    }
    int64_t r = ((IntOf(v) % 2) + 2) % 2;
    return name == "odd" ? r == 1 : r == 0;
  }
  if (name == "divisibleby") {
    Value n = a.Get(0, "num");
    if (!IsIntLike(v) || !IsIntLike(n)) Fail("divisibleby: integers expected", line);
    if (IntOf(n) == 0) Fail("integer division or modulo by zero", line);
    return IntOf(v) % IntOf(n) == 0;
  }
  if (name == "==" || name == "eq" || name == "equalto") return Equal(v, arg());
  if (name == "!=" || name == "ne") return !Equal(v, arg());
  if (name == "<" || name == "lt") return Compare(v, arg(), line) < 0;
  if (name == "<=" || name == "le") return Compare(v, arg(), line) <= 0;
  if (name == ">" || name == "gt") return Compare(v, arg(), line) > 0;
  if (name == ">=" || name == "ge") return Compare(v, arg(), line) >= 0;
  if (name == "in") return Contains(a.Get(0, "seq"), v, line);
  if (name == "sameas") {
    Value o = a.Get(0, "other");
    if (v.kind != o.kind) return false;
    if (v.is_none() || v.is_undefined()) return true;
    if (v.kind == Kind::kBool) return v.b == o.b;
    if (v.kind == Kind::kInt) return v.i == o.i && v.i >= -5 && v.i <= 256;
    return v.list == o.list && v.dict == o.dict && v.str == o.str && v.fn == o.fn;
  }
  if (name == "lower" || name == "upper") {
    CallArgs none;
    none.line = line;
    Value s = Value::Str(ToStr(v));
    return Truthy(
        CallValue(StringMethod(s, name == "lower" ? "islower" : "isupper", line), none, line));
  }
  if (name == "escaped") return false;
  if (name == "filter" || name == "test") {
    Fail("unsupported construct 'is " + name + "'", line);
  }
  Fail("unsupported test '" + name + "'", line);
}

}  // namespace kvstash::engine::jinja
