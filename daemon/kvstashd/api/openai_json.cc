#include "daemon/kvstashd/api/openai_json.h"

#include <cmath>
#include <limits>

namespace kvstash::daemon::api::internal {

void Fail(std::string param, std::string message, int http_status, std::string code) {
  ApiError e;
  e.http_status = http_status;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  throw ApiFailure{std::move(e)};
}

std::string Dump(const Json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

std::string Dump(const OrderedJson& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, OrderedJson::error_handler_t::replace);
}

size_t FindInvalidUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;  // a continuation byte, an overlong 2-byte lead (C0/C1), or F5..FF
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    const bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;
    i += len;
  }
  return std::string_view::npos;
}

namespace {

// Deepest nesting of arrays and objects, counted outside strings. Exact for valid JSON; for
// anything else the parser reports the syntax error.
int MaxDepth(std::string_view body) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) max_depth = depth;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

const char* TypeName(const Json& v) { return v.type_name(); }

std::string ParamOr(std::string_view param, std::string_view key) {
  return std::string(param.empty() ? key : param);
}

int64_t SaturatingFromDouble(double v) {
  // 2^63 is exactly representable; anything at or above it saturates.
  constexpr double kTwo63 = 9223372036854775808.0;
  if (v >= kTwo63) return std::numeric_limits<int64_t>::max();
  if (v < -kTwo63) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(v);
}

}  // namespace

Json ParseBodyObject(std::string_view body) {
  if (const size_t bad = FindInvalidUtf8(body); bad != std::string_view::npos) {
    Fail("", "the request body is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  // nlohmann's lexer takes a NUL for the end of its input, so "{...}\0junk" would parse; a raw
  // NUL cannot be part of JSON text (strings must escape it).
  if (const size_t nul = body.find('\0'); nul != std::string_view::npos) {
    Fail("", "the request body is not valid JSON: a NUL byte at " + std::to_string(nul));
  }
  if (MaxDepth(body) > kMaxJsonDepth) {
    Fail("", "the request body nests arrays/objects deeper than " + std::to_string(kMaxJsonDepth));
  }
  Json j;
  try {
    j = Json::parse(body.begin(), body.end());
  } catch (const Json::exception& e) {  // parse_error, or out_of_range for 1e400
    Fail("", std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) {
    Fail("", std::string("the request body must be a JSON object, got ") + TypeName(j));
  }
  return j;
}

const Json* FindField(const Json& o, std::string_view key) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(std::string(key));
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> OptBool(const Json& o, std::string_view key, std::string_view param) {
  const Json* v = FindField(o, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) {
    const std::string p = ParamOr(param, key);
    Fail(p, "'" + p + "' must be a boolean, got " + TypeName(*v));
  }
  return v->get<bool>();
}

std::optional<double> OptNumber(const Json& o, std::string_view key, std::string_view param) {
  const Json* v = FindField(o, key);
  if (v == nullptr) return std::nullopt;
  const std::string p = ParamOr(param, key);
  if (!v->is_number()) Fail(p, "'" + p + "' must be a number, got " + TypeName(*v));
  const double d = v->get<double>();
  if (!std::isfinite(d)) Fail(p, "'" + p + "' must be a finite number");
  return d;
}

int64_t AsInteger(const Json& v, std::string_view param) {
  const std::string p(param);
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    return u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
               ? std::numeric_limits<int64_t>::max()
               : static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::trunc(d) == d) return SaturatingFromDouble(d);
    Fail(p, "'" + p + "' must be an integer");
  }
  Fail(p, "'" + p + "' must be an integer, got " + TypeName(v));
}

std::optional<int64_t> OptInteger(const Json& o, std::string_view key, std::string_view param) {
  const Json* v = FindField(o, key);
  if (v == nullptr) return std::nullopt;
  return AsInteger(*v, ParamOr(param, key));
}

std::optional<std::string> OptString(const Json& o, std::string_view key, std::string_view param) {
  const Json* v = FindField(o, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) {
    const std::string p = ParamOr(param, key);
    Fail(p, "'" + p + "' must be a string, got " + TypeName(*v));
  }
  return v->get<std::string>();
}

}  // namespace kvstash::daemon::api::internal
