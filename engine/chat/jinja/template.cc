// Template: the exception-free boundary of the Jinja interpreter (template.h). Lexer, parser and
// renderer report errors by throwing JinjaError; nothing escapes this file.
#include "engine/chat/jinja/template.h"

#include <exception>
#include <new>

#include "engine/chat/jinja/interpreter.h"
#include "engine/chat/jinja/parser.h"

namespace kvstash::engine::jinja {

struct Template::Parsed {
  Body body;
};

namespace {

bool ValidUtf8(std::string_view s, size_t* bad) {
  size_t i = 0;
  while (i < s.size()) {
    auto b0 = static_cast<unsigned char>(s[i]);
    size_t len = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      *bad = i;
      return false;
    }
    uint32_t cp = len == 1 ? b0 : (b0 & (0x7F >> len));
    for (size_t k = 1; k < len; ++k) {
      auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) {
        *bad = i;
        return false;
      }
      cp = (cp << 6) | (b & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) {
      *bad = i;
      return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

Result<Template> Template::Parse(std::string_view source) {
  size_t bad = 0;
  if (!ValidUtf8(source, &bad)) {
    return Status::InvalidArgument("jinja: template is not valid UTF-8 (byte offset " +
                                   std::to_string(bad) + ")");
  }
  try {
    auto parsed = std::make_shared<Parsed>();
    parsed->body = ParseTemplate(source);
    Template t;
    t.parsed_ = std::move(parsed);
    return t;
  } catch (const JinjaError& e) {
    return Status::InvalidArgument("jinja: line " + std::to_string(e.line) + " col " +
                                   std::to_string(e.col) + ": " + e.message);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("jinja: out of memory while parsing");
  } catch (const std::exception& e) {
    return Status::Internal(std::string("jinja: ") + e.what());
  }
}

Result<std::string> Template::Render(const nlohmann::json& context) const {
  nlohmann::ordered_json ordered;
  try {
    // Round trip through text: nlohmann offers no direct conversion between the two types.
    // dump() throws on strings that are not UTF-8.
    ordered = nlohmann::ordered_json::parse(context.dump());
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("jinja: context: ") + e.what());
  }
  return Render(ordered, RenderOptions());
}

Result<std::string> Template::Render(const nlohmann::ordered_json& context) const {
  return Render(context, RenderOptions());
}

Result<std::string> Template::Render(const nlohmann::ordered_json& context,
                                     const RenderOptions& options) const {
  if (!parsed_) return Status::InvalidArgument("jinja: template was not parsed");
  if (!context.is_object() && !context.is_null()) {
    return Status::InvalidArgument("jinja: the render context must be a JSON object");
  }
  try {
    Renderer renderer(options);
    return renderer.Run(parsed_->body, FromJson(context));
  } catch (const JinjaError& e) {
    return Status::InvalidArgument("jinja: line " + std::to_string(e.line) + ": " + e.message);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("jinja: out of memory while rendering");
  } catch (const std::exception& e) {
    return Status::Internal(std::string("jinja: ") + e.what());
  }
}

}  // namespace kvstash::engine::jinja
