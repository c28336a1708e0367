// Compile-time name checks of a parsed template (parser.h), as jinja2's code generator makes
// them: a filter or test that Jinja does not know is an error at parse time, except inside an
// `if` statement or a conditional expression ("soft" frames), where jinja2 defers the error to
// the call.
#include <algorithm>
#include <iterator>

#include "engine/chat/jinja/parser.h"

namespace kvstash::engine::jinja {
namespace {

// jinja2 fails at compile time on a filter or test name it does not know, except inside an
// `if` statement or a conditional expression (a "soft" frame), where it fails only when called.
bool IsJinjaFilter(const std::string& n) {
  static const char* kNames[] = {
      "abs",    "attr",       "batch",       "capitalize", "center",   "count",
      "d",      "default",    "dictsort",    "e",          "escape",   "filesizeformat",
      "first",  "float",      "forceescape", "format",     "groupby",  "indent",
      "int",    "items",      "join",        "last",       "length",   "list",
      "lower",  "map",        "max",         "min",        "pprint",   "random",
      "reject", "rejectattr", "replace",     "reverse",    "round",    "safe",
      "select", "selectattr", "slice",       "sort",       "string",   "striptags",
      "sum",    "title",      "tojson",      "trim",       "truncate", "unique",
      "upper",  "urlencode",  "urlize",      "wordcount",  "wordwrap", "xmlattr"};
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* k) { return n == k; });
}
bool IsJinjaTest(const std::string& n) {
  static const char* kNames[] = {
      "!=",       "<",        "<=",          "==",       ">",           ">=",       "boolean",
      "callable", "defined",  "divisibleby", "eq",       "equalto",     "escaped",  "even",
      "false",    "filter",   "float",       "ge",       "greaterthan", "gt",       "in",
      "integer",  "iterable", "le",          "lessthan", "lower",       "lt",       "mapping",
      "ne",       "none",     "number",      "odd",      "sameas",      "sequence", "string",
      "test",     "true",     "undefined",   "upper"};
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* k) { return n == k; });
}

void CheckNames(const Expr& e, bool soft) {
  if (e.kind == ExprKind::kCond) soft = true;
  if (!soft && e.kind == ExprKind::kFilter && !IsJinjaFilter(e.name)) {
    throw JinjaError{"No filter named '" + e.name + "'.", e.line, e.col};
  }
  if (!soft && e.kind == ExprKind::kTest && !IsJinjaTest(e.name)) {
    throw JinjaError{"No test named '" + e.name + "'.", e.line, e.col};
  }
  for (const auto& a : e.args) {
    if (a) CheckNames(*a, soft);
  }
  for (const auto& [k, a] : e.kwargs) CheckNames(*a, soft);
}

}  // namespace

void CheckNames(const Stmt& s, bool soft) {
  if (s.kind == StmtKind::kIf) soft = true;
  if (s.expr) CheckNames(*s.expr, soft);
  if (s.attr_target) CheckNames(*s.attr_target, soft);
  for (const auto& [cond, body] : s.branches) {
    if (cond) CheckNames(*cond, soft);
    for (const auto& b : body) CheckNames(*b, soft);
  }
  // Loop, macro, call, set/filter block and with bodies are new (non-soft) frames.
  if (s.cond) CheckNames(*s.cond, false);
  for (const auto& [name, dflt] : s.params) {
    if (dflt) CheckNames(*dflt, false);
  }
  for (const auto& b : s.body) CheckNames(*b, false);
  for (const auto& b : s.else_body) CheckNames(*b, false);
}

}  // namespace kvstash::engine::jinja
