// FlatBuffers <-> messages.h. The generated code (kvstash_generated.h, from kvstash.fbs at build
// time) is included here and nowhere outside protocol/. Decoding never touches a byte the verifier
// has not checked: VerifyFrameBuffer runs first, then every accessor reads verified tables, and a
// missing (null) field reads as its default.
#include "protocol/codec.h"

#include <cstring>
#include <type_traits>

#include "protocol/kvstash_generated.h"
#include "protocol/wire_format.h"

namespace kvstash::protocol {
namespace {

namespace fb = ::kvstash::protocol::fb;
using flatbuffers::FlatBufferBuilder;
using flatbuffers::Offset;

static_assert(std::variant_size_v<Body> == static_cast<size_t>(fb::Body_MAX),
              "messages.h Body must list the union members of kvstash.fbs in order");

// ---- Encoding --------------------------------------------------------------------------------

Offset<flatbuffers::String> Str(FlatBufferBuilder& b, const std::string& s) {
  return s.empty() ? Offset<flatbuffers::String>() : b.CreateString(s);
}
Offset<flatbuffers::Vector<int32_t>> Ints(FlatBufferBuilder& b, const std::vector<int32_t>& v) {
  return v.empty() ? Offset<flatbuffers::Vector<int32_t>>() : b.CreateVector(v);
}

Offset<fb::Prompt> EncodePrompt(FlatBufferBuilder& b, const Prompt& p) {
  std::vector<Offset<fb::ChatMessage>> msgs;
  for (const ChatMessage& m : p.messages) {
    msgs.push_back(fb::CreateChatMessage(b, Str(b, m.role), b.CreateString(m.content)));
  }
  auto text = p.text.empty() ? Offset<flatbuffers::String>() : b.CreateString(p.text);
  auto m =
      msgs.empty() ? Offset<flatbuffers::Vector<Offset<fb::ChatMessage>>>() : b.CreateVector(msgs);
  return fb::CreatePrompt(b, text, m, Ints(b, p.tokens), p.add_special);
}

Offset<fb::Sampling> EncodeSampling(FlatBufferBuilder& b, const Sampling& s) {
  std::vector<Offset<flatbuffers::String>> stop;
  for (const std::string& x : s.stop) stop.push_back(b.CreateString(x));
  auto sv = stop.empty() ? Offset<flatbuffers::Vector<Offset<flatbuffers::String>>>()
                         : b.CreateVector(stop);
  return fb::CreateSampling(b, s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty,
                            s.presence_penalty, s.frequency_penalty, s.seed, s.has_seed,
                            s.max_tokens, sv);
}

Offset<fb::Usage> EncodeUsage(FlatBufferBuilder& b, const Usage& u) {
  return fb::CreateUsage(b, u.prompt_tokens, u.cached_tokens, u.device_tokens, u.host_tokens,
                         u.disk_tokens, u.prefilled_tokens, u.generated_tokens, u.preemptions,
                         u.queue_ms, u.load_ms, u.prefill_ms, u.ttft_ms, u.decode_ms, u.total_ms,
                         Str(b, u.finish_reason), Str(b, u.session_saved));
}

struct Encoder {
  FlatBufferBuilder& b;
  Offset<void> operator()(const Hello& m) {
    return fb::CreateHello(b, m.major, m.minor, Str(b, m.client)).Union();
  }
  Offset<void> operator()(const HelloAck& m) {
    return fb::CreateHelloAck(b, m.major, m.minor, Str(b, m.server), m.max_frame_bytes,
                              Str(b, m.model), m.n_ctx, m.block_tokens)
        .Union();
  }
  Offset<void> operator()(const GenerateRequest& m) {
    auto p = EncodePrompt(b, m.prompt);
    auto s = EncodeSampling(b, m.sampling);
    return fb::CreateGenerate(b, p, s, m.stream, Str(b, m.session),
                              static_cast<fb::SessionMode>(m.session_mode), Str(b, m.cache_salt))
        .Union();
  }
  Offset<void> operator()(const PrefillRequest& m) {
    auto p = EncodePrompt(b, m.prompt);
    return fb::CreatePrefill(b, p, Str(b, m.cache_salt), m.progress).Union();
  }
  Offset<void> operator()(const TokenizeRequest& m) {
    return fb::CreateTokenize(b, b.CreateString(m.text), m.add_special, m.parse_special).Union();
  }
  Offset<void> operator()(const DetokenizeRequest& m) {
    return fb::CreateDetokenize(b, Ints(b, m.tokens)).Union();
  }
  Offset<void> operator()(const SessionSaveRequest& m) {
    auto p = EncodePrompt(b, m.prompt);
    return fb::CreateSessionSave(b, Str(b, m.name), p, Str(b, m.from_session), Str(b, m.cache_salt))
        .Union();
  }
  Offset<void> operator()(const SessionRestoreRequest& m) {
    return fb::CreateSessionRestore(b, Str(b, m.name), Str(b, m.cache_salt)).Union();
  }
  Offset<void> operator()(const SessionListRequest&) { return fb::CreateSessionList(b).Union(); }
  Offset<void> operator()(const SessionDeleteRequest& m) {
    return fb::CreateSessionDelete(b, Str(b, m.name)).Union();
  }
  Offset<void> operator()(const StatsRequest&) { return fb::CreateStats(b).Union(); }
  Offset<void> operator()(const HealthRequest&) { return fb::CreateHealth(b).Union(); }
  Offset<void> operator()(const CancelRequest& m) { return fb::CreateCancel(b, m.target).Union(); }
  Offset<void> operator()(const TokenChunk& m) {
    return fb::CreateTokenChunk(b, Ints(b, m.tokens), Str(b, m.text)).Union();
  }
  Offset<void> operator()(const Progress& m) {
    return fb::CreateProgress(b, m.done_tokens, m.total_tokens, m.cached_tokens, m.tokens_per_s)
        .Union();
  }
  Offset<void> operator()(const Done& m) {
    auto u = m.usage ? EncodeUsage(b, *m.usage) : Offset<fb::Usage>();
    return fb::CreateDone(b, u, Str(b, m.text), Ints(b, m.tokens)).Union();
  }
  Offset<void> operator()(const ErrorReply& m) {
    return fb::CreateError(b, m.code, Str(b, m.message), m.fatal).Union();
  }
  Offset<void> operator()(const TokenizeResult& m) {
    return fb::CreateTokenizeResult(b, b.CreateVector(m.tokens)).Union();
  }
  Offset<void> operator()(const DetokenizeResult& m) {
    return fb::CreateDetokenizeResult(b, b.CreateString(m.text)).Union();
  }
  Offset<void> operator()(const SessionListResult& m) {
    std::vector<Offset<fb::SessionInfo>> v;
    for (const SessionInfo& s : m.sessions) {
      v.push_back(fb::CreateSessionInfo(b, Str(b, s.name), Str(b, s.model),
                                        Str(b, s.model_fingerprint), s.tokens, s.bytes,
                                        s.created_us, s.last_used_us));
    }
    return fb::CreateSessionListResult(b, b.CreateVector(v)).Union();
  }
  Offset<void> operator()(const StatsResult& m) {
    std::vector<Offset<fb::TierStats>> v;
    for (const TierStats& t : m.tiers) {
      v.push_back(
          fb::CreateTierStats(b, Str(b, t.tier), t.blocks, t.bytes, t.hits, t.misses, t.evictions));
    }
    return fb::CreateStatsResult(b, b.CreateVector(v), m.lookups, m.lookup_tokens, m.cached_tokens,
                                 m.prefilled_tokens, m.generated_tokens, m.running, m.queue_depth,
                                 m.pages_total, m.pages_free, m.completed, m.cancelled)
        .Union();
  }
  Offset<void> operator()(const HealthResult& m) {
    return fb::CreateHealthResult(b, Str(b, m.status)).Union();
  }
};

// ---- Decoding (verified buffers only) -------------------------------------------------------

std::string S(const flatbuffers::String* s) { return s ? s->str() : std::string(); }
std::vector<int32_t> I(const flatbuffers::Vector<int32_t>* v) {
  return v ? std::vector<int32_t>(v->begin(), v->end()) : std::vector<int32_t>();
}

Prompt DecodePrompt(const fb::Prompt* p) {
  Prompt out;
  if (p == nullptr) return out;
  out.text = S(p->text());
  if (p->messages()) {
    for (const fb::ChatMessage* m : *p->messages()) {
      if (m != nullptr) out.messages.push_back({S(m->role()), S(m->content())});
    }
  }
  out.tokens = I(p->tokens());
  out.add_special = p->add_special();
  return out;
}

Sampling DecodeSampling(const fb::Sampling* s) {
  Sampling out;
  if (s == nullptr) return out;
  out.temperature = s->temperature();
  out.top_p = s->top_p();
  out.top_k = s->top_k();
  out.min_p = s->min_p();
  out.repetition_penalty = s->repetition_penalty();
  out.presence_penalty = s->presence_penalty();
  out.frequency_penalty = s->frequency_penalty();
  out.seed = s->seed();
  out.has_seed = s->has_seed();
  out.max_tokens = s->max_tokens();
  if (s->stop()) {
    for (const flatbuffers::String* x : *s->stop()) out.stop.push_back(S(x));
  }
  return out;
}

Usage DecodeUsage(const fb::Usage& u) {
  Usage out;
  out.prompt_tokens = u.prompt_tokens();
  out.cached_tokens = u.cached_tokens();
  out.device_tokens = u.device_tokens();
  out.host_tokens = u.host_tokens();
  out.disk_tokens = u.disk_tokens();
  out.prefilled_tokens = u.prefilled_tokens();
  out.generated_tokens = u.generated_tokens();
  out.preemptions = u.preemptions();
  out.queue_ms = u.queue_ms();
  out.load_ms = u.load_ms();
  out.prefill_ms = u.prefill_ms();
  out.ttft_ms = u.ttft_ms();
  out.decode_ms = u.decode_ms();
  out.total_ms = u.total_ms();
  out.finish_reason = S(u.finish_reason());
  out.session_saved = S(u.session_saved());
  return out;
}

Result<Body> DecodeBody(const fb::Frame& f) {
  // The verifier accepts a union whose type is set but whose table is absent (a null table
  // verifies): every body_as_X() below would then be null.
  if (f.body() == nullptr) {
    if (f.body_type() == fb::Body_NONE) return Status::InvalidArgument("frame has no body");
    return Status::InvalidArgument(
        "frame of type " + std::to_string(static_cast<int>(f.body_type())) + " has no body table");
  }
  switch (f.body_type()) {
    case fb::Body_Hello: {
      const fb::Hello* m = f.body_as_Hello();
      return Body(Hello{m->major(), m->minor(), S(m->client())});
    }
    case fb::Body_HelloAck: {
      const fb::HelloAck* m = f.body_as_HelloAck();
      return Body(HelloAck{m->major(), m->minor(), S(m->server()), m->max_frame_bytes(),
                           S(m->model()), m->n_ctx(), m->block_tokens()});
    }
    case fb::Body_Generate: {
      const fb::Generate* m = f.body_as_Generate();
      GenerateRequest r;
      r.prompt = DecodePrompt(m->prompt());
      r.sampling = DecodeSampling(m->sampling());
      r.stream = m->stream();
      r.session = S(m->session());
      const uint8_t mode = static_cast<uint8_t>(m->session_mode());
      if (mode > static_cast<uint8_t>(SessionMode::kCreate)) {
        return Status::InvalidArgument("Generate: unknown session_mode " + std::to_string(mode));
      }
      r.session_mode = static_cast<SessionMode>(mode);
      r.cache_salt = S(m->cache_salt());
      return Body(std::move(r));
    }
    case fb::Body_Prefill: {
      const fb::Prefill* m = f.body_as_Prefill();
      return Body(PrefillRequest{DecodePrompt(m->prompt()), S(m->cache_salt()), m->progress()});
    }
    case fb::Body_Tokenize: {
      const fb::Tokenize* m = f.body_as_Tokenize();
      return Body(TokenizeRequest{S(m->text()), m->add_special(), m->parse_special()});
    }
    case fb::Body_Detokenize:
      return Body(DetokenizeRequest{I(f.body_as_Detokenize()->tokens())});
    case fb::Body_SessionSave: {
      const fb::SessionSave* m = f.body_as_SessionSave();
      return Body(SessionSaveRequest{S(m->name()), DecodePrompt(m->prompt()), S(m->from_session()),
                                     S(m->cache_salt())});
    }
    case fb::Body_SessionRestore: {
      const fb::SessionRestore* m = f.body_as_SessionRestore();
      return Body(SessionRestoreRequest{S(m->name()), S(m->cache_salt())});
    }
    case fb::Body_SessionList:
      return Body(SessionListRequest{});
    case fb::Body_SessionDelete:
      return Body(SessionDeleteRequest{S(f.body_as_SessionDelete()->name())});
    case fb::Body_Stats:
      return Body(StatsRequest{});
    case fb::Body_Health:
      return Body(HealthRequest{});
    case fb::Body_Cancel:
      return Body(CancelRequest{f.body_as_Cancel()->target()});
    case fb::Body_TokenChunk: {
      const fb::TokenChunk* m = f.body_as_TokenChunk();
      return Body(TokenChunk{I(m->tokens()), S(m->text())});
    }
    case fb::Body_Progress: {
      const fb::Progress* m = f.body_as_Progress();
      return Body(
          Progress{m->done_tokens(), m->total_tokens(), m->cached_tokens(), m->tokens_per_s()});
    }
    case fb::Body_Done: {
      const fb::Done* m = f.body_as_Done();
      Done d;
      if (m->usage()) d.usage = DecodeUsage(*m->usage());
      d.text = S(m->text());
      d.tokens = I(m->tokens());
      return Body(std::move(d));
    }
    case fb::Body_Error: {
      const fb::Error* m = f.body_as_Error();
      return Body(ErrorReply{m->code(), S(m->message()), m->fatal()});
    }
    case fb::Body_TokenizeResult:
      return Body(TokenizeResult{I(f.body_as_TokenizeResult()->tokens())});
    case fb::Body_DetokenizeResult:
      return Body(DetokenizeResult{S(f.body_as_DetokenizeResult()->text())});
    case fb::Body_SessionListResult: {
      SessionListResult r;
      if (auto* v = f.body_as_SessionListResult()->sessions()) {
        for (const fb::SessionInfo* s : *v) {
          r.sessions.push_back({S(s->name()), S(s->model()), S(s->model_fingerprint()), s->tokens(),
                                s->bytes(), s->created_us(), s->last_used_us()});
        }
      }
      return Body(std::move(r));
    }
    case fb::Body_StatsResult: {
      const fb::StatsResult* m = f.body_as_StatsResult();
      StatsResult r;
      if (m->tiers()) {
        for (const fb::TierStats* t : *m->tiers()) {
          r.tiers.push_back(
              {S(t->tier()), t->blocks(), t->bytes(), t->hits(), t->misses(), t->evictions()});
        }
      }
      r.lookups = m->lookups();
      r.lookup_tokens = m->lookup_tokens();
      r.cached_tokens = m->cached_tokens();
      r.prefilled_tokens = m->prefilled_tokens();
      r.generated_tokens = m->generated_tokens();
      r.running = m->running();
      r.queue_depth = m->queue_depth();
      r.pages_total = m->pages_total();
      r.pages_free = m->pages_free();
      r.completed = m->completed();
      r.cancelled = m->cancelled();
      return Body(std::move(r));
    }
    case fb::Body_HealthResult:
      return Body(HealthResult{S(f.body_as_HealthResult()->status())});
    case fb::Body_NONE:
      return Status::InvalidArgument("frame has no body");
  }
  return Status::InvalidArgument("unknown frame type " +
                                 std::to_string(static_cast<int>(f.body_type())));
}

void PutLe32(uint32_t v, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

}  // namespace

std::string EncodeFrame(const Frame& frame) {
  FlatBufferBuilder b(256);
  Offset<void> body = std::visit(Encoder{b}, frame.body);
  auto type = static_cast<fb::Body>(frame.body.index() + 1);
  b.Finish(fb::CreateFrame(b, frame.id, type, body), fb::FrameIdentifier());
  std::string out(wire::kLengthPrefixBytes + b.GetSize(), '\0');
  PutLe32(static_cast<uint32_t>(b.GetSize()), out.data());
  std::memcpy(out.data() + wire::kLengthPrefixBytes, b.GetBufferPointer(), b.GetSize());
  return out;
}

Result<Frame> DecodeFrame(std::span<const uint8_t> buf, uint64_t* id) {
  if (id != nullptr) *id = wire::kConnectionId;
  if (buf.size() < wire::kMinFrameBytes) {
    return Status::InvalidArgument("frame of " + std::to_string(buf.size()) +
                                   " bytes is too short for a FlatBuffer");
  }
  // The verifier reads 32-bit offsets from the buffer: give it an aligned copy when needed.
  std::string aligned;
  const uint8_t* p = buf.data();
  if (reinterpret_cast<uintptr_t>(p) % alignof(uint64_t) != 0) {
    aligned.assign(reinterpret_cast<const char*>(buf.data()), buf.size());
    p = reinterpret_cast<const uint8_t*>(aligned.data());
  }
  flatbuffers::Verifier v(p, buf.size(), wire::kVerifierMaxDepth, wire::kVerifierMaxTables);
  if (!fb::FrameBufferHasIdentifier(p)) {
    return Status::InvalidArgument("frame lacks the file identifier '" +
                                   std::string(wire::kFileIdentifier) + "'");
  }
  if (!fb::VerifyFrameBuffer(v)) {
    return Status::InvalidArgument("frame failed FlatBuffers verification");
  }
  const fb::Frame* f = fb::GetFrame(p);
  if (id != nullptr) *id = f->id();
  KV_ASSIGN_OR_RETURN(Body body, DecodeBody(*f));
  return Frame{f->id(), std::move(body)};
}

// ---- FrameReader -----------------------------------------------------------------------------

FrameReader::FrameReader(uint32_t max_frame_bytes) : max_frame_bytes_(max_frame_bytes) {}

Status FrameReader::CheckPrefix() {
  if (buffer_.size() - pos_ < wire::kLengthPrefixBytes) return Status::Ok();
  const auto* q = reinterpret_cast<const unsigned char*>(buffer_.data() + pos_);
  const uint32_t len = static_cast<uint32_t>(q[0]) | (static_cast<uint32_t>(q[1]) << 8) |
                       (static_cast<uint32_t>(q[2]) << 16) | (static_cast<uint32_t>(q[3]) << 24);
  if (len > max_frame_bytes_) {
    return Status::ResourceExhausted("frame of " + std::to_string(len) +
                                     " bytes exceeds the limit of " +
                                     std::to_string(max_frame_bytes_) + " (--max-frame-bytes)");
  }
  if (len < wire::kMinFrameBytes) {
    return Status::InvalidArgument("frame length " + std::to_string(len) +
                                   " is below the minimum " + std::to_string(wire::kMinFrameBytes));
  }
  return Status::Ok();
}

Status FrameReader::Append(const void* data, size_t n) {
  if (!error_.ok()) return error_;
  // Compact before growing: consumed frames are dropped.
  if (pos_ > 0 && (pos_ == buffer_.size() || pos_ > (64u << 10))) {
    buffer_.erase(0, pos_);
    pos_ = 0;
  }
  const size_t had = buffer_.size() - pos_;
  if (had < wire::kLengthPrefixBytes) {
    // Complete the prefix first, so an oversize frame is refused before its body is kept.
    const size_t take = std::min(n, wire::kLengthPrefixBytes - had);
    buffer_.append(static_cast<const char*>(data), take);
    error_ = CheckPrefix();
    if (!error_.ok()) {
      buffer_.clear();
      pos_ = 0;
      return error_;
    }
    data = static_cast<const char*>(data) + take;
    n -= take;
  }
  // Frames complete within this chunk are checked as Next() reaches them; a following prefix
  // inside the same chunk is checked there too.
  buffer_.append(static_cast<const char*>(data), n);
  return Status::Ok();
}

std::optional<std::string> FrameReader::Next() {
  if (!error_.ok()) return std::nullopt;
  if (buffer_.size() - pos_ < wire::kLengthPrefixBytes) return std::nullopt;
  error_ = CheckPrefix();
  if (!error_.ok()) {
    buffer_.clear();
    pos_ = 0;
    return std::nullopt;
  }
  const auto* q = reinterpret_cast<const unsigned char*>(buffer_.data() + pos_);
  const uint32_t len = static_cast<uint32_t>(q[0]) | (static_cast<uint32_t>(q[1]) << 8) |
                       (static_cast<uint32_t>(q[2]) << 16) | (static_cast<uint32_t>(q[3]) << 24);
  if (buffer_.size() - pos_ - wire::kLengthPrefixBytes < len) return std::nullopt;
  std::string frame = buffer_.substr(pos_ + wire::kLengthPrefixBytes, len);
  pos_ += wire::kLengthPrefixBytes + len;
  return frame;
}

// ---- messages.h helpers ----------------------------------------------------------------------

bool IsRequest(const Body& b) {
  return std::holds_alternative<Hello>(b) || std::holds_alternative<GenerateRequest>(b) ||
         std::holds_alternative<PrefillRequest>(b) || std::holds_alternative<TokenizeRequest>(b) ||
         std::holds_alternative<DetokenizeRequest>(b) ||
         std::holds_alternative<SessionSaveRequest>(b) ||
         std::holds_alternative<SessionRestoreRequest>(b) ||
         std::holds_alternative<SessionListRequest>(b) ||
         std::holds_alternative<SessionDeleteRequest>(b) ||
         std::holds_alternative<StatsRequest>(b) || std::holds_alternative<HealthRequest>(b) ||
         std::holds_alternative<CancelRequest>(b);
}

bool IsFinal(const Body& b) {
  return !IsRequest(b) && !std::holds_alternative<TokenChunk>(b) &&
         !std::holds_alternative<Progress>(b);
}

const char* BodyName(const Body& b) {
  return fb::EnumNameBody(static_cast<fb::Body>(b.index() + 1));
}

}  // namespace kvstash::protocol
