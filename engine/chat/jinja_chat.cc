// apply_chat_template's variables, then the Jinja interpreter (jinja_chat.h).
#include "engine/chat/jinja_chat.h"

namespace kvstash::engine {

nlohmann::ordered_json MakeChatTemplateContext(const nlohmann::ordered_json& messages,
                                               const nlohmann::ordered_json& tools,
                                               const JinjaChatOptions& options) {
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  context["messages"] = messages;
  context["tools"] = (tools.is_null() || (tools.is_array() && tools.empty()))
                         ? nlohmann::ordered_json(nullptr)
                         : tools;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = options.add_generation_prompt;
  context["bos_token"] = options.bos_token;
  context["eos_token"] = options.eos_token;
  if (options.enable_thinking.has_value()) context["enable_thinking"] = *options.enable_thinking;
  if (options.extra_vars.is_object()) {
    for (auto it = options.extra_vars.begin(); it != options.extra_vars.end(); ++it) {
      context[it.key()] = it.value();
    }
  }
  return context;
}

Result<std::string> RenderJinjaChat(const jinja::Template& tmpl,
                                    const nlohmann::ordered_json& messages,
                                    const nlohmann::ordered_json& tools,
                                    const JinjaChatOptions& options) {
  if (!messages.is_array()) return Status::InvalidArgument("chat: messages must be an array");
  if (!options.extra_vars.is_null() && !options.extra_vars.is_object()) {
    return Status::InvalidArgument("chat: extra template variables must be a JSON object");
  }
  return tmpl.Render(MakeChatTemplateContext(messages, tools, options), options.render);
}

Result<std::string> RenderJinjaChat(std::string_view template_source,
                                    const nlohmann::ordered_json& messages,
                                    const nlohmann::ordered_json& tools,
                                    const JinjaChatOptions& options) {
  KV_ASSIGN_OR_RETURN(jinja::Template tmpl, jinja::Template::Parse(template_source));
  return RenderJinjaChat(tmpl, messages, tools, options);
}

}  // namespace kvstash::engine
