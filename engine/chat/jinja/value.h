// Runtime values of the Jinja interpreter, with Python's semantics for the operations chat
// templates use: truthiness, str()/repr(), equality and ordering (raising where Python raises),
// json.dumps() formatting, and code-point-based string helpers.
//
// Values are small handles: scalars inline, strings/lists/dicts shared and immutable once built
// (ImmutableSandboxedEnvironment forbids mutating them); only namespace() objects are mutated in
// place. A Value must not outlive the Render() call that produced it when it holds a Callable
// (macros capture the renderer). Thread safety: a Value may be read concurrently when nothing
// mutates it; values of one render are never shared with another.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/chat/jinja/text.h"

namespace kvstash::engine::jinja {

// Raised inside the interpreter and converted to Status at the Template API boundary; it never
// leaves engine/chat/jinja.
struct JinjaError {
  std::string message;
  int line = 0;
  int col = 0;
};
[[noreturn]] void Fail(std::string message, int line = 0);

enum class Kind : uint8_t {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,
  kTuple,
  kDict,
  kNamespace,
  kCallable,
  kLoop,
  kGenerator,  // the result of map/select/...: truthy even when empty, no len()
};

// Deepest container nesting a value may have (Python's own recursion limit is ~1000).
constexpr uint32_t kMaxValueDepth = 256;

struct Value;
struct Dict;
struct Callable;
struct LoopInfo;
using List = std::vector<Value>;

struct Value {
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::shared_ptr<const std::string> str;  // kString; kUndefined: what was undefined (errors)
  std::shared_ptr<const List> list;        // kList, kTuple, kGenerator
  std::shared_ptr<Dict> dict;              // kDict (immutable by convention), kNamespace
  std::shared_ptr<const Callable> fn;      // kCallable
  std::shared_ptr<LoopInfo> loop;          // kLoop
  // Container nesting (0 for scalars) and whether a namespace is reachable: bounded so that
  // printing, comparing and destroying a value cannot exhaust the native stack, and so that no
  // namespace can be stored inside itself.
  uint32_t depth = 0;
  bool holds_namespace = false;
  // kString: a markupsafe.Markup ("safe") string. With autoescape off (as in transformers) it
  // prints as-is, but `Markup + str` escapes the str, as Python does.
  bool safe = false;

  static Value Undefined(std::string hint = {});
  static Value None();
  static Value Bool(bool v);
  static Value Int(int64_t v);
  static Value Float(double v);
  static Value Str(std::string v);
  static Value SafeStr(std::string v);  // a Markup string
  static Value MakeList(List items);
  static Value MakeTuple(List items);
  static Value MakeGenerator(List items);
  static Value MakeDict(std::shared_ptr<Dict> d);
  static Value MakeNamespace(std::shared_ptr<Dict> d);
  static Value MakeCallable(std::string name, std::function<Value(struct CallArgs&)> fn);

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_none() const { return kind == Kind::kNone; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const {
    return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool;
  }
  bool is_sequence() const { return kind == Kind::kList || kind == Kind::kTuple; }
  bool is_mapping() const { return kind == Kind::kDict; }
  const std::string& s() const { return *str; }
  const List& items() const { return *list; }
  // The undefined value's description for error messages ("'x' is undefined").
  std::string UndefinedMessage() const;
};

// An insertion-ordered dict (Python 3.7+). Keys are compared with Python equality (1 == 1.0 ==
// True). Small dicts are searched linearly; a string index is kept for large ones.
struct Dict {
  std::vector<std::pair<Value, Value>> entries;

  const Value* Find(const Value& key) const;
  const Value* Find(std::string_view key) const;
  void Set(Value key, Value value);
  size_t size() const { return entries.size(); }
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  int line = 0;

  // Argument `index` or keyword `name`; Undefined when absent. Marks nothing.
  Value Get(size_t index, std::string_view name, Value dflt = Value::Undefined()) const;
  bool Has(size_t index, std::string_view name) const;
};

struct Callable {
  std::string name;
  std::function<Value(CallArgs&)> fn;
};

// State of a running for loop, exposed to the template as `loop`.
struct LoopInfo {
  std::shared_ptr<const List> items;
  size_t index0 = 0;
  int depth0 = 0;
};

// ---- Python semantics -------------------------------------------------------------------------

bool Truthy(const Value& v);
// str(v): strings as-is, undefined as "", containers via Repr of their elements.
std::string ToStr(const Value& v);
std::string Repr(const Value& v);
std::string FloatRepr(double d);
std::string PyStrRepr(std::string_view s);
// markupsafe.escape(): & < > ' " as &amp; &lt; &gt; &#39; &#34;.
std::string HtmlEscape(std::string_view s);
// Python ==. Never raises.
bool Equal(const Value& a, const Value& b);
// Python ordering (<0, 0, >0) for numbers, strings and sequences; raises TypeError otherwise.
int Compare(const Value& a, const Value& b, int line);
std::string TypeName(const Value& v);

// json.dumps(v, ensure_ascii=False, indent, separators, sort_keys); indent < 0 means None.
struct JsonDumpOptions {
  int indent = -1;
  std::string indent_str;  // used when set (indent given as a string)
  bool has_indent = false;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
std::string JsonDumps(const Value& v, const JsonDumpOptions& options, int line);

Value FromJson(const nlohmann::ordered_json& j);
Value FromJson(const nlohmann::json& j);

inline bool IsIntLike(const Value& v) { return v.kind == Kind::kInt || v.kind == Kind::kBool; }
inline int64_t IntOf(const Value& v) { return v.kind == Kind::kBool ? (v.b ? 1 : 0) : v.i; }
// An int (or bool) argument of `what`; raises a TypeError-like error otherwise.
int64_t ArgInt(const Value& v, int line, const char* what);
std::string ArgStr(const Value& v, int line, const char* what);

}  // namespace kvstash::engine::jinja
