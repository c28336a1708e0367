// StructuredReply and RandomId (reply.h).
#include "daemon/kvstashd/api/reply.h"

#include <random>

#include "daemon/kvstashd/api/openai.h"

namespace kvstash::daemon::api {

std::string RandomId(std::string_view prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(prefix);
  for (int i = 0; i < 24; ++i) id += kHex[rng() & 15];
  return id;
}

StructuredReply::StructuredReply(const engine::OutputParserOptions& options,
                                 const nlohmann::ordered_json& tools, std::string id_prefix,
                                 bool parallel_tool_calls)
    : tools_(nlohmann::json::parse(tools.dump())),
      parser_(WithTools(options, &tools_)),
      id_prefix_(std::move(id_prefix)),
      parallel_(parallel_tool_calls) {}

StructuredReply::StructuredReply(const ParsedRequest& req, std::string id_prefix)
    : StructuredReply(req.parser, req.conversation.tools, std::move(id_prefix),
                      req.conversation.parallel_tool_calls) {}

void StructuredReply::Feed(int32_t token, std::string_view text,
                           std::vector<engine::OutputEvent>* out) {
  if (token >= 0) ids_.push_back(token);
  const size_t from = out->size();
  parser_.Feed(text, out);
  Take(out, from);
}

void StructuredReply::Finish(std::string_view text, std::vector<engine::OutputEvent>* out) {
  const size_t from = out->size();
  parser_.Feed(text, out);
  parser_.Finish(out);
  Take(out, from);
}

// Accumulates the new events and drops the calls after the first when parallel calls are off.
// Newlines around the reasoning and at the start of the content after it are trimmed, as the
// chat templates do when the turn is sent back (`reasoning_content.strip('\n')`,
// `content.lstrip('\n')`), so a client that returns the fields unchanged renders the same text.
void StructuredReply::Take(std::vector<engine::OutputEvent>* events, size_t from) {
  using K = engine::OutputEvent::Kind;
  size_t keep = from;
  for (size_t i = from; i < events->size(); ++i) {
    engine::OutputEvent& e = (*events)[i];
    const bool call_event =
        e.kind == K::kToolCallBegin || e.kind == K::kToolCallArgs || e.kind == K::kToolCallEnd;
    if (call_event && !parallel_ && e.tool_index > 0) continue;
    if (e.kind == K::kReasoning) {
      saw_reasoning_ = true;
      std::string text = std::move(e.text);
      if (!reasoning_started_) {
        text.erase(0, std::min(text.size(), text.find_first_not_of('\n')));
        if (text.empty()) continue;
        reasoning_started_ = true;
      }
      text.insert(0, held_newlines_);
      const size_t last = text.find_last_not_of('\n');
      const size_t cut = last == std::string::npos ? 0 : last + 1;
      held_newlines_ = text.substr(cut);
      text.resize(cut);
      if (text.empty()) continue;
      e.text = std::move(text);
    } else {
      held_newlines_.clear();  // the reasoning block ended: its trailing newlines go
    }
    if (e.kind == K::kText && !content_started_) {
      if (saw_reasoning_) {
        e.text.erase(0, std::min(e.text.size(), e.text.find_first_not_of('\n')));
        if (e.text.empty()) continue;
      }
      content_started_ = true;
    }
    switch (e.kind) {
      case K::kText:
        content_ += e.text;
        break;
      case K::kReasoning:
        reasoning_ += e.text;
        break;
      case K::kToolCallBegin:
        calls_.push_back({e.id.empty() ? RandomId(id_prefix_) : e.id, e.name, "", ""});
        break;
      case K::kToolCallArgs:
        if (!calls_.empty()) calls_.back().arguments += e.text;
        break;
      case K::kToolCallEnd:
        if (!calls_.empty()) calls_.back().error = e.error;
        break;
    }
    if (keep != i) (*events)[keep] = std::move(e);
    ++keep;
  }
  events->resize(keep);
}

Message StructuredReply::AsMessage() const {
  Message m;
  m.role = "assistant";
  m.content = content_;
  m.reasoning = reasoning_;
  for (const ReplyCall& c : calls_) m.tool_calls.push_back({c.id, c.name, c.arguments});
  return m;
}

}  // namespace kvstash::daemon::api
