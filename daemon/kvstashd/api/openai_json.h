// Internal to daemon/kvstashd/api/: the JSON plumbing the OpenAI request parsers and response
// builders share. Not part of the API layer's interface (openai.h).
//
// Errors inside the parsers travel as a private exception, ApiFailure, thrown by Fail() and by
// the field readers below and caught at every public entry point by Guard(), so a public
// function never lets an exception escape (nlohmann's own exceptions and std::bad_alloc are
// caught there too). Pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"
#include "daemon/kvstashd/api/openai.h"

namespace kvstash::daemon::api::internal {

// Request bodies parse into Json (std::map objects: lookups stay logarithmic whatever a client
// sends); replies are built as OrderedJson so fields go out in OpenAI's order ("id" first).
using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// The exception that carries an ApiError out of a parser, to Guard().
struct ApiFailure {
  ApiError error;
};

// Throws ApiFailure: `param` is the offending field ("" for the body as a whole); `message`
// names it too, since it is what a person reads.
[[noreturn]] void Fail(std::string param, std::string message, int http_status = 400,
                       std::string code = "");

// Serializes for the wire. Invalid UTF-8 (a token piece that splits a character) becomes U+FFFD
// instead of throwing.
std::string Dump(const Json& j);
std::string Dump(const OrderedJson& j);

// Offset of the first byte that is not part of well-formed UTF-8 (no overlong forms, surrogates
// or code points above U+10FFFF), or npos when `text` is valid.
size_t FindInvalidUtf8(std::string_view text);

// Parses a request body that must be a JSON object: 400 for invalid UTF-8 (with the byte
// offset), nesting deeper than kMaxJsonDepth, a syntax error, or another top-level type.
Json ParseBodyObject(std::string_view body);

// Field readers over an object `o`. They return nullopt when the key is absent or null, and
// Fail() naming `param` (default: the key) for a value of the wrong type.
const Json* FindField(const Json& o, std::string_view key);
std::optional<bool> OptBool(const Json& o, std::string_view key, std::string_view param = {});
// A finite number (integers included).
std::optional<double> OptNumber(const Json& o, std::string_view key, std::string_view param = {});
// An integer, or a float with an integral value; saturates to the int64 range (so 1e300 and
// 2^64-1 are INT64_MAX, not an error, and callers clamp).
std::optional<int64_t> OptInteger(const Json& o, std::string_view key, std::string_view param = {});
std::optional<std::string> OptString(const Json& o, std::string_view key,
                                     std::string_view param = {});
// The same, for a value that is not a field of an object (array elements).
int64_t AsInteger(const Json& v, std::string_view param);

// Shared request-field checks (openai_request.cc), used by every API's parser.
// `v` as a JSON number without a trailing ".0".
std::string Num(double v);
// Fail() unless lo <= v <= hi (lo < v when `lo_open`).
void CheckRange(const std::string& param, double v, double lo, double hi, bool lo_open = false);
// temperature, top_p, top_k, min_p, penalties and seed over model.default_sampling.
void ParseSampling(const Json& j, const ModelContext& model, engine::SamplerOptions* s);
// `stop`: a string or up to kMaxStopStrings strings.
std::vector<std::string> ParseStop(const Json& j);
// max_completion_tokens, else max_tokens (>= 1); nullopt when neither is given.
std::optional<int64_t> RequestedMaxTokens(const Json& j);
// Refuses a prompt that leaves no room in the context (422) and sets the token budget: the
// request's, else the model default, clamped to max_tokens_limit and the room left.
void SetBudget(const ModelContext& model, std::optional<int64_t> requested,
               const std::string& prompt_param, ParsedRequest* p);

// {"type": "function", "function": {"name", "description", "parameters"}} (the tool list the
// chat template sees, whatever API the tools came from).
nlohmann::ordered_json MakeFunctionTool(const std::string& name,
                                        const std::optional<std::string>& description,
                                        const Json* parameters);
// A `tools` array of flat tool objects ({"type", "name", "description", SCHEMA_KEY}: Anthropic's
// custom tools, Responses' function tools) appended to `out` in the chat template's shape; a
// `type` other than `type_name` (absent: `default_type`) is refused.
void ParseFlatTools(const Json& j, const std::string& type_name, const std::string& default_type,
                    const std::string& schema_key, nlohmann::ordered_json* out);
// Renders p->conversation into p->request.prompt (and forced tokens, parser options); Fail()s
// naming `param` when the template cannot render it. Reads the body's kvstash extras
// ({"kvstash": {"script": TEXT}}, see ModelContext::allow_scripted_replies).
void RenderInto(const Json& j, const ModelContext& model, const std::string& param,
                ParsedRequest* p);
// A client's session hint (Responses `prompt_cache_key`, Anthropic `metadata.user_id`) picks the
// session the request continues, unless `session` named one.
void SetSessionHint(const std::string& hint, ParsedRequest* p);

// {"error": {"message", "type", "param", "code"}}, param and code null when empty.
OrderedJson ErrorObject(const ApiError& e);
// The usage object UsageJson() serializes.
OrderedJson UsageObject(const serve::Usage& u);
// kvstash's own usage figures (tokens per tier, prefilled tokens, queue/load/prefill/TTFT ms),
// the `kvstash` object beside each API's own usage fields.
OrderedJson KvstashUsageObject(const serve::Usage& u);

// Runs `fn` (which returns a Result<T> or T), turning ApiFailure and any other exception into
// *error (when not null) plus a Status: InvalidArgument for request errors (4xx), Internal for
// the rest.
template <typename T, typename Fn>
Result<T> Guard(ApiError* error, Fn&& fn) {
  ApiError e;
  try {
    return std::forward<Fn>(fn)();
  } catch (const ApiFailure& f) {
    e = f.error;
  } catch (const Json::exception& x) {
    e.message = std::string("malformed request: ") + x.what();
  } catch (const std::bad_alloc&) {
    e = ApiError{500, "out of memory while handling the request", "server_error", "", ""};
  } catch (const std::exception& x) {
    e = ApiError{500, std::string("internal error: ") + x.what(), "server_error", "", ""};
  } catch (...) {
    e = ApiError{500, "internal error", "server_error", "", ""};
  }
  if (error != nullptr) *error = e;
  return e.http_status < 500 ? Status::InvalidArgument(e.message) : Status::Internal(e.message);
}

}  // namespace kvstash::daemon::api::internal
