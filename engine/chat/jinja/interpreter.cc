// Statement execution and expression evaluation (interpreter.h). Python's semantics are
// reproduced where chat templates can observe them: `and`/`or` return an operand, `/` is true
// division and `//`/`%` floor, `+` concatenates strings, lists and tuples, `~` stringifies both
// sides, comparisons of unrelated types raise, and any use of an undefined value other than
// printing, testing, iterating or `~` raises (jinja2's default Undefined).
#include "engine/chat/jinja/interpreter.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace kvstash::engine::jinja {

const Value* Scope::Find(std::string_view name) const {
  for (const Scope* s = this; s != nullptr; s = s->parent.get()) {
    for (auto it = s->vars.rbegin(); it != s->vars.rend(); ++it) {
      if (it->first == name) return &it->second;
    }
  }
  return nullptr;
}

void Scope::Set(std::string name, Value v) {
  for (auto& [k, val] : vars) {
    if (k == name) {
      val = std::move(v);
      return;
    }
  }
  vars.emplace_back(std::move(name), std::move(v));
}

std::string Renderer::Run(const Body& body, const Value& context) {
  auto globals = std::make_shared<Scope>();
  for (const char* g : {"range", "dict", "namespace", "raise_exception", "strftime_now"}) {
    globals->Set(g, MakeGlobal(g));
  }
  auto top = std::make_shared<Scope>();
  top->parent = globals;
  if (context.kind == Kind::kDict) {
    for (const auto& [k, v] : context.dict->entries) {
      if (k.kind == Kind::kString) top->Set(*k.str, v);
    }
  }
  std::string out;
  Exec(body, top, &out);
  return out;
}

void Renderer::CheckSize(size_t bytes, int line) const {
  if (bytes > options_.max_output_bytes) {
    Fail("output exceeds the limit of " + std::to_string(options_.max_output_bytes) + " bytes",
         line);
  }
}

void Renderer::Append(std::string* out, std::string_view text, int line) const {
  CheckSize(out->size() + text.size(), line);
  out->append(text);
}

Renderer::Flow Renderer::Exec(const Body& body, const ScopePtr& scope, std::string* out) {
  for (const auto& s : body) {
    Flow f = ExecStmt(*s, scope, out);
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

Renderer::Flow Renderer::ExecStmt(const Stmt& s, const ScopePtr& scope, std::string* out) {
  switch (s.kind) {
    case StmtKind::kText:
      Append(out, s.text, s.line);
      return Flow::kNormal;
    case StmtKind::kOutput: {
      Value v = Eval(*s.expr, scope);
      Append(out, ToStr(v), s.line);
      return Flow::kNormal;
    }
    case StmtKind::kIf:
      for (const auto& [cond, body] : s.branches) {
        if (cond == nullptr || Truthy(Eval(*cond, scope))) return Exec(body, scope, out);
      }
      return Flow::kNormal;
    case StmtKind::kFor:
      ExecFor(s, scope, out);
      return Flow::kNormal;
    case StmtKind::kSet:
      ExecSet(s, scope);
      return Flow::kNormal;
    case StmtKind::kSetBlock: {
      std::string text;
      auto inner = std::make_shared<Scope>();
      inner->parent = scope;
      Exec(s.body, inner, &text);
      Value v = Value::Str(std::move(text));
      if (s.expr) v = EvalFilterChain(*s.expr, v, scope);
      scope->Set(s.targets[0], v);
      return Flow::kNormal;
    }
    case StmtKind::kMacro:
      scope->Set(s.name, MakeMacro(s, scope, s.name));
      return Flow::kNormal;
    case StmtKind::kCallBlock: {
      const Expr& call = *s.expr;
      Value callee = Eval(*call.args[0], scope);
      CallArgs args;
      args.line = s.line;
      EvalArgs(call, 1, scope, &args);
      args.kw.emplace_back("caller", MakeMacro(s, scope, "caller"));
      Append(out, ToStr(CallValue(callee, args, s.line)), s.line);
      return Flow::kNormal;
    }
    case StmtKind::kFilterBlock: {
      std::string text;
      auto inner = std::make_shared<Scope>();
      inner->parent = scope;
      Exec(s.body, inner, &text);
      Append(out, ToStr(EvalFilterChain(*s.expr, Value::Str(std::move(text)), scope)), s.line);
      return Flow::kNormal;
    }
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
    case StmtKind::kScope: {
      auto inner = std::make_shared<Scope>();
      inner->parent = scope;
      for (const auto& [name, expr] : s.params) inner->Set(name, Eval(*expr, scope));
      return Exec(s.body, inner, out);
    }
  }
  return Flow::kNormal;
}

void Renderer::Assign(const std::vector<std::string>& targets, const Value& v,
                      const ScopePtr& scope, int line) {
  if (targets.size() == 1) {
    scope->Set(targets[0], v);
    return;
  }
  List items = Iterate(v, line);
  if (items.size() != targets.size()) {
    Fail(items.size() < targets.size()
             ? "not enough values to unpack (expected " + std::to_string(targets.size()) +
                   ", got " + std::to_string(items.size()) + ")"
             : "too many values to unpack (expected " + std::to_string(targets.size()) + ")",
         line);
  }
  for (size_t k = 0; k < targets.size(); ++k) scope->Set(targets[k], items[k]);
}

void Renderer::ExecFor(const Stmt& s, const ScopePtr& scope, std::string* out) {
  List all = Iterate(Eval(*s.expr, scope), s.line);
  List items;
  if (s.cond) {
    for (const Value& item : all) {
      auto probe = std::make_shared<Scope>();
      probe->parent = scope;
      Assign(s.targets, item, probe, s.line);
      if (Truthy(Eval(*s.cond, probe))) items.push_back(item);
    }
  } else {
    items = std::move(all);
  }
  if (items.empty()) {
    auto inner = std::make_shared<Scope>();
    inner->parent = scope;
    Exec(s.else_body, inner, out);
    return;
  }
  auto info = std::make_shared<LoopInfo>();
  info->items = std::make_shared<const List>(std::move(items));
  Value loop;
  loop.kind = Kind::kLoop;
  loop.loop = info;
  for (size_t k = 0; k < info->items->size(); ++k) {
    if (++loop_iterations_ > options_.max_loop_iterations) {
      Fail("more than " + std::to_string(options_.max_loop_iterations) + " loop iterations",
           s.line);
    }
    info->index0 = k;
    auto inner = std::make_shared<Scope>();
    inner->parent = scope;
    inner->Set("loop", loop);
    Assign(s.targets, (*info->items)[k], inner, s.line);
    if (Exec(s.body, inner, out) == Flow::kBreak) break;
  }
}

void Renderer::ExecSet(const Stmt& s, const ScopePtr& scope) {
  Value v = Eval(*s.expr, scope);
  if (s.attr_target) {
    Value target = Eval(*s.attr_target, scope);
    if (target.kind != Kind::kNamespace) {
      Fail("cannot assign attribute on non-namespace object", s.line);
    }
    // A namespace reachable from its own attribute would be a reference cycle (leaked, and
    // printed forever); chat templates only store plain data there.
    if (v.holds_namespace || v.kind == Kind::kCallable || v.kind == Kind::kLoop) {
      Fail("unsupported construct 'storing a " + TypeName(v) + " in a namespace attribute'",
           s.line);
    }
    target.dict->Set(Value::Str(s.attr_name), std::move(v));
    return;
  }
  Assign(s.targets, v, scope, s.line);
}

Value Renderer::MakeMacro(const Stmt& s, const ScopePtr& scope, std::string name) {
  const Stmt* def = &s;
  // Weak: the scope holds the macro, so a strong reference would be a cycle.
  std::weak_ptr<Scope> weak_closure = scope;
  Renderer* self = this;
  return Value::MakeCallable(name, [def, weak_closure, self, name](CallArgs& args) -> Value {
    ScopePtr closure = weak_closure.lock();
    if (!closure) {
      Fail("unsupported construct 'calling macro " + name + " after the block defining it ended'",
           args.line);
    }
    if (++self->call_depth_ > self->options_.max_call_depth) {
      Fail("macro calls nested deeper than " + std::to_string(self->options_.max_call_depth) +
               " (runaway recursion?)",
           args.line);
    }
    auto frame = std::make_shared<Scope>();
    frame->parent = closure;
    const size_t n_params = def->params.size();
    std::vector<bool> used_kw(args.kw.size(), false);
    for (size_t k = 0; k < n_params; ++k) {
      const std::string& pname = def->params[k].first;
      if (k < args.pos.size()) {
        frame->Set(pname, args.pos[k]);
        continue;
      }
      bool found = false;
      for (size_t j = 0; j < args.kw.size(); ++j) {
        if (args.kw[j].first == pname) {
          frame->Set(pname, args.kw[j].second);
          used_kw[j] = true;
          found = true;
          break;
        }
      }
      if (found) continue;
      if (def->params[k].second) {
        frame->Set(pname, self->Eval(*def->params[k].second, frame));
      } else {
        frame->Set(pname, Value::Undefined("parameter '" + pname + "' was not provided"));
      }
    }
    List varargs;
    for (size_t k = n_params; k < args.pos.size(); ++k) varargs.push_back(args.pos[k]);
    if (!varargs.empty() && !def->catch_varargs) {
      Fail("macro '" + name + "' takes not more than " + std::to_string(n_params) + " argument(s)",
           args.line);
    }
    auto kwargs = std::make_shared<Dict>();
    for (size_t j = 0; j < args.kw.size(); ++j) {
      if (used_kw[j]) continue;
      if (args.kw[j].first == "caller") {
        frame->Set("caller", args.kw[j].second);
        continue;
      }
      if (!def->catch_kwargs) {
        Fail("macro '" + name + "' takes no keyword argument '" + args.kw[j].first + "'",
             args.line);
      }
      kwargs->Set(Value::Str(args.kw[j].first), args.kw[j].second);
    }
    frame->Set("varargs", Value::MakeTuple(std::move(varargs)));
    frame->Set("kwargs", Value::MakeDict(kwargs));
    std::string text;
    self->Exec(def->body, frame, &text);
    --self->call_depth_;
    return Value::Str(std::move(text));
  });
}

Value Renderer::CallValue(const Value& callee, CallArgs& args, int line) {
  if (callee.kind == Kind::kCallable) return callee.fn->fn(args);
  if (callee.is_undefined()) Fail(callee.UndefinedMessage(), line);
  Fail("'" + TypeName(callee) + "' object is not callable", line);
}

void Renderer::EvalArgs(const Expr& e, size_t first, const ScopePtr& scope, CallArgs* args) {
  for (size_t k = first; k < e.args.size(); ++k) args->pos.push_back(Eval(*e.args[k], scope));
  for (const auto& [name, expr] : e.kwargs) args->kw.emplace_back(name, Eval(*expr, scope));
}

Value Renderer::EvalFilterChain(const Expr& e, const Value& subject, const ScopePtr& scope) {
  Value in;
  if (e.args[0] == nullptr) {
    in = subject;
  } else if (e.args[0]->kind == ExprKind::kFilter) {
    in = EvalFilterChain(*e.args[0], subject, scope);
  } else {
    in = Eval(*e.args[0], scope);
  }
  CallArgs args;
  args.line = e.line;
  EvalArgs(e, 1, scope, &args);
  return ApplyFilter(e.name, in, args, scope);
}

Value Renderer::Eval(const Expr& e, const ScopePtr& scope) {
  switch (e.kind) {
    case ExprKind::kLiteral:
      return e.literal;
    case ExprKind::kName: {
      const Value* v = scope->Find(e.name);
      return v ? *v : Value::Undefined("'" + e.name + "' is undefined");
    }
    case ExprKind::kList:
    case ExprKind::kTuple: {
      List items;
      for (const auto& a : e.args) items.push_back(Eval(*a, scope));
      return e.kind == ExprKind::kList ? Value::MakeList(std::move(items))
                                       : Value::MakeTuple(std::move(items));
    }
    case ExprKind::kDict: {
      auto d = std::make_shared<Dict>();
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key = Eval(*e.args[k], scope);
        if (key.is_sequence() && key.kind != Kind::kTuple) Fail("unhashable type: 'list'", e.line);
        if (key.kind == Kind::kDict) Fail("unhashable type: 'dict'", e.line);
        d->Set(std::move(key), Eval(*e.args[k + 1], scope));
      }
      return Value::MakeDict(std::move(d));
    }
    case ExprKind::kAttr:
      return GetAttr(Eval(*e.args[0], scope), e.name, e.line);
    case ExprKind::kItem:
      return GetItem(Eval(*e.args[0], scope), Eval(*e.args[1], scope), e.line);
    case ExprKind::kSlice: {
      Value obj = Eval(*e.args[0], scope);
      auto opt = [&](size_t k) { return e.args[k] ? Eval(*e.args[k], scope) : Value::None(); };
      return Slice(obj, opt(1), opt(2), opt(3), e.line);
    }
    case ExprKind::kCall: {
      Value callee = Eval(*e.args[0], scope);
      CallArgs args;
      args.line = e.line;
      EvalArgs(e, 1, scope, &args);
      return CallValue(callee, args, e.line);
    }
    case ExprKind::kFilter:
      return EvalFilterChain(e, Value::Undefined(), scope);
    case ExprKind::kTest: {
      Value v = Eval(*e.args[0], scope);
      CallArgs args;
      args.line = e.line;
      EvalArgs(e, 1, scope, &args);
      return Value::Bool(ApplyTest(e.name, v, args) != e.negated);
    }
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      Value v = Eval(*e.args[0], scope);
      if (v.kind == Kind::kBool) v = Value::Int(v.b ? 1 : 0);
      if (e.kind == ExprKind::kPos && v.is_number()) return v;
      if (v.kind == Kind::kInt) {
        if (v.i == INT64_MIN) Fail("integer overflow", e.line);
        return Value::Int(-v.i);
      }
      if (v.kind == Kind::kFloat) return Value::Float(-v.f);
      if (v.is_undefined()) Fail(v.UndefinedMessage(), e.line);
      Fail("bad operand type for unary -: '" + TypeName(v) + "'", e.line);
    }
    case ExprKind::kNot:
      return Value::Bool(!Truthy(Eval(*e.args[0], scope)));
    case ExprKind::kAnd: {
      Value a = Eval(*e.args[0], scope);
      return Truthy(a) ? Eval(*e.args[1], scope) : a;
    }
    case ExprKind::kOr: {
      Value a = Eval(*e.args[0], scope);
      return Truthy(a) ? a : Eval(*e.args[1], scope);
    }
    case ExprKind::kBinary:
      return EvalBinary(e.name, Eval(*e.args[0], scope), Eval(*e.args[1], scope), e.line);
    case ExprKind::kCompare:
      return EvalCompare(e, scope);
    case ExprKind::kCond:
      if (Truthy(Eval(*e.args[0], scope))) return Eval(*e.args[1], scope);
      if (e.args[2]) return Eval(*e.args[2], scope);
      return Value::Undefined(
          "the inline if-expression evaluated to false and no else section was defined");
  }
  return Value::Undefined();
}

bool Contains(const Value& container, const Value& item, int line) {
  switch (container.kind) {
    case Kind::kString:
      if (item.kind != Kind::kString) {
        Fail("'in <string>' requires string as left operand, not " + TypeName(item), line);
      }
      return container.str->find(*item.str) != std::string::npos;
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kGenerator:
      for (const Value& v : *container.list) {
        if (Equal(v, item)) return true;
      }
      return false;
    case Kind::kDict:
      return container.dict->Find(item) != nullptr;
    case Kind::kUndefined:
      return false;
    default:
      Fail("argument of type '" + TypeName(container) + "' is not iterable", line);
  }
}

Value Renderer::EvalCompare(const Expr& e, const ScopePtr& scope) {
  Value left = Eval(*e.args[0], scope);
  for (size_t k = 0; k < e.ops.size(); ++k) {
    Value right = Eval(*e.args[k + 1], scope);
    const std::string& op = e.ops[k];
    bool r;
    if (op == "==") {
      r = Equal(left, right);
    } else if (op == "!=") {
      r = !Equal(left, right);
    } else if (op == "in") {
      r = Contains(right, left, e.line);
    } else if (op == "notin") {
      r = !Contains(right, left, e.line);
    } else {
      int c = Compare(left, right, e.line);
      r = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
    }
    if (!r) return Value::Bool(false);
    left = std::move(right);
  }
  return Value::Bool(true);
}

namespace {

double FloatOf(const Value& v) {
  return v.kind == Kind::kFloat ? v.f : static_cast<double>(IntOf(v));
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

}  // namespace

Value Renderer::EvalBinary(const std::string& op, const Value& a, const Value& b, int line) {
  if (op == "~") {
    std::string s = ToStr(a);
    std::string t = ToStr(b);
    CheckSize(s.size() + t.size(), line);
    return Value::Str(s + t);
  }
  if (a.is_undefined()) Fail(a.UndefinedMessage(), line);
  if (b.is_undefined()) Fail(b.UndefinedMessage(), line);
  auto type_error = [&]() {
    Fail("unsupported operand type(s) for " + op + ": '" + TypeName(a) + "' and '" + TypeName(b) +
             "'",
         line);
  };
  if (a.is_number() && b.is_number()) {
    bool ints = IsIntLike(a) && IsIntLike(b);
    if (op == "/") {
      if (FloatOf(b) == 0) Fail("division by zero", line);
      return Value::Float(FloatOf(a) / FloatOf(b));
    }
    if (ints) {
      int64_t x = IntOf(a), y = IntOf(b), r = 0;
      bool overflow = false;
      if (op == "+") {
        overflow = __builtin_add_overflow(x, y, &r);
      } else if (op == "-") {
        overflow = __builtin_sub_overflow(x, y, &r);
      } else if (op == "*") {
        overflow = __builtin_mul_overflow(x, y, &r);
      } else if (op == "//" || op == "%") {
        if (y == 0) Fail("integer division or modulo by zero", line);
        if (x == INT64_MIN && y == -1) Fail("integer overflow", line);
        r = FloorDiv(x, y);
        if (op == "%") r = x - r * y;
      } else if (op == "**") {
        if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
        r = 1;
        for (int64_t k = 0; k < y && !overflow; ++k) {
          overflow = __builtin_mul_overflow(r, x, &r);
          if (r == 0 || r == 1) break;
          if (r == -1) {
            r = (y % 2 == 0) ? 1 : -1;
            break;
          }
        }
      }
      if (overflow) Fail("integer overflow (kvstash integers are 64-bit)", line);
      return Value::Int(r);
    }
    double x = FloatOf(a), y = FloatOf(b);
    if (op == "+") return Value::Float(x + y);
    if (op == "-") return Value::Float(x - y);
    if (op == "*") return Value::Float(x * y);
    if (op == "//" || op == "%") {
      // CPython's float_divmod.
      if (y == 0) Fail("float floor division by zero", line);
      double mod = std::fmod(x, y);
      double div = (x - mod) / y;
      if (mod != 0) {
        if ((y < 0) != (mod < 0)) {
          mod += y;
          div -= 1.0;
        }
      } else {
        mod = std::copysign(0.0, y);
      }
      if (op == "%") return Value::Float(mod);
      double floordiv;
      if (div != 0) {
        floordiv = std::floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
      } else {
        floordiv = std::copysign(0.0, x / y);
      }
      return Value::Float(floordiv);
    }
    if (op == "**") {
      if (x == 0 && y < 0) Fail("0.0 cannot be raised to a negative power", line);
      return Value::Float(std::pow(x, y));
    }
    type_error();
  }
  if (op == "+") {
    if (a.kind == Kind::kString && b.kind == Kind::kString) {
      CheckSize(a.str->size() + b.str->size(), line);
      if (a.safe || b.safe) {
        // Markup + str (and str + Markup, via Markup.__radd__) escapes the plain side.
        return Value::SafeStr((a.safe ? *a.str : HtmlEscape(*a.str)) +
                              (b.safe ? *b.str : HtmlEscape(*b.str)));
      }
      return Value::Str(*a.str + *b.str);
    }
    if ((a.kind == Kind::kList || a.kind == Kind::kTuple) && a.kind == b.kind) {
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return a.kind == Kind::kList ? Value::MakeList(std::move(items))
                                   : Value::MakeTuple(std::move(items));
    }
    type_error();
  }
  if (op == "*") {
    const Value& seq = IsIntLike(a) ? b : a;
    const Value& n = IsIntLike(a) ? a : b;
    if (!IsIntLike(n)) type_error();
    int64_t times = std::max<int64_t>(0, IntOf(n));
    if (seq.kind == Kind::kString) {
      CheckSize(seq.str->size() * static_cast<size_t>(std::min<int64_t>(times, 1LL << 40)), line);
      std::string out;
      for (int64_t k = 0; k < times; ++k) out += *seq.str;
      return seq.safe ? Value::SafeStr(std::move(out)) : Value::Str(std::move(out));
    }
    if (seq.kind == Kind::kList || seq.kind == Kind::kTuple) {
      CheckSize(seq.list->size() * static_cast<size_t>(std::min<int64_t>(times, 1LL << 40)) * 16,
                line);
      List items;
      for (int64_t k = 0; k < times; ++k)
        items.insert(items.end(), seq.list->begin(), seq.list->end());
      return seq.kind == Kind::kList ? Value::MakeList(std::move(items))
                                     : Value::MakeTuple(std::move(items));
    }
    type_error();
  }
  if (op == "%" && a.kind == Kind::kString) {
    if (a.safe) return Value::SafeStr(PercentFormat(*a.str, b, line, /*escape=*/true));
    return Value::Str(PercentFormat(*a.str, b, line, /*escape=*/false));
  }
  Fail(
      "unsupported operand type(s) for " + op + ": '" + TypeName(a) + "' and '" + TypeName(b) + "'",
      line);
}

List Renderer::Iterate(const Value& v, int line) {
  switch (v.kind) {
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kGenerator:
      return *v.list;
    case Kind::kDict: {
      List keys;
      keys.reserve(v.dict->size());
      for (const auto& [k, val] : v.dict->entries) keys.push_back(k);
      return keys;
    }
    case Kind::kString: {
      List chars;
      for (char32_t cp : DecodeUtf8(*v.str)) {
        std::string s;
        AppendUtf8(&s, cp);
        chars.push_back(Value::Str(std::move(s)));
      }
      return chars;
    }
    case Kind::kUndefined:
      return {};
    default:
      Fail("'" + TypeName(v) + "' object is not iterable", line);
  }
}

Value Renderer::Slice(const Value& obj, const Value& start, const Value& stop, const Value& step,
                      int line) {
  if (obj.is_undefined()) Fail(obj.UndefinedMessage(), line);
  auto index = [&](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    if (!IsIntLike(v)) {
      Fail(std::string("slice ") + what + " indices must be integers or None", line);
    }
    return IntOf(v);
  };
  std::optional<int64_t> b = index(start, "start"), e = index(stop, "stop"),
                         s = index(step, "step");
  int64_t st = s.value_or(1);
  if (st == 0) Fail("slice step cannot be zero", line);
  std::vector<char32_t> cps;
  int64_t n;
  if (obj.kind == Kind::kString) {
    cps = DecodeUtf8(*obj.str);
    n = static_cast<int64_t>(cps.size());
  } else if (obj.kind == Kind::kList || obj.kind == Kind::kTuple) {
    n = static_cast<int64_t>(obj.list->size());
  } else {
    Fail("'" + TypeName(obj) + "' object is not subscriptable", line);
  }
  // CPython's PySlice_AdjustIndices.
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) -> int64_t {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t lo = adjust(b, st < 0 ? n - 1 : 0);
  int64_t hi = adjust(e, st < 0 ? -1 : n);
  std::vector<int64_t> idx;
  if (st > 0) {
    for (int64_t k = lo; k < hi; k += st) idx.push_back(k);
  } else {
    for (int64_t k = lo; k > hi; k += st) idx.push_back(k);
  }
  if (obj.kind == Kind::kString) {
    std::string out;
    for (int64_t k : idx) AppendUtf8(&out, cps[k]);
    return Value::Str(std::move(out));
  }
  List items;
  for (int64_t k : idx) items.push_back((*obj.list)[k]);
  return obj.kind == Kind::kList ? Value::MakeList(std::move(items))
                                 : Value::MakeTuple(std::move(items));
}

Value Renderer::GetItem(const Value& obj, const Value& key, int line) {
  switch (obj.kind) {
    case Kind::kUndefined:
      Fail(obj.UndefinedMessage(), line);
    case Kind::kDict: {
      const Value* v = obj.dict->Find(key);
      if (v) return *v;
      break;
    }
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kString:
      if (IsIntLike(key)) {
        int64_t i = IntOf(key);
        if (obj.kind == Kind::kString) {
          std::vector<char32_t> cps = DecodeUtf8(*obj.str);
          int64_t n = static_cast<int64_t>(cps.size());
          if (i < 0) i += n;
          if (i < 0 || i >= n) return Value::Undefined("string index out of range");
          std::string s;
          AppendUtf8(&s, cps[i]);
          return Value::Str(std::move(s));
        }
        int64_t n = static_cast<int64_t>(obj.list->size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::Undefined("list index out of range");
        return (*obj.list)[i];
      }
      break;
    default:
      break;
  }
  if (key.kind == Kind::kString) return GetAttr(obj, *key.str, line);
  return Value::Undefined("'" + TypeName(obj) + " object' has no attribute " + Repr(key));
}

Value Renderer::GetAttr(const Value& obj, const std::string& name, int line) {
  switch (obj.kind) {
    case Kind::kUndefined:
      Fail(obj.UndefinedMessage(), line);
    case Kind::kDict: {
      Value m = DictMethod(obj, name, line);
      if (!m.is_undefined()) return m;
      const Value* v = obj.dict->Find(std::string_view(name));
      if (v) return *v;
      break;
    }
    case Kind::kNamespace: {
      const Value* v = obj.dict->Find(std::string_view(name));
      if (v) return *v;
      break;
    }
    case Kind::kString: {
      Value m = StringMethod(obj, name, line);
      if (!m.is_undefined()) return m;
      break;
    }
    case Kind::kList:
    case Kind::kTuple: {
      Value m = ListMethod(obj, name, line);
      if (!m.is_undefined()) return m;
      break;
    }
    case Kind::kLoop: {
      const LoopInfo& l = *obj.loop;
      const auto n = static_cast<int64_t>(l.items->size());
      const auto i = static_cast<int64_t>(l.index0);
      if (name == "index") return Value::Int(i + 1);
      if (name == "index0") return Value::Int(i);
      if (name == "revindex") return Value::Int(n - i);
      if (name == "revindex0") return Value::Int(n - i - 1);
      if (name == "first") return Value::Bool(i == 0);
      if (name == "last") return Value::Bool(i == n - 1);
      if (name == "length") return Value::Int(n);
      if (name == "depth") return Value::Int(l.depth0 + 1);
      if (name == "depth0") return Value::Int(l.depth0);
      if (name == "previtem") {
        return i > 0 ? (*l.items)[i - 1] : Value::Undefined("there is no previous item");
      }
      if (name == "nextitem") {
        return i + 1 < n ? (*l.items)[i + 1] : Value::Undefined("there is no next item");
      }
      if (name == "cycle") {
        return Value::MakeCallable("cycle", [i](CallArgs& args) -> Value {
          if (args.pos.empty()) Fail("no items for cycling given", args.line);
          return args.pos[static_cast<size_t>(i) % args.pos.size()];
        });
      }
      break;
    }
    default:
      break;
  }
  return Value::Undefined("'" + TypeName(obj) + " object' has no attribute '" + name + "'");
}

}  // namespace kvstash::engine::jinja
