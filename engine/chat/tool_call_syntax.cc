// Tool-call grammars. Each matcher walks the buffered call left to right and answers kNeedMore
// only when the bytes seen so far are a proper prefix of something it would accept; it never
// looks at where the buffer ends otherwise. That is the monotonicity the streaming parser needs
// (tool_call_syntax.h). JSON bodies are delimited structurally (ScanBalanced) and then validated
// with nlohmann's accept(), so invalid arguments are reported with the model's bytes intact.
#include "engine/chat/tool_call_syntax.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

namespace kvstash::engine::tool_syntax {
namespace {

using nlohmann::json;

constexpr std::string_view kToolCallOpen = "<tool_call>";
constexpr std::string_view kToolCallClose = "</tool_call>";
constexpr std::string_view kFunctionOpen = "<function=";
constexpr std::string_view kFunctionClose = "</function>";
constexpr std::string_view kParamOpen = "<parameter=";
constexpr std::string_view kParamClose = "</parameter>";
constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kMistralCalls = "[TOOL_CALLS]";
constexpr std::string_view kMistralArgs = "[ARGS]";
constexpr std::string_view kMistralCallId = "[CALL_ID]";
// A function or parameter name longer than this is not markup we recognise (bounds how long an
// unclosed `<function=` can hold text back); JSON names get the same bound, so every format
// accepts the same names.
constexpr size_t kMaxNameBytes = 256;

CallMatch Invalid() { return CallMatch{Scan::kInvalid, 0, {}}; }
// A match that did not complete: kNeedMore or kInvalid.
CallMatch Pending(Scan scan) { return CallMatch{scan, 0, {}}; }

// Whether `text` is one complete JSON value. nlohmann's lexer takes a NUL byte for the end of its
// input (for C strings), so on its own it would accept "42\0junk" as 42; a raw NUL cannot be part
// of JSON text anywhere (strings must escape it), so text holding one is rejected first.
bool AcceptJson(std::string_view text) {
  return text.find('\0') == std::string_view::npos && json::accept(text);
}

size_t SkipWs(std::string_view s, size_t i) {
  while (i < s.size() && IsJsonWs(s[i])) ++i;
  return i;
}

std::string_view TrimWs(std::string_view s) {
  size_t b = SkipWs(s, 0);
  size_t e = s.size();
  while (e > b && IsJsonWs(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// s[i..] against `lit`: kComplete if it starts with it, kNeedMore if it is a proper prefix of it.
Scan MatchLiteral(std::string_view s, size_t i, std::string_view lit) {
  std::string_view rest = s.substr(std::min(i, s.size()));
  if (rest.size() >= lit.size()) return rest.starts_with(lit) ? Scan::kComplete : Scan::kInvalid;
  return lit.starts_with(rest) ? Scan::kNeedMore : Scan::kInvalid;
}

// End of a JSON string token whose opening quote is at s[pos]; npos when unterminated.
size_t ScanString(std::string_view s, size_t pos) {
  for (size_t i = pos + 1; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// One value inside an already balanced container, leniently: containers and strings are
// delimited structurally, anything else runs to the next delimiter. False when empty.
bool ScanMemberValue(std::string_view s, size_t pos, size_t* end) {
  if (pos >= s.size()) return false;
  if (s[pos] == '{' || s[pos] == '[') return ScanBalanced(s, pos, end) == Scan::kComplete;
  if (s[pos] == '"') {
    *end = ScanString(s, pos);
    return *end != std::string_view::npos;
  }
  size_t i = pos;
  while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && !IsJsonWs(s[i])) ++i;
  *end = i;
  return i > pos;
}

struct Member {
  std::string key;
  std::string_view value;  // raw JSON text of the value
};

// Splits a balanced `{…}` into its members without requiring the values to be valid JSON (so a
// call with broken arguments still yields its name). False when the object's own layout
// (quoted keys, colons, commas) is broken.
bool SplitObject(std::string_view obj, std::vector<Member>* members) {
  size_t i = SkipWs(obj, 1);
  if (i < obj.size() && obj[i] == '}') return SkipWs(obj, i + 1) == obj.size();
  for (;;) {
    if (i >= obj.size() || obj[i] != '"') return false;
    size_t key_end = ScanString(obj, i);
    Member m;
    if (key_end == std::string_view::npos || !DecodeJsonString(obj.substr(i, key_end - i), &m.key))
      return false;
    i = SkipWs(obj, key_end);
    if (i >= obj.size() || obj[i] != ':') return false;
    i = SkipWs(obj, i + 1);
    size_t value_end = 0;
    if (!ScanMemberValue(obj, i, &value_end)) return false;
    m.value = obj.substr(i, value_end - i);
    members->push_back(std::move(m));
    i = SkipWs(obj, value_end);
    if (i >= obj.size()) return false;
    if (obj[i] == '}') return SkipWs(obj, i + 1) == obj.size();
    if (obj[i] != ',') return false;
    i = SkipWs(obj, i + 1);
  }
}

// Elements of a balanced `[…]`, raw.
bool SplitArray(std::string_view arr, std::vector<std::string_view>* elems) {
  size_t i = SkipWs(arr, 1);
  if (i < arr.size() && arr[i] == ']') return SkipWs(arr, i + 1) == arr.size();
  for (;;) {
    size_t end = 0;
    if (!ScanMemberValue(arr, i, &end)) return false;
    elems->push_back(arr.substr(i, end - i));
    i = SkipWs(arr, end);
    if (i >= arr.size()) return false;
    if (arr[i] == ']') return SkipWs(arr, i + 1) == arr.size();
    if (arr[i] != ',') return false;
    i = SkipWs(arr, i + 1);
  }
}

// Sets call->arguments/error from the raw arguments value of a JSON-format call. The arguments
// must be a JSON object; a JSON string holding an object (double-encoded) is unwrapped.
void SetJsonArguments(std::string_view raw, ToolCall* call) {
  raw = TrimWs(raw);
  if (raw.empty()) {
    call->error = "arguments are empty";
    return;
  }
  if (!raw.empty() && raw.front() == '"') {
    std::string inner;
    if (DecodeJsonString(raw, &inner)) {
      std::string_view t = TrimWs(inner);
      if (!t.empty() && t.front() == '{' && AcceptJson(t)) {
        call->arguments = std::string(t);
        return;
      }
    }
    call->arguments = std::string(raw);
    call->error = "arguments are a JSON string, not an object";
    return;
  }
  call->arguments = std::string(raw);
  if (!AcceptJson(raw)) {
    call->error = "arguments are not valid JSON";
  } else if (raw.front() != '{') {
    call->error = "arguments are not a JSON object";
  }
}

enum class Shape : uint8_t {
  kTagged,  // inside <tool_call> or [TOOL_CALLS]: the markup already says this is a call
  kBare,    // Llama 3 bare JSON: must look exactly like a call, else it is the answer text
};

// {"name": "...", "arguments"|"parameters": {...}, "id": "..."} → call. False when this object
// is not a call.
bool CallFromObject(std::string_view obj, Shape shape, ToolCall* call) {
  std::vector<Member> members;
  if (!SplitObject(obj, &members)) return false;
  bool have_name = false, have_args = false;
  for (const Member& m : members) {
    if (m.key == "name") {
      // Same length bound as the markup names (<function=…>, Mistral NAME[ARGS]).
      if (have_name || !DecodeJsonString(m.value, &call->name) || call->name.empty() ||
          call->name.size() > kMaxNameBytes)
        return false;
      have_name = true;
    } else if (m.key == "arguments" || m.key == "parameters") {
      if (have_args) return false;
      SetJsonArguments(m.value, call);
      have_args = true;
    } else if (m.key == "id") {
      if (!DecodeJsonString(m.value, &call->id)) return false;
    } else if (shape == Shape::kBare && m.key != "type") {
      return false;  // e.g. {"name": "Ada", "age": 36} is an answer, not a call
    }
  }
  if (!have_name) return false;
  if (!have_args) {
    if (shape == Shape::kBare) return false;
    call->arguments = "{}";
  }
  return true;
}

// ---- <tool_call> … </tool_call> (Hermes JSON body or Qwen XML body) ----

bool IsNameByte(char c) { return c != '>' && c != '<' && c != '\n' && c != '\r'; }

// `<prefix>NAME>` at s[i]; on kComplete sets *name and *i past '>'.
Scan MatchNamedTag(std::string_view s, size_t* i, std::string_view prefix, std::string* name) {
  Scan lit = MatchLiteral(s, *i, prefix);
  if (lit != Scan::kComplete) return lit;
  size_t b = *i + prefix.size();
  size_t e = b;
  while (e < s.size() && e - b <= kMaxNameBytes && IsNameByte(s[e])) ++e;
  if (e - b > kMaxNameBytes) return Scan::kInvalid;
  if (e == s.size()) return Scan::kNeedMore;
  if (s[e] != '>' || e == b) return Scan::kInvalid;
  *name = std::string(s.substr(b, e - b));
  // Names end up in JSON: one that is not valid UTF-8 cannot be a function or parameter name.
  std::string decoded;
  if (!DecodeJsonString(QuoteJson(*name), &decoded) || decoded != *name) return Scan::kInvalid;
  *i = e + 1;
  return Scan::kComplete;
}

bool Contains(const std::vector<std::string>& v, std::string_view x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// A raw XML parameter value as JSON, typed by the schema. Strings (and untyped parameters) are
// quoted; other types must already be JSON of one of the allowed types, else `error` says so and
// the value is kept as a string (reported, never guessed).
std::string XmlValueToJson(std::string_view value, const std::vector<std::string>* types,
                           std::string_view param, std::string* error) {
  if (types == nullptr || types->empty() || Contains(*types, "string")) return QuoteJson(value);
  std::string_view t = TrimWs(value);
  bool valid = !t.empty() && AcceptJson(t);
  bool known_type = false;
  for (const std::string& type : *types) {
    bool ok = false;
    if (type == "null") {
      ok = t == "null";
    } else if (type == "boolean") {
      ok = t == "true" || t == "false";
    } else if (type == "number") {
      ok = valid && (t.front() == '-' || (t.front() >= '0' && t.front() <= '9'));
    } else if (type == "integer") {
      ok = valid && (t.front() == '-' || (t.front() >= '0' && t.front() <= '9')) &&
           t.find_first_of(".eE") == std::string_view::npos;
    } else if (type == "object") {
      ok = valid && t.front() == '{';
    } else if (type == "array") {
      ok = valid && t.front() == '[';
    } else {
      continue;
    }
    known_type = true;
    if (ok) return std::string(t);
  }
  if (!known_type) return QuoteJson(value);  // only types we do not know: keep the text
  if (!error->empty()) *error += "; ";
  std::string wanted;
  for (const std::string& type : *types) wanted += (wanted.empty() ? "" : "|") + type;
  *error += "parameter \"" + std::string(param) + "\" is not a valid " + wanted + " value";
  return QuoteJson(value);
}

// `<function=NAME>` (<parameter=KEY>VALUE</parameter>)* `</function>` at s[*i].
Scan MatchXmlFunction(std::string_view s, size_t* i, const ToolSchemas& schemas, ToolCall* call) {
  Scan r = MatchNamedTag(s, i, kFunctionOpen, &call->name);
  if (r != Scan::kComplete) return r;
  std::string args = "{";
  for (;;) {
    *i = SkipWs(s, *i);
    Scan close = MatchLiteral(s, *i, kFunctionClose);
    if (close == Scan::kComplete) {
      *i += kFunctionClose.size();
      call->arguments = args + "}";
      return Scan::kComplete;
    }
    std::string key;
    Scan param = MatchNamedTag(s, i, kParamOpen, &key);
    if (param == Scan::kInvalid) return close;  // neither: kNeedMore iff a prefix of </function>
    if (param == Scan::kNeedMore) return Scan::kNeedMore;
    size_t end = s.find(kParamClose, *i);
    if (end == std::string_view::npos) return Scan::kNeedMore;
    std::string_view value = s.substr(*i, end - *i);
    // The templates write "<parameter=K>\n" VALUE "\n</parameter>": strip exactly those.
    if (value.starts_with('\n')) value.remove_prefix(1);
    if (value.ends_with('\n')) value.remove_suffix(1);
    if (args.size() > 1) args += ", ";
    args += QuoteJson(key) + ": " +
            XmlValueToJson(value, schemas.ParamTypes(call->name, key), key, &call->error);
    *i = end + kParamClose.size();
  }
}

CallMatch MatchTagged(std::string_view s, const ToolSchemas& schemas) {
  CallMatch m;
  size_t i = SkipWs(s, kToolCallOpen.size());
  if (i == s.size()) return m;
  if (s[i] == '{') {
    size_t end = 0;
    Scan r = ScanBalanced(s, i, &end);
    if (r != Scan::kComplete) return Pending(r);
    ToolCall call;
    if (!CallFromObject(s.substr(i, end - i), Shape::kTagged, &call)) return Invalid();
    m.calls.push_back(std::move(call));
    i = end;
  } else {
    // One or more <function=…> blocks.
    for (;;) {
      ToolCall call;
      Scan r = MatchXmlFunction(s, &i, schemas, &call);
      if (r != Scan::kComplete) return Pending(r);
      m.calls.push_back(std::move(call));
      i = SkipWs(s, i);
      if (MatchLiteral(s, i, kFunctionOpen) == Scan::kInvalid) break;
    }
  }
  i = SkipWs(s, i);
  Scan close = MatchLiteral(s, i, kToolCallClose);
  if (close != Scan::kComplete) return Pending(close);
  m.scan = Scan::kComplete;
  m.consumed = i + kToolCallClose.size();
  return m;
}

// ---- Llama 3: [<|python_tag|>] {"name": …, "parameters": …} ----

CallMatch MatchLlama3(std::string_view s) {
  size_t i = 0;
  if (s.starts_with(kPythonTag)) {
    i = SkipWs(s, kPythonTag.size());
    if (i == s.size()) return {};
  }
  if (s[i] != '{') return Invalid();
  // Reject a JSON answer by its first key, so it streams as text instead of being held until it
  // closes: a call starts with one of its own keys.
  size_t key = SkipWs(s, i + 1);
  if (key == s.size()) return {};
  if (s[key] != '"') return Invalid();
  size_t key_end = ScanString(s, key);
  if (key_end == std::string_view::npos) return {};
  std::string first_key;
  if (!DecodeJsonString(s.substr(key, key_end - key), &first_key) ||
      (first_key != "name" && first_key != "type" && first_key != "parameters" &&
       first_key != "arguments")) {
    return Invalid();
  }
  size_t end = 0;
  Scan r = ScanBalanced(s, i, &end);
  if (r != Scan::kComplete) return Pending(r);
  ToolCall call;
  // Even after <|python_tag|> the JSON must carry arguments: {"name": …} alone is not a call.
  if (!CallFromObject(s.substr(i, end - i), Shape::kBare, &call)) return Invalid();
  CallMatch m{Scan::kComplete, end, {}};
  m.calls.push_back(std::move(call));
  return m;
}

// ---- Mistral: [TOOL_CALLS][{…}, …]  |  [TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{…} ----

bool IsMistralNameByte(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.' || c == ':';
}

CallMatch MatchMistral(std::string_view s) {
  size_t i = SkipWs(s, kMistralCalls.size());
  if (i == s.size()) return {};
  CallMatch m;
  if (s[i] == '[') {
    size_t end = 0;
    Scan r = ScanBalanced(s, i, &end);
    if (r != Scan::kComplete) return Pending(r);
    std::vector<std::string_view> elems;
    if (!SplitArray(s.substr(i, end - i), &elems) || elems.empty()) return Invalid();
    for (std::string_view e : elems) {
      ToolCall call;
      if (e.front() != '{' || !CallFromObject(e, Shape::kTagged, &call)) return Invalid();
      m.calls.push_back(std::move(call));
    }
    m.scan = Scan::kComplete;
    m.consumed = end;
    return m;
  }
  ToolCall call;
  size_t b = i;
  while (i < s.size() && i - b <= kMaxNameBytes && IsMistralNameByte(s[i])) ++i;
  if (i - b > kMaxNameBytes) return Invalid();
  if (i == s.size()) return {};
  if (i == b) return Invalid();
  call.name = std::string(s.substr(b, i - b));
  Scan id = MatchLiteral(s, i, kMistralCallId);
  if (id == Scan::kNeedMore) return {};
  if (id == Scan::kComplete) {
    i += kMistralCallId.size();
    b = i;
    while (i < s.size() && i - b <= kMaxNameBytes && IsMistralNameByte(s[i])) ++i;
    if (i - b > kMaxNameBytes) return Invalid();
    if (i == s.size()) return {};
    call.id = std::string(s.substr(b, i - b));
  }
  Scan args = MatchLiteral(s, i, kMistralArgs);
  if (args != Scan::kComplete) return Pending(args);
  i = SkipWs(s, i + kMistralArgs.size());
  if (i == s.size()) return {};
  if (s[i] != '{') return Invalid();
  size_t end = 0;
  Scan r = ScanBalanced(s, i, &end);
  if (r != Scan::kComplete) return Pending(r);
  SetJsonArguments(s.substr(i, end - i), &call);
  m.calls.push_back(std::move(call));
  m.scan = Scan::kComplete;
  m.consumed = end;
  return m;
}

void CollectTypes(const json& schema, std::vector<std::string>* types) {
  if (!schema.is_object()) return;
  auto t = schema.find("type");
  if (t != schema.end()) {
    if (t->is_string()) {
      types->push_back(t->get<std::string>());
    } else if (t->is_array()) {
      for (const json& e : *t) {
        if (e.is_string()) types->push_back(e.get<std::string>());
      }
    }
  }
  for (const char* key : {"anyOf", "oneOf"}) {
    auto alts = schema.find(key);
    if (alts == schema.end() || !alts->is_array()) continue;
    for (const json& alt : *alts) CollectTypes(alt, types);
  }
}

}  // namespace

Scan ScanBalanced(std::string_view s, size_t pos, size_t* end) {
  std::vector<char> closers;
  for (size_t i = pos; i < s.size(); ++i) {
    char c = s[i];
    if (c == '"') {
      i = ScanString(s, i);
      if (i == std::string_view::npos) return Scan::kNeedMore;
      --i;
    } else if (c == '{' || c == '[') {
      closers.push_back(c == '{' ? '}' : ']');
    } else if (c == '}' || c == ']') {
      if (closers.empty() || closers.back() != c) return Scan::kInvalid;
      closers.pop_back();
      if (closers.empty()) {
        *end = i + 1;
        return Scan::kComplete;
      }
    }
  }
  return Scan::kNeedMore;
}

bool DecodeJsonString(std::string_view token, std::string* out) {
  if (token.size() < 2 || token.front() != '"' || token.find('\0') != std::string_view::npos) {
    return false;  // see AcceptJson()
  }
  json j = json::parse(token, nullptr, /*allow_exceptions=*/false);
  if (!j.is_string()) return false;
  *out = j.get<std::string>();
  return true;
}

std::string QuoteJson(std::string_view text) {
  return json(std::string(text)).dump(-1, ' ', false, json::error_handler_t::replace);
}

ToolSchemas ToolSchemas::FromJson(const json* tools) {
  ToolSchemas out;
  if (tools == nullptr || !tools->is_array()) return out;
  for (const json& tool : *tools) {
    const json* fn = &tool;
    if (tool.is_object()) {
      auto f = tool.find("function");
      if (f != tool.end() && f->is_object()) fn = &*f;
    }
    if (!fn->is_object()) continue;
    auto name = fn->find("name");
    if (name == fn->end() || !name->is_string()) continue;
    auto& params = out.types_[name->get<std::string>()];
    auto schema = fn->find("parameters");
    if (schema == fn->end() || !schema->is_object()) continue;
    auto props = schema->find("properties");
    if (props == schema->end() || !props->is_object()) continue;
    for (auto it = props->begin(); it != props->end(); ++it) {
      std::vector<std::string> types;
      CollectTypes(it.value(), &types);
      params[it.key()] = std::move(types);
    }
  }
  return out;
}

const std::vector<std::string>* ToolSchemas::ParamTypes(std::string_view function,
                                                        std::string_view param) const {
  auto f = types_.find(function);
  if (f == types_.end()) return nullptr;
  auto p = f->second.find(param);
  return p == f->second.end() ? nullptr : &p->second;
}

std::vector<std::string_view> CallOpeners(ToolCallFormat format) {
  switch (format) {
    case ToolCallFormat::kHermesJson:
    case ToolCallFormat::kQwenXml:
      return {kToolCallOpen};
    case ToolCallFormat::kLlama3Json:
      return {kPythonTag};
    case ToolCallFormat::kMistral:
      return {kMistralCalls};
    case ToolCallFormat::kNone:
      break;
  }
  return {};
}

std::vector<std::string_view> PositionalCallOpeners(ToolCallFormat format) {
  if (format == ToolCallFormat::kLlama3Json) return {"{"};
  return {};
}

CallMatch MatchToolCalls(ToolCallFormat format, std::string_view s, const ToolSchemas& schemas) {
  switch (format) {
    case ToolCallFormat::kHermesJson:
    case ToolCallFormat::kQwenXml:
      // Either body is accepted in either format: models of one family sometimes write the
      // other's (Qwen3-Coder fine-tunes emitting JSON, and vice versa).
      return MatchTagged(s, schemas);
    case ToolCallFormat::kLlama3Json:
      return MatchLlama3(s);
    case ToolCallFormat::kMistral:
      return MatchMistral(s);
    case ToolCallFormat::kNone:
      break;
  }
  return Invalid();
}

}  // namespace kvstash::engine::tool_syntax
