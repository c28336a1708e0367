// The local-socket protocol's messages as plain C++ structs: what protocol/codec.h decodes every
// verified frame into and encodes back. FlatBuffers types stay inside protocol/ (codec.cc); the
// daemon and the client library see only these. Field meanings are those of protocol/kvstash.fbs
// (and docs/protocol.md).
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace kvstash::protocol {

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

// Sampling and limits; negative values (and has_seed false) take the daemon's defaults.
struct Sampling {
  float temperature = -1;
  float top_p = -1;
  int32_t top_k = -1;
  float min_p = -1;
  float repetition_penalty = -1;
  float presence_penalty = 0;
  float frequency_penalty = 0;
  uint64_t seed = 0;
  bool has_seed = false;
  int32_t max_tokens = -1;  // < 0: the daemon's --default-max-tokens; 0: prefill only
  std::vector<std::string> stop;
};

// Exactly one of text, messages or tokens is set (the daemon refuses none or several).
struct Prompt {
  std::string text;
  std::vector<ChatMessage> messages;
  std::vector<int32_t> tokens;
  bool add_special = true;
};

enum class SessionMode : uint8_t { kPrefix = 0, kAppend = 1, kCreate = 2 };

// ---- Requests -------------------------------------------------------------------------------
struct Hello {
  uint16_t major = 0;
  uint16_t minor = 0;
  std::string client;
};
struct GenerateRequest {
  Prompt prompt;
  Sampling sampling;
  bool stream = true;
  std::string session;
  SessionMode session_mode = SessionMode::kPrefix;
  std::string cache_salt;
};
struct PrefillRequest {
  Prompt prompt;
  std::string cache_salt;
  bool progress = true;
};
struct TokenizeRequest {
  std::string text;
  bool add_special = false;
  bool parse_special = true;
};
struct DetokenizeRequest {
  std::vector<int32_t> tokens;
};
struct SessionSaveRequest {
  std::string name;
  Prompt prompt;
  std::string from_session;
  std::string cache_salt;
};
struct SessionRestoreRequest {
  std::string name;
  std::string cache_salt;
};
struct SessionListRequest {};
struct SessionDeleteRequest {
  std::string name;
};
struct StatsRequest {};
struct HealthRequest {};
struct CancelRequest {
  uint64_t target = 0;
};

// ---- Responses ------------------------------------------------------------------------------
struct HelloAck {
  uint16_t major = 0;
  uint16_t minor = 0;
  std::string server;
  uint32_t max_frame_bytes = 0;
  std::string model;
  int32_t n_ctx = 0;
  int32_t block_tokens = 0;
};
struct TokenChunk {
  std::vector<int32_t> tokens;
  std::string text;
};
struct Progress {
  int32_t done_tokens = 0;
  int32_t total_tokens = 0;
  int32_t cached_tokens = 0;
  double tokens_per_s = 0;
};
// The HTTP API's usage record (docs/daemon.md, `usage.kvstash`).
struct Usage {
  int32_t prompt_tokens = 0;
  int32_t cached_tokens = 0;
  int32_t device_tokens = 0;
  int32_t host_tokens = 0;
  int32_t disk_tokens = 0;
  int32_t prefilled_tokens = 0;
  int32_t generated_tokens = 0;
  int32_t preemptions = 0;
  double queue_ms = 0;
  double load_ms = 0;
  double prefill_ms = 0;
  double ttft_ms = 0;
  double decode_ms = 0;
  double total_ms = 0;
  std::string finish_reason;
  std::string session_saved;
};
struct Done {
  std::optional<Usage> usage;  // absent for requests that compute nothing (SessionDelete)
  std::string text;
  std::vector<int32_t> tokens;
};
struct ErrorReply {
  uint8_t code = 0;  // kvstash::StatusCode
  std::string message;
  bool fatal = false;  // the daemon closes the connection after it
};
struct TokenizeResult {
  std::vector<int32_t> tokens;
};
struct DetokenizeResult {
  std::string text;
};
struct SessionInfo {
  std::string name;
  std::string model;
  std::string model_fingerprint;
  int64_t tokens = 0;
  uint64_t bytes = 0;
  int64_t created_us = 0;
  int64_t last_used_us = 0;
};
struct SessionListResult {
  std::vector<SessionInfo> sessions;
};
struct TierStats {
  std::string tier;
  uint64_t blocks = 0;
  uint64_t bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
};
struct StatsResult {
  std::vector<TierStats> tiers;
  uint64_t lookups = 0;
  uint64_t lookup_tokens = 0;
  uint64_t cached_tokens = 0;
  uint64_t prefilled_tokens = 0;
  uint64_t generated_tokens = 0;
  uint64_t running = 0;
  uint64_t queue_depth = 0;
  uint64_t pages_total = 0;
  uint64_t pages_free = 0;
  uint64_t completed = 0;
  uint64_t cancelled = 0;
};
struct HealthResult {
  std::string status;
};

// Order matches the Body union of kvstash.fbs (index + 1 is the union type).
using Body = std::variant<Hello, HelloAck, GenerateRequest, PrefillRequest, TokenizeRequest,
                          DetokenizeRequest, SessionSaveRequest, SessionRestoreRequest,
                          SessionListRequest, SessionDeleteRequest, StatsRequest, HealthRequest,
                          CancelRequest, TokenChunk, Progress, Done, ErrorReply, TokenizeResult,
                          DetokenizeResult, SessionListResult, StatsResult, HealthResult>;

struct Frame {
  uint64_t id = 0;
  Body body;
};

// Whether a body is a request (client -> daemon) and whether it ends a request's answer.
bool IsRequest(const Body& b);
bool IsFinal(const Body& b);
// "Generate", "Done", ... (the union member's name).
const char* BodyName(const Body& b);

}  // namespace kvstash::protocol
