// Syntax tree of a parsed Jinja template (built by parser.cc, walked by interpreter.cc).
//
// Nodes are generic records: the kind says which fields are used. A tree is immutable after
// parsing and shared by concurrent renders.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat/jinja/value.h"

namespace kvstash::engine::jinja {

enum class ExprKind : uint8_t {
  kLiteral,  // literal
  kName,     // name
  kList,     // args: elements
  kTuple,    // args: elements
  kDict,     // args: key0, value0, key1, value1, ...
  kAttr,     // args[0].name
  kItem,     // args[0][args[1]]
  kSlice,    // args[0][args[1]:args[2]:args[3]] (null: omitted)
  kCall,     // args[0](args[1..], kwargs)
  kFilter,   // args[0] | name(args[1..], kwargs); args[0] null inside {% filter %} / {% set %}
  kTest,     // args[0] is [not] name(args[1..], kwargs); negated
  kNeg,      // -args[0]
  kPos,      // +args[0]
  kNot,      // not args[0]
  kBinary,   // args[0] op args[1]: + - * / // % ** ~
  kAnd,
  kOr,
  kCompare,  // args[0] ops[0] args[1] ops[1] args[2] ...: == != < <= > >= in notin
  kCond,     // args[1] if args[0] else args[2] (null: undefined)
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind;
  int line = 0;
  int col = 0;
  std::string name;  // kName, kAttr, kFilter, kTest; kBinary: the operator
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare
  bool negated = false;          // kTest
  int depth = 1;                 // 1 + the deepest child (bounded by the parser)
};

enum class StmtKind : uint8_t {
  kText,       // text
  kOutput,     // {{ expr }}
  kIf,         // branches (cond null: else)
  kFor,        // targets in expr [if cond]: body [else else_body]
  kSet,        // targets = expr | attr_target.name = expr
  kSetBlock,   // {% set targets[0] [| filter] %}body{% endset %}: expr is the filter chain or null
  kMacro,      // name(params) body
  kCallBlock,  // {% call(params) expr %}body{% endcall %}
  kFilterBlock,  // {% filter expr %}body{% endfilter %}
  kBreak,
  kContinue,
  kScope,  // {% generation %}, {% with a=1 %}: body in a child scope; params: with's assignments
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;                                // kText
  ExprPtr expr;                                    // see StmtKind
  ExprPtr cond;                                    // kFor: the inline `if`
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf
  std::vector<std::string> targets;                // kFor, kSet, kSetBlock
  ExprPtr attr_target;                             // kSet `ns.attr = ...`: the `ns` expression
  std::string attr_name;
  Body body;
  Body else_body;
  std::string name;                                     // kMacro
  std::vector<std::pair<std::string, ExprPtr>> params;  // kMacro, kCallBlock, kScope
  bool catch_varargs = false;                           // kMacro/kCallBlock uses `varargs`
  bool catch_kwargs = false;                            // ... uses `kwargs`
};

}  // namespace kvstash::engine::jinja
