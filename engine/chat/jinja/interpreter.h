// The tree-walking evaluator behind Template::Render (internal to engine/chat/jinja).
//
// One Renderer per Render() call: it owns the scopes and counters of that render and is used by
// one thread. Errors are JinjaError exceptions, caught by Template::Render.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat/jinja/ast.h"
#include "engine/chat/jinja/template.h"
#include "engine/chat/jinja/value.h"

namespace kvstash::engine::jinja {

// Variables visible at one point: a for-loop iteration, a macro call, the template top level.
// Assignments go to the innermost scope; lookups walk outwards (jinja2's scoping: a `set` inside
// a loop body is gone at the next iteration and after the loop).
struct Scope {
  std::shared_ptr<Scope> parent;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* Find(std::string_view name) const;
  void Set(std::string name, Value v);
};
using ScopePtr = std::shared_ptr<Scope>;

class Renderer {
 public:
  explicit Renderer(const RenderOptions& options) : options_(options) {}

  std::string Run(const Body& body, const Value& context);

  // ---- shared with filters.cc ----
  Value GetAttr(const Value& obj, const std::string& name, int line);
  Value GetItem(const Value& obj, const Value& key, int line);
  Value ApplyFilter(const std::string& name, const Value& v, CallArgs& args, const ScopePtr& scope);
  bool ApplyTest(const std::string& name, const Value& v, CallArgs& args);
  Value CallValue(const Value& callee, CallArgs& args, int line);
  // The elements `for x in v` visits (dict: keys, string: characters). Raises for non-iterables.
  List Iterate(const Value& v, int line);
  // Refuses a string or list larger than the output limit (e.g. from 'x' * 10**9).
  void CheckSize(size_t bytes, int line) const;
  Value MakeGlobal(const std::string& name);
  Value StringMethod(const Value& self, const std::string& name, int line);
  Value DictMethod(const Value& self, const std::string& name, int line);
  Value ListMethod(const Value& self, const std::string& name, int line);

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Flow Exec(const Body& body, const ScopePtr& scope, std::string* out);
  Flow ExecStmt(const Stmt& s, const ScopePtr& scope, std::string* out);
  void ExecFor(const Stmt& s, const ScopePtr& scope, std::string* out);
  void ExecSet(const Stmt& s, const ScopePtr& scope);
  void Assign(const std::vector<std::string>& targets, const Value& v, const ScopePtr& scope,
              int line);
  Value MakeMacro(const Stmt& s, const ScopePtr& scope, std::string name);
  Value Eval(const Expr& e, const ScopePtr& scope);
  Value EvalBinary(const std::string& op, const Value& a, const Value& b, int line);
  Value EvalCompare(const Expr& e, const ScopePtr& scope);
  Value EvalFilterChain(const Expr& e, const Value& subject, const ScopePtr& scope);
  void EvalArgs(const Expr& e, size_t first, const ScopePtr& scope, CallArgs* args);
  Value Slice(const Value& obj, const Value& start, const Value& stop, const Value& step, int line);
  void Append(std::string* out, std::string_view text, int line) const;

  const RenderOptions& options_;
  size_t loop_iterations_ = 0;
  int call_depth_ = 0;
};

bool Contains(const Value& container, const Value& item, int line);
// Python's `fmt % arg` (printf-style); `escape`: Markup % args escapes the arguments.
std::string PercentFormat(const std::string& fmt, const Value& arg, int line, bool escape);

}  // namespace kvstash::engine::jinja
