// Recursive-descent Jinja parser (parser.h). The precedence ladder is jinja2's, lowest first:
// conditional `a if c else b`, or, and, not, comparisons (== != < <= > >= in, not in), + -, ~,
// * / // %, ** (left-associative, as in jinja2), unary - +, then postfix (.attr [item] (call))
// and, at the same level, filters `| f` and tests `is [not] t`. Statement tags are dispatched
// on their first name.
#include "engine/chat/jinja/parser.h"

#include <algorithm>
#include <initializer_list>

#include "engine/chat/jinja/lexer.h"

namespace kvstash::engine::jinja {
namespace {

// Deep nesting is refused before it can exhaust the native stack (fuzzed inputs).
constexpr int kMaxNesting = 200;
constexpr int kMaxExprDepth = 400;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Body Run() {
    std::string which;
    Body body = ParseBody({}, &which);
    for (const auto& st : body) CheckNames(*st, false);
    return body;
  }

 private:
  // ---- token helpers ----
  const Token& Cur() const { return t_[p_]; }
  const Token& Peek(size_t n = 1) const { return t_[std::min(p_ + n, t_.size() - 1)]; }
  void Next() {
    if (p_ + 1 < t_.size()) ++p_;
  }
  bool IsOp(std::string_view op) const { return Cur().kind == TokenKind::kOp && Cur().value == op; }
  bool IsName(std::string_view n) const {
    return Cur().kind == TokenKind::kName && Cur().value == n;
  }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(std::string_view n) {
    if (!IsName(n)) return false;
    Next();
    return true;
  }
  [[noreturn]] void Error(const std::string& what) const {
    throw JinjaError{what, Cur().line, Cur().col};
  }
  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case TokenKind::kData:
        return "template data";
      case TokenKind::kVarBegin:
        return "'{{'";
      case TokenKind::kVarEnd:
        return "'}}'";
      case TokenKind::kBlockBegin:
        return "'{%'";
      case TokenKind::kBlockEnd:
        return "end of statement block";
      case TokenKind::kEof:
        return "end of template";
      default:
        return "'" + t.value + "'";
    }
  }
  void ExpectOp(std::string_view op) {
    if (!SkipOp(op)) Error("expected '" + std::string(op) + "', got " + Describe(Cur()));
  }
  std::string ExpectName() {
    if (Cur().kind != TokenKind::kName) Error("expected a name, got " + Describe(Cur()));
    std::string n = Cur().value;
    Next();
    return n;
  }
  void ExpectBlockEnd() {
    if (Cur().kind != TokenKind::kBlockEnd) {
      Error("expected end of statement block, got " + Describe(Cur()));
    }
    Next();
  }
  struct DepthGuard {
    explicit DepthGuard(Parser* p) : p(p) {
      if (++p->depth_ > kMaxNesting) p->Error("template nesting is too deep");
    }
    ~DepthGuard() { --p->depth_; }
    Parser* p;
  };

  ExprPtr Make(ExprKind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->col = Cur().col;
    return e;
  }

  // Records `e`'s depth and refuses trees deep enough to exhaust the native stack when evaluated
  // or destroyed (long chains such as a|f|f|f... or a+b+c+... are left-deep).
  ExprPtr Seal(ExprPtr e) {
    int d = 0;
    for (const auto& a : e->args) {
      if (a) d = std::max(d, a->depth);
    }
    for (const auto& [k, a] : e->kwargs) d = std::max(d, a->depth);
    e->depth = d + 1;
    if (e->depth > kMaxExprDepth) Error("expression nesting is too deep");
    return e;
  }

  // ---- statements ----
  Body ParseBody(std::initializer_list<std::string_view> ends, std::string* which) {
    DepthGuard guard(this);
    Body body;
    while (true) {
      const Token& tok = Cur();
      if (tok.kind == TokenKind::kEof) {
        if (ends.size() != 0) {
          Error("unexpected end of template, expected '" + std::string(*ends.begin()) + "'");
        }
        return body;
      }
      if (tok.kind == TokenKind::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kText;
        s->line = tok.line;
        s->text = tok.value;
        body.push_back(std::move(s));
        Next();
      } else if (tok.kind == TokenKind::kVarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->line = tok.line;
        Next();
        s->expr = ParseTuple(true);
        if (Cur().kind != TokenKind::kVarEnd) Error("expected '}}', got " + Describe(Cur()));
        Next();
        body.push_back(std::move(s));
      } else if (tok.kind == TokenKind::kBlockBegin) {
        Next();
        if (Cur().kind != TokenKind::kName) Error("tag name expected");
        const std::string& name = Cur().value;
        if (std::find(ends.begin(), ends.end(), name) != ends.end()) {
          *which = name;
          Next();
          return body;
        }
        body.push_back(ParseStatement());
      } else {
        Error("unexpected " + Describe(tok));
      }
    }
  }

  StmtPtr NewStmt(StmtKind kind) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = Cur().line;
    return s;
  }

  StmtPtr ParseStatement() {
    const std::string name = Cur().value;
    if (name == "if") return ParseIf();
    if (name == "for") return ParseFor();
    if (name == "set") return ParseSet();
    if (name == "macro") return ParseMacro();
    if (name == "call") return ParseCallBlock();
    if (name == "filter") return ParseFilterBlock();
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) Error("'" + name + "' outside of a loop");
      auto s = NewStmt(name == "break" ? StmtKind::kBreak : StmtKind::kContinue);
      Next();
      ExpectBlockEnd();
      return s;
    }
    if (name == "generation" || name == "with") {
      auto s = NewStmt(StmtKind::kScope);
      Next();
      if (name == "with") {
        while (Cur().kind != TokenKind::kBlockEnd) {
          if (!s->params.empty()) ExpectOp(",");
          std::string target = ExpectName();
          ExpectOp("=");
          s->params.emplace_back(target, ParseExpression(true));
        }
      }
      ExpectBlockEnd();
      std::string which;
      s->body = ParseBody({name == "with" ? "endwith" : "endgeneration"}, &which);
      ExpectBlockEnd();
      return s;
    }
    static const char* kUnsupported[] = {"include",    "import", "from",  "extends",   "block",
                                         "autoescape", "do",     "trans", "pluralize", "print"};
    for (const char* u : kUnsupported) {
      if (name == u) Error("unsupported construct '{% " + name + " %}'");
    }
    Error("unknown tag '" + name + "'");
  }

  StmtPtr ParseIf() {
    auto s = NewStmt(StmtKind::kIf);
    Next();
    while (true) {
      ExprPtr cond = ParseTuple(false);
      ExpectBlockEnd();
      std::string which;
      Body body = ParseBody({"elif", "else", "endif"}, &which);
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (which == "elif") continue;
      if (which == "else") {
        ExpectBlockEnd();
        Body else_body = ParseBody({"endif"}, &which);
        s->branches.emplace_back(nullptr, std::move(else_body));
      }
      ExpectBlockEnd();
      return s;
    }
  }

  void ParseTargets(std::vector<std::string>* targets) {
    bool paren = SkipOp("(");
    while (true) {
      targets->push_back(ExpectName());
      if (!SkipOp(",")) break;
      if (Cur().kind != TokenKind::kName) break;
    }
    if (paren) ExpectOp(")");
  }

  StmtPtr ParseFor() {
    auto s = NewStmt(StmtKind::kFor);
    Next();
    ParseTargets(&s->targets);
    if (!SkipName("in")) Error("expected 'in', got " + Describe(Cur()));
    s->expr = ParseTuple(false, /*stop_at_if=*/true);
    if (SkipName("if")) s->cond = ParseExpression(true);
    if (IsName("recursive")) Error("unsupported construct 'for ... recursive'");
    ExpectBlockEnd();
    std::string which;
    ++loop_depth_;
    s->body = ParseBody({"endfor", "else"}, &which);
    --loop_depth_;
    if (which == "else") {
      ExpectBlockEnd();
      s->else_body = ParseBody({"endfor"}, &which);
    }
    ExpectBlockEnd();
    return s;
  }

  StmtPtr ParseSet() {
    auto s = NewStmt(StmtKind::kSet);
    Next();
    if (Cur().kind == TokenKind::kName && Peek().kind == TokenKind::kOp && Peek().value == ".") {
      auto ns = Make(ExprKind::kName, Cur().line);
      ns->name = ExpectName();
      ExpectOp(".");
      s->attr_target = std::move(ns);
      s->attr_name = ExpectName();
      ExpectOp("=");
      s->expr = ParseTuple(true);
      ExpectBlockEnd();
      return s;
    }
    ParseTargets(&s->targets);
    if (SkipOp("=")) {
      s->expr = ParseTuple(true);
      ExpectBlockEnd();
      return s;
    }
    if (s->targets.size() != 1) Error("a block {% set %} takes one name");
    s->kind = StmtKind::kSetBlock;
    if (IsOp("|")) s->expr = ParseFilterChain(nullptr);
    ExpectBlockEnd();
    std::string which;
    int saved = loop_depth_;
    loop_depth_ = 0;
    s->body = ParseBody({"endset"}, &which);
    loop_depth_ = saved;
    ExpectBlockEnd();
    return s;
  }

  void ParseParams(Stmt* s) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (!s->params.empty()) ExpectOp(",");
      if (IsOp(")")) break;
      std::string p = ExpectName();
      ExprPtr dflt;
      if (SkipOp("=")) dflt = ParseExpression(true);
      s->params.emplace_back(std::move(p), std::move(dflt));
    }
    ExpectOp(")");
  }

  // Parses a macro/call body and notes whether it reads `varargs` / `kwargs`.
  void ParseCallableBody(Stmt* s, std::string_view end) {
    size_t mark = names_.size();
    int saved = loop_depth_;
    loop_depth_ = 0;
    std::string which;
    s->body = ParseBody({end}, &which);
    loop_depth_ = saved;
    for (size_t k = mark; k < names_.size(); ++k) {
      if (names_[k] == "varargs") s->catch_varargs = true;
      if (names_[k] == "kwargs") s->catch_kwargs = true;
    }
    ExpectBlockEnd();
  }

  StmtPtr ParseMacro() {
    auto s = NewStmt(StmtKind::kMacro);
    Next();
    s->name = ExpectName();
    ParseParams(s.get());
    ExpectBlockEnd();
    ParseCallableBody(s.get(), "endmacro");
    return s;
  }

  StmtPtr ParseCallBlock() {
    auto s = NewStmt(StmtKind::kCallBlock);
    Next();
    if (IsOp("(")) ParseParams(s.get());
    s->expr = ParseExpression(true);
    if (s->expr->kind != ExprKind::kCall) Error("expected a call after {% call %}");
    ExpectBlockEnd();
    ParseCallableBody(s.get(), "endcall");
    return s;
  }

  StmtPtr ParseFilterBlock() {
    auto s = NewStmt(StmtKind::kFilterBlock);
    Next();
    s->expr = ParseFilterChain(nullptr, /*leading_pipe=*/false);
    ExpectBlockEnd();
    std::string which;
    s->body = ParseBody({"endfilter"}, &which);
    ExpectBlockEnd();
    return s;
  }

  // ---- expressions ----
  ExprPtr ParseTuple(bool with_condexpr, bool stop_at_if = false) {
    int line = Cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) {
        if (!SkipOp(",")) break;
        is_tuple = true;
      }
      if (EndOfTuple(stop_at_if)) break;
      items.push_back(ParseExpression(with_condexpr));
    }
    if (!is_tuple) {
      if (items.empty()) Error("expected an expression, got " + Describe(Cur()));
      return std::move(items[0]);
    }
    auto e = Make(ExprKind::kTuple, line);
    e->args = std::move(items);
    return Seal(std::move(e));
  }

  bool EndOfTuple(bool stop_at_if) const {
    const Token& t = Cur();
    if (t.kind == TokenKind::kVarEnd || t.kind == TokenKind::kBlockEnd ||
        t.kind == TokenKind::kEof) {
      return true;
    }
    if (t.kind == TokenKind::kOp && (t.value == ")" || t.value == "]" || t.value == "}")) {
      return true;
    }
    return stop_at_if && t.kind == TokenKind::kName && (t.value == "if" || t.value == "recursive");
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    return with_condexpr ? ParseCondExpr() : ParseOr();
  }

  ExprPtr ParseCondExpr() {
    DepthGuard guard(this);
    int line = Cur().line;
    ExprPtr expr1 = ParseOr();
    while (SkipName("if")) {
      ExprPtr cond = ParseOr();
      ExprPtr other;
      if (SkipName("else")) other = ParseCondExpr();
      auto e = Make(ExprKind::kCond, line);
      e->args.push_back(std::move(cond));
      e->args.push_back(std::move(expr1));
      e->args.push_back(std::move(other));
      expr1 = Seal(std::move(e));
    }
    return expr1;
  }

  ExprPtr Binary(ExprKind kind, std::string op, ExprPtr l, ExprPtr r, int line) {
    auto e = Make(kind, line);
    e->name = std::move(op);
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return Seal(std::move(e));
  }

  ExprPtr ParseOr() {
    int line = Cur().line;
    ExprPtr left = ParseAnd();
    while (SkipName("or")) left = Binary(ExprKind::kOr, "or", std::move(left), ParseAnd(), line);
    return left;
  }

  ExprPtr ParseAnd() {
    int line = Cur().line;
    ExprPtr left = ParseNot();
    while (SkipName("and")) left = Binary(ExprKind::kAnd, "and", std::move(left), ParseNot(), line);
    return left;
  }

  ExprPtr ParseNot() {
    DepthGuard guard(this);
    if (IsName("not")) {
      int line = Cur().line;
      Next();
      auto e = Make(ExprKind::kNot, line);
      e->args.push_back(ParseNot());
      return Seal(std::move(e));
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    int line = Cur().line;
    ExprPtr first = ParseMath1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      const Token& t = Cur();
      if (t.kind == TokenKind::kOp && (t.value == "==" || t.value == "!=" || t.value == "<" ||
                                       t.value == "<=" || t.value == ">" || t.value == ">=")) {
        op = t.value;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && Peek().kind == TokenKind::kName && Peek().value == "in") {
        op = "notin";
        Next();
        Next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = Make(ExprKind::kCompare, line);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(ParseMath1());
    }
    return cmp ? Seal(std::move(cmp)) : std::move(first);
  }

  ExprPtr ParseMath1() {
    int line = Cur().line;
    ExprPtr left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      std::string op = Cur().value;
      Next();
      left = Binary(ExprKind::kBinary, op, std::move(left), ParseConcat(), line);
    }
    return left;
  }

  ExprPtr ParseConcat() {
    int line = Cur().line;
    ExprPtr left = ParseMath2();
    while (SkipOp("~")) left = Binary(ExprKind::kBinary, "~", std::move(left), ParseMath2(), line);
    return left;
  }

  ExprPtr ParseMath2() {
    int line = Cur().line;
    ExprPtr left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      std::string op = Cur().value;
      Next();
      left = Binary(ExprKind::kBinary, op, std::move(left), ParsePow(), line);
    }
    return left;
  }

  ExprPtr ParsePow() {
    int line = Cur().line;
    ExprPtr left = ParseUnary(true);
    while (SkipOp("**"))
      left = Binary(ExprKind::kBinary, "**", std::move(left), ParseUnary(true), line);
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    int line = Cur().line;
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      ExprKind kind = IsOp("-") ? ExprKind::kNeg : ExprKind::kPos;
      Next();
      node = Make(kind, line);
      node->args.push_back(ParseUnary(false));
      node = Seal(std::move(node));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    DepthGuard guard(this);
    const Token& t = Cur();
    int line = t.line;
    if (t.kind == TokenKind::kName) {
      auto e = Make(ExprKind::kLiteral, line);
      if (t.value == "true" || t.value == "True") {
        e->literal = Value::Bool(true);
      } else if (t.value == "false" || t.value == "False") {
        e->literal = Value::Bool(false);
      } else if (t.value == "none" || t.value == "None") {
        e->literal = Value::None();
      } else {
        e->kind = ExprKind::kName;
        e->name = t.value;
        names_.push_back(t.value);
      }
      Next();
      return e;
    }
    if (t.kind == TokenKind::kString) {
      std::string s;
      while (Cur().kind == TokenKind::kString) {
        s += Cur().value;
        Next();
      }
      auto e = Make(ExprKind::kLiteral, line);
      e->literal = Value::Str(std::move(s));
      return e;
    }
    if (t.kind == TokenKind::kInt || t.kind == TokenKind::kFloat) {
      auto e = Make(ExprKind::kLiteral, line);
      if (t.kind == TokenKind::kInt) {
        errno = 0;
        char* end = nullptr;
        long long v = std::strtoll(t.value.c_str(), &end, 10);
        if (errno == ERANGE) Error("integer literal out of range: " + t.value);
        e->literal = Value::Int(v);
      } else {
        e->literal = Value::Float(std::strtod(t.value.c_str(), nullptr));
      }
      Next();
      return e;
    }
    if (SkipOp("(")) {
      if (SkipOp(")")) {
        auto e = Make(ExprKind::kTuple, line);
        return e;
      }
      ExprPtr e = ParseTuple(true);
      ExpectOp(")");
      return e;
    }
    if (SkipOp("[")) {
      auto e = Make(ExprKind::kList, line);
      while (!IsOp("]")) {
        if (!e->args.empty()) ExpectOp(",");
        if (IsOp("]")) break;
        e->args.push_back(ParseExpression(true));
      }
      ExpectOp("]");
      return Seal(std::move(e));
    }
    if (SkipOp("{")) {
      auto e = Make(ExprKind::kDict, line);
      while (!IsOp("}")) {
        if (!e->args.empty()) ExpectOp(",");
        if (IsOp("}")) break;
        e->args.push_back(ParseExpression(true));
        ExpectOp(":");
        e->args.push_back(ParseExpression(true));
      }
      ExpectOp("}");
      return Seal(std::move(e));
    }
    Error("unexpected " + Describe(t));
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      int line = Cur().line;
      if (IsOp(".")) {
        Next();
        if (Cur().kind == TokenKind::kName) {
          auto e = Make(ExprKind::kAttr, line);
          e->name = Cur().value;
          Next();
          e->args.push_back(std::move(node));
          node = Seal(std::move(e));
        } else if (Cur().kind == TokenKind::kInt) {
          auto e = Make(ExprKind::kItem, line);
          auto idx = Make(ExprKind::kLiteral, line);
          idx->literal = Value::Int(std::strtoll(Cur().value.c_str(), nullptr, 10));
          Next();
          e->args.push_back(std::move(node));
          e->args.push_back(std::move(idx));
          node = Seal(std::move(e));
        } else {
          Error("expected name or number after '.'");
        }
      } else if (IsOp("[")) {
        Next();
        node = ParseSubscript(std::move(node), line);
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node), line);
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr node, int line) {
    std::vector<ExprPtr> parts;
    ExprPtr slice;
    auto one = [&]() -> ExprPtr {
      ExprPtr start, stop, step;
      if (!IsOp(":")) {
        start = ParseExpression(true);
        if (!IsOp(":")) return start;
      }
      auto s = Make(ExprKind::kSlice, line);
      Next();  // ':'
      if (!IsOp("]") && !IsOp(",") && !IsOp(":")) stop = ParseExpression(true);
      if (SkipOp(":")) {
        if (!IsOp("]") && !IsOp(",")) step = ParseExpression(true);
      }
      s->args.push_back(nullptr);  // the subject, filled in below
      s->args.push_back(std::move(start));
      s->args.push_back(std::move(stop));
      s->args.push_back(std::move(step));
      return s;
    };
    while (true) {
      parts.push_back(one());
      if (!SkipOp(",")) break;
      if (IsOp("]")) break;
    }
    ExpectOp("]");
    if (parts.size() == 1 && parts[0]->kind == ExprKind::kSlice && parts[0]->args[0] == nullptr) {
      parts[0]->args[0] = std::move(node);
      return Seal(std::move(parts[0]));
    }
    for (auto& p : parts) {
      if (p->kind == ExprKind::kSlice && p->args[0] == nullptr)
        Error("unsupported construct 'slice inside a tuple subscript'");
    }
    auto e = Make(ExprKind::kItem, line);
    e->args.push_back(std::move(node));
    if (parts.size() == 1) {
      e->args.push_back(std::move(parts[0]));
    } else {
      auto tup = Make(ExprKind::kTuple, line);
      tup->args = std::move(parts);
      e->args.push_back(Seal(std::move(tup)));
    }
    return Seal(std::move(e));
  }

  void ParseCallArgs(Expr* e) {
    ExpectOp("(");
    bool first = true;
    while (!IsOp(")")) {
      if (!first) {
        ExpectOp(",");
        if (IsOp(")")) break;
      }
      first = false;
      if (IsOp("*") || IsOp("**")) Error("unsupported construct '*args / **kwargs in a call'");
      if (Cur().kind == TokenKind::kName && Peek().kind == TokenKind::kOp && Peek().value == "=") {
        std::string key = Cur().value;
        Next();
        Next();
        e->kwargs.emplace_back(std::move(key), ParseExpression(true));
      } else {
        if (!e->kwargs.empty()) Error("positional argument follows keyword argument");
        e->args.push_back(ParseExpression(true));
      }
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr node, int line) {
    auto e = Make(ExprKind::kCall, line);
    e->args.push_back(std::move(node));
    ParseCallArgs(e.get());
    return Seal(std::move(e));
  }

  std::string DottedName() {
    std::string name = ExpectName();
    while (IsOp(".")) {
      Next();
      name += "." + ExpectName();
    }
    return name;
  }

  // `| f(args) | g ...`; `subject` null for {% filter %} and {% set x | f %}.
  ExprPtr ParseFilterChain(ExprPtr subject, bool leading_pipe = true) {
    bool first = true;
    ExprPtr node = std::move(subject);
    while (true) {
      if (!(first && !leading_pipe)) {
        if (!SkipOp("|")) break;
      }
      first = false;
      node = ParseFilter(std::move(node));
    }
    return node;
  }

  ExprPtr ParseFilter(ExprPtr node) {
    DepthGuard guard(this);
    auto e = Make(ExprKind::kFilter, Cur().line);
    e->name = DottedName();
    e->args.push_back(std::move(node));
    if (IsOp("(")) ParseCallArgs(e.get());
    return Seal(std::move(e));
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (SkipOp("|")) {
        node = ParseFilter(std::move(node));
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node), Cur().line);
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseTest(ExprPtr node) {
    DepthGuard guard(this);
    int line = Cur().line;
    Next();  // is
    auto e = Make(ExprKind::kTest, line);
    e->negated = SkipName("not");
    e->name = DottedName();
    e->args.push_back(std::move(node));
    const Token& t = Cur();
    if (IsOp("(")) {
      ParseCallArgs(e.get());
    } else if ((t.kind == TokenKind::kName || t.kind == TokenKind::kString ||
                t.kind == TokenKind::kInt || t.kind == TokenKind::kFloat || IsOp("[") ||
                IsOp("{")) &&
               !(IsName("else") || IsName("or") || IsName("and"))) {
      if (IsName("is")) Error("You cannot chain multiple tests with is");
      e->args.push_back(ParsePostfix(ParsePrimary()));
    }
    return Seal(std::move(e));
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<std::string> names_;  // every name read, in order (for macros' varargs/kwargs)
};

}  // namespace

Body ParseTemplate(std::string_view source) { return Parser(Tokenize(source)).Run(); }

}  // namespace kvstash::engine::jinja
