#include "daemon/kvstashd/api/prompt.h"

#include <algorithm>
#include <string>

#include "engine/tokenizer/tokenizer.h"

namespace kvstash::daemon::api {
namespace {

std::string SpecialText(const engine::Tokenizer& tok, int32_t id) {
  return id >= 0 && id < tok.vocab().size() ? tok.TokenToPiece(id, true) : std::string();
}

Result<const engine::Tokenizer*> NeedTokenizer(const ModelContext& model) {
  if (model.tokenizer == nullptr) {
    return Status::InvalidArgument(
        "the model has no tokenizer vocabulary: chat messages need one (send token ids)");
  }
  return model.tokenizer;
}

void SetSpecialTexts(const engine::Tokenizer& tok, engine::ChatOptions* options) {
  options->bos_token = SpecialText(tok, tok.vocab().bos_id);
  options->eos_token = SpecialText(tok, tok.vocab().eos_id);
}

}  // namespace

bool ValidSessionName(std::string_view name) {
  if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

int32_t TokenBudget(const ModelContext& model, int64_t n_prompt, std::optional<int64_t> requested) {
  const int64_t remaining = static_cast<int64_t>(model.n_ctx) - n_prompt;
  int64_t budget =
      requested.value_or(model.default_max_tokens > 0 ? model.default_max_tokens : remaining);
  const int64_t cap = model.max_tokens_limit > 0 ? model.max_tokens_limit : model.n_ctx;
  return static_cast<int32_t>(std::max<int64_t>(1, std::min({budget, cap, remaining})));
}

Result<std::vector<int32_t>> RenderChatTokens(const ModelContext& model,
                                              const std::vector<engine::ChatMessage>& messages,
                                              engine::ChatOptions options) {
  KV_ASSIGN_OR_RETURN(const engine::Tokenizer* tok, NeedTokenizer(model));
  SetSpecialTexts(*tok, &options);
  KV_ASSIGN_OR_RETURN(std::string rendered,
                      engine::RenderChat(model.chat_template, messages, options));
  // Templates that write the BOS text themselves must not get a second BOS.
  const bool add_bos = tok->vocab().add_bos &&
                       (options.bos_token.empty() || !rendered.starts_with(options.bos_token));
  return tok->Encode(rendered, add_bos, /*parse_special=*/true);
}

Result<std::vector<int32_t>> RenderChatContinuation(
    const ModelContext& model, const std::vector<engine::ChatMessage>& messages,
    engine::ChatOptions options) {
  KV_ASSIGN_OR_RETURN(const engine::Tokenizer* tok, NeedTokenizer(model));
  SetSpecialTexts(*tok, &options);
  // A marker no template writes and no tokenizer merges across: cut right after it.
  const std::string mark = "\x1f kvstash-continuation \x1f";
  std::vector<engine::ChatMessage> all = {{"user", "."}, {"assistant", mark}};
  all.insert(all.end(), messages.begin(), messages.end());
  KV_ASSIGN_OR_RETURN(std::string rendered, engine::RenderChat(model.chat_template, all, options));
  const size_t at = rendered.find(mark);
  if (at == std::string::npos) {
    return Status::InvalidArgument(
        "the chat template drops assistant turns: a conversation "
        "cannot be continued in a session with it");
  }
  return tok->Encode(std::string_view(rendered).substr(at + mark.size()), /*add_bos=*/false,
                     /*parse_special=*/true);
}

}  // namespace kvstash::daemon::api
