// ResponseBuilder (openai.h): serve::Events -> chat.completion / text_completion bodies and SSE
// chunks.
//
// Streamed and non-streamed replies go through the same ReasoningSplitter, so the deltas of a
// stream concatenate to exactly the fields of the non-streamed message. The splitter holds back
// only what may still turn out to be markup: a partial "<think>" at the very start, and inside
// the think block a partial "</think>" plus the newlines before it (the template trims them).
// Logprobs ride on the next chunk that is sent, so a token whose text is held back still has its
// entry delivered, at the latest on the finish chunk.
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "daemon/kvstashd/api/openai.h"
#include "daemon/kvstashd/api/openai_json.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvstash::daemon::api {
namespace {

using internal::Dump;
using Json = internal::OrderedJson;

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

class ReasoningSplitter {
 public:
  struct Out {
    std::string reasoning;
    std::string content;
  };

  Out Feed(std::string_view text) {
    Out out;
    held_ += text;
    Step(&out);
    return out;
  }

  // Releases whatever is held at the end of the reply.
  Out Finish() {
    Out out;
    switch (phase_) {
      case Phase::kStart:  // a partial "<think>" that never completed is plain text
        out.content = std::move(held_);
        break;
      case Phase::kReasoning:  // an unclosed think block: trailing newlines trimmed
        while (!held_.empty() && held_.back() == '\n') held_.pop_back();
        EmitReasoning(held_, &out);
        break;
      case Phase::kContent:  // only newlines can be left (after "</think>"): dropped
        break;
    }
    held_.clear();
    return out;
  }

 private:
  enum class Phase { kStart, kReasoning, kContent };

  void Step(Out* out) {
    for (;;) {
      switch (phase_) {
        case Phase::kStart:
          if (held_.size() < kThinkOpen.size() && kThinkOpen.starts_with(held_)) return;
          if (held_.starts_with(kThinkOpen)) {
            held_.erase(0, kThinkOpen.size());
            phase_ = Phase::kReasoning;
          } else {
            phase_ = Phase::kContent;
            content_started_ = true;  // no think block: the text is kept as it is
          }
          continue;
        case Phase::kReasoning: {
          if (const size_t close = held_.find(kThinkClose); close != std::string::npos) {
            std::string_view r = std::string_view(held_).substr(0, close);
            while (!r.empty() && r.back() == '\n') r.remove_suffix(1);
            EmitReasoning(r, out);
            held_.erase(0, close + kThinkClose.size());
            phase_ = Phase::kContent;
            continue;
          }
          // Keep back the longest tail that may start "</think>", and the newlines before it.
          size_t keep = std::min(held_.size(), kThinkClose.size() - 1);
          while (keep > 0 && !std::string_view(held_).ends_with(kThinkClose.substr(0, keep))) {
            --keep;
          }
          size_t cut = held_.size() - keep;
          while (cut > 0 && held_[cut - 1] == '\n') --cut;
          EmitReasoning(std::string_view(held_).substr(0, cut), out);
          held_.erase(0, cut);
          return;
        }
        case Phase::kContent:
          if (!content_started_) {
            const size_t first = held_.find_first_not_of('\n');
            if (first == std::string::npos) {
              held_.clear();
              return;
            }
            held_.erase(0, first);
            content_started_ = true;
          }
          out->content += held_;
          held_.clear();
          return;
      }
    }
  }

  void EmitReasoning(std::string_view r, Out* out) {
    if (!reasoning_started_) {
      while (!r.empty() && r.front() == '\n') r.remove_prefix(1);
      if (r.empty()) return;
      reasoning_started_ = true;
    }
    out->reasoning += r;
  }

  Phase phase_ = Phase::kStart;
  std::string held_;
  bool reasoning_started_ = false;  // leading newlines of the reasoning are dropped until then
  bool content_started_ = false;    // leading newlines after "</think>" are dropped until then
};

// Bytes of a token piece as JSON numbers (OpenAI's `bytes`), which stay exact when the piece
// splits a UTF-8 character.
Json Bytes(std::string_view piece) {
  Json a = Json::array();
  for (unsigned char c : piece) a.push_back(static_cast<int>(c));
  return a;
}

}  // namespace

struct ResponseBuilder::State {
  // The request, as far as the reply needs it.
  bool chat = false;
  bool include_usage = false;
  bool split = false;
  bool echo = false;
  int logprobs = -1;
  std::string prompt_text;
  std::string model_name;
  std::string id;
  int64_t created = 0;
  const engine::Tokenizer* tok = nullptr;

  ReasoningSplitter splitter;
  std::string content;     // non-streamed: text released so far (after the splitter)
  std::string reasoning;   // non-streamed: reasoning released so far
  Json logprobs_acc;       // entries not yet sent (streamed) or all of them (non-streamed)
  size_t text_offset = 0;  // completions: offset of the next token's text in the reply
  bool started = false;    // streamed: the opening chunk went out
  bool done = false;       // kDone seen
  std::optional<ApiError> error;
  serve::Usage usage;

  std::string Piece(int32_t id) const {
    return tok != nullptr && id >= 0 && id < tok->vocab().size() ? tok->TokenToPiece(id, true)
                                                                 : std::string();
  }

  void ResetLogprobs() {
    if (chat) {
      logprobs_acc = Json::array();
    } else {
      logprobs_acc = {{"tokens", Json::array()},
                      {"token_logprobs", Json::array()},
                      {"top_logprobs", Json::array()},
                      {"text_offset", Json::array()}};
    }
  }
  bool HaveLogprobs() const {
    return chat ? !logprobs_acc.empty() : !logprobs_acc["tokens"].empty();
  }
  void AddLogprob(const serve::Event& e) {
    if (logprobs < 0) return;
    const std::string piece = Piece(e.token);
    if (chat) {
      Json top = Json::array();
      for (const serve::TokenLogprob& t : e.top) {
        const std::string p = Piece(t.id);
        top.push_back({{"token", p}, {"logprob", t.logprob}, {"bytes", Bytes(p)}});
      }
      logprobs_acc.push_back({{"token", piece},
                              {"logprob", e.logprob},
                              {"bytes", Bytes(piece)},
                              {"top_logprobs", std::move(top)}});
      return;
    }
    Json top = Json::object();
    for (const serve::TokenLogprob& t : e.top) top[Piece(t.id)] = t.logprob;
    logprobs_acc["tokens"].push_back(piece);
    logprobs_acc["token_logprobs"].push_back(e.logprob);
    logprobs_acc["top_logprobs"].push_back(std::move(top));
    logprobs_acc["text_offset"].push_back(text_offset);
    text_offset += piece.size();
  }
  // The logprobs object of a choice: null when not asked for.
  Json LogprobsValue(const Json& acc) const {
    if (logprobs < 0) return nullptr;
    return chat ? Json{{"content", acc}} : acc;
  }
  // Streamed: the entries gathered since the last chunk, which this chunk carries (null when
  // there are none, as on the opening chunk).
  Json TakeLogprobs() {
    if (logprobs < 0 || !HaveLogprobs()) return nullptr;
    Json v = LogprobsValue(logprobs_acc);
    ResetLogprobs();
    return v;
  }

  Json Base(bool chunk) const {
    return {{"id", id},
            {"object",
             chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
            {"created", created},
            {"model", model_name},
            {"system_fingerprint", "kvstash"}};
  }
  // One streamed chunk of a single choice. `delta_or_text`: the chat delta object or the
  // completion's text.
  std::string Chunk(Json delta_or_text, Json finish_reason) {
    Json c = Base(/*chunk=*/true);
    Json choice = {{"index", 0}};
    choice[chat ? "delta" : "text"] = std::move(delta_or_text);
    choice["logprobs"] = TakeLogprobs();
    choice["finish_reason"] = std::move(finish_reason);
    c["choices"] = Json::array({std::move(choice)});
    return "data: " + Dump(c) + "\n\n";
  }
  // The opening chunk: the assistant role (chat) or the echoed prompt (completions).
  std::string Start() {
    if (started) return {};
    started = true;
    if (chat) return Chunk({{"role", "assistant"}, {"content", ""}}, nullptr);
    if (echo && !prompt_text.empty()) return Chunk(prompt_text, nullptr);
    return {};
  }
  std::string TextChunks(const ReasoningSplitter::Out& o) {
    std::string out;
    if (!o.reasoning.empty()) out += Chunk({{"reasoning_content", o.reasoning}}, nullptr);
    if (!o.content.empty()) {
      out += chat ? Chunk({{"content", o.content}}, nullptr) : Chunk(o.content, nullptr);
    }
    return out;
  }
  ReasoningSplitter::Out Split(std::string_view text) {
    if (split) return splitter.Feed(text);
    return {"", std::string(text)};
  }
  std::string StreamText(std::string_view text) { return TextChunks(Split(text)); }
  void Accumulate(const ReasoningSplitter::Out& o) {
    reasoning += o.reasoning;
    content += o.content;
  }

  std::string StreamEvent(const serve::Event& e) {
    if (done || error.has_value()) return {};
    switch (e.kind) {
      case serve::Event::Kind::kPrefillProgress:
        return {};
      case serve::Event::Kind::kError:
        error = ErrorFromStatus(e.status);
        return "data: " + Dump(internal::ErrorObject(*error)) + "\n\n";
      case serve::Event::Kind::kToken: {
        std::string out = Start();
        AddLogprob(e);
        return out + StreamText(e.text);
      }
      case serve::Event::Kind::kDone: {
        done = true;
        usage = e.usage;
        std::string out = Start();
        out += StreamText(e.text);
        if (split) out += TextChunks(splitter.Finish());
        const std::string finish(FinishReasonString(e.usage.finish));
        out += chat ? Chunk(Json::object(), finish) : Chunk("", finish);
        if (include_usage) {
          Json c = Base(/*chunk=*/true);
          c["choices"] = Json::array();
          c["usage"] = internal::UsageObject(usage);
          out += "data: " + Dump(c) + "\n\n";
        }
        return out + "data: [DONE]\n\n";
      }
    }
    return {};
  }

  void Add(const serve::Event& e) {
    if (done || error.has_value()) return;
    switch (e.kind) {
      case serve::Event::Kind::kPrefillProgress:
        return;
      case serve::Event::Kind::kError:
        error = ErrorFromStatus(e.status);
        return;
      case serve::Event::Kind::kToken:
        AddLogprob(e);
        Accumulate(Split(e.text));
        return;
      case serve::Event::Kind::kDone:
        done = true;
        usage = e.usage;
        Accumulate(Split(e.text));
        return;
    }
  }

  std::string Finish() const {
    if (error.has_value()) return error->ToJson();
    std::string final_content = content;
    std::string final_reasoning = reasoning;
    if (split) {
      ReasoningSplitter rest = splitter;  // Finish() is const: flush a copy
      ReasoningSplitter::Out o = rest.Finish();
      final_reasoning += o.reasoning;
      final_content += o.content;
    }
    Json choice = {{"index", 0}};
    if (chat) {
      Json message = {{"role", "assistant"}, {"content", final_content}};
      if (split && !final_reasoning.empty()) message["reasoning_content"] = final_reasoning;
      choice["message"] = std::move(message);
    } else {
      choice["text"] = echo ? prompt_text + final_content : final_content;
    }
    choice["logprobs"] = LogprobsValue(logprobs_acc);
    choice["finish_reason"] = done ? Json(FinishReasonString(usage.finish)) : Json(nullptr);
    Json body = Base(/*chunk=*/false);
    body["choices"] = Json::array({std::move(choice)});
    body["usage"] = internal::UsageObject(usage);
    return Dump(body);
  }
};

ResponseBuilder::ResponseBuilder(const ParsedRequest& req, std::string id, int64_t created_unix,
                                 const ModelContext& model)
    : s_(std::make_shared<State>()) {
  State& s = *s_;
  s.chat = req.chat;
  s.include_usage = req.include_usage;
  s.split = req.split_reasoning;
  s.echo = req.echo && !req.chat;
  s.logprobs = req.request.logprobs;
  s.prompt_text = s.echo ? req.prompt_text : std::string();
  s.model_name = req.model.empty() ? model.model_id : req.model;
  s.id = std::move(id);
  s.created = created_unix;
  s.tok = model.tokenizer;
  s.text_offset = s.prompt_text.size();
  s.ResetLogprobs();
}

// The public methods catch what JSON building may throw (std::bad_alloc in practice): a stream
// then ends with an error frame, a body becomes a 500 error object.
std::string ResponseBuilder::StreamEvent(const serve::Event& e) {
  try {
    return s_->StreamEvent(e);
  } catch (...) {
    s_->error =
        ApiError{500, "internal error while formatting the response", "server_error", "", ""};
    return "data: {\"error\":{\"message\":\"internal error while formatting the response\","
           "\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
  }
}

void ResponseBuilder::Add(const serve::Event& e) {
  try {
    s_->Add(e);
  } catch (...) {
    s_->error =
        ApiError{500, "internal error while formatting the response", "server_error", "", ""};
  }
}

std::string ResponseBuilder::Finish() const {
  try {
    return s_->Finish();
  } catch (...) {
    return "{\"error\":{\"message\":\"internal error while formatting the response\","
           "\"type\":\"server_error\",\"param\":null,\"code\":null}}";
  }
}

std::optional<ApiError> ResponseBuilder::error() const { return s_->error; }

bool ResponseBuilder::finished() const { return s_->done || s_->error.has_value(); }

}  // namespace kvstash::daemon::api
