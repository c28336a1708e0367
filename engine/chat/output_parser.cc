// The streaming output parser: a three-mode state machine (answer text, reasoning, buffered tool
// call) over a buffer of the bytes not yet decided.
//
// Invariant: buf holds exactly the bytes that have been fed but not yet emitted or dropped, and
// every decision to emit, drop or re-interpret them is a function of those bytes alone — bytes
// are held back whenever a later byte could change the decision (a possible marker prefix, an
// unfinished UTF-8 character, whitespace whose fate depends on what follows, an open call).
// Together with the monotone call matchers (tool_call_syntax.h) this makes the accumulated result
// independent of chunking; tests/fuzz/output_parser_fuzz.cc checks it.
//
// Whitespace dropped (the only input bytes that are neither emitted nor part of a marker): at
// the start and end of a reasoning block, right after the reasoning block, between and after tool
// calls (unless answer text follows), and before a marker at the very start of the output.
#include "engine/chat/output_parser.h"

#include <algorithm>
#include <utility>

#include "engine/chat/tool_call_syntax.h"

namespace kvstash::engine {
namespace {

using tool_syntax::CallMatch;
using tool_syntax::IsJsonWs;
using tool_syntax::Scan;

// Once a buffered call is longer than this, it is re-matched only when a byte sequence that can
// end a call arrives ("</tool_call>" for the tagged formats, '}' or ']' for the bare JSON ones),
// so a long call streamed in small chunks is not re-scanned at every chunk. Safe because the
// matchers are monotone and every call ends with one of them. Measured: a 100 KB XML call fed in
// 4-byte chunks took 220 ms when re-matched on every '>' '}' ']', dominated by re-scanning.
constexpr size_t kRematchAlwaysBytes = 256;

// Length of the longest proper prefix of `marker` that is a suffix of `s`.
size_t PartialMarkerSuffix(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

// Largest cut <= k that does not split a UTF-8 character of s (invalid bytes cut anywhere).
size_t Utf8SafeCut(std::string_view s, size_t k) {
  size_t j = k;
  int continuation = 0;
  while (j > 0 && continuation < 4 && (static_cast<unsigned char>(s[j - 1]) & 0xC0) == 0x80) {
    --j;
    ++continuation;
  }
  if (j == 0 || continuation == 4) return k;
  auto lead = static_cast<unsigned char>(s[j - 1]);
  size_t len = lead < 0x80         ? 1
               : (lead >> 5) == 6  ? 2
               : (lead >> 4) == 14 ? 3
               : (lead >> 3) == 30 ? 4
                                   : 1;
  return (j - 1 + len > k) ? j - 1 : k;
}

}  // namespace

struct OutputParser::State {
  enum class Mode : uint8_t { kContent, kReasoning, kCall };
  // What the whitespace at the front of buf is adjacent to (kContent only).
  enum class Boundary : uint8_t {
    kNone,        // ordinary text
    kStart,       // start of output: dropped before a marker, else text
    kAfterThink,  // after </think>: always dropped
    kAfterCall,   // after a tool call: dropped unless answer text follows
  };

  explicit State(const OutputParserOptions& o)
      : format(o.format),
        reasoning(o.reasoning),
        think_open(o.format == ToolCallFormat::kMistral ? "[THINK]" : "<think>"),
        think_close(o.format == ToolCallFormat::kMistral ? "[/THINK]" : "</think>"),
        openers(tool_syntax::CallOpeners(o.format)),
        positional_openers(tool_syntax::PositionalCallOpeners(o.format)),
        schemas(tool_syntax::ToolSchemas::FromJson(o.tools)) {
    if (reasoning && o.starts_in_reasoning) {
      mode = Mode::kReasoning;
      reasoning_start = true;
    }
    think_allowed = reasoning && !o.starts_in_reasoning;
    bool any_marker = think_allowed || !openers.empty() || !positional_openers.empty();
    boundary = any_marker ? Boundary::kStart : Boundary::kNone;
  }

  // --- configuration ---
  const ToolCallFormat format;
  const bool reasoning;
  const std::string_view think_open, think_close;
  const std::vector<std::string_view> openers;             // anywhere in the text
  const std::vector<std::string_view> positional_openers;  // at the start / after a call
  const tool_syntax::ToolSchemas schemas;

  // --- stream state ---
  std::string buf;  // fed, not yet emitted or dropped
  Mode mode = Mode::kContent;
  Boundary boundary = Boundary::kStart;
  bool reasoning_start = false;  // kReasoning: nothing but whitespace seen in this block yet
  bool think_allowed = false;    // the reasoning opener may still appear
  bool call_position = true;     // positional openers may appear (no answer text since start/call)
  // kCall: length of the opener at buf[0], whitespace dropped before it (restored if the call
  // turns out not to be one), and how far buf was checked for call-ending bytes.
  size_t opener_len = 0;
  std::string dropped_ws;
  size_t rematch_scanned = 0;
  int n_calls = 0;
  // Events appended by the current Feed/Finish start here (text is coalesced only within them).
  size_t first_new_event = 0;

  void Emit(OutputEvent::Kind kind, std::string_view text, std::vector<OutputEvent>* out) {
    if (text.empty()) return;
    if (out->size() > first_new_event && out->back().kind == kind) {
      out->back().text.append(text);
      return;
    }
    OutputEvent e;
    e.kind = kind;
    e.text = std::string(text);
    out->push_back(std::move(e));
  }

  void Process(bool final, std::vector<OutputEvent>* out) {
    first_new_event = out->size();
    for (;;) {
      bool changed = false;
      switch (mode) {
        case Mode::kReasoning:
          changed = StepReasoning(final, out);
          break;
        case Mode::kContent:
          changed = StepContent(final, out);
          break;
        case Mode::kCall:
          changed = StepCall(final, out);
          break;
      }
      if (!changed) return;
    }
  }

  // Each Step either changes mode (returns true) or has consumed all it can (returns false).
  bool StepReasoning(bool final, std::vector<OutputEvent>* out) {
    if (reasoning_start) {
      size_t n = 0;
      while (n < buf.size() && IsJsonWs(buf[n])) ++n;
      buf.erase(0, n);
      if (buf.empty()) return false;
      reasoning_start = false;
    }
    size_t pos = buf.find(think_close);
    if (pos != std::string::npos) {
      size_t end = pos;
      while (end > 0 && IsJsonWs(buf[end - 1])) --end;
      Emit(OutputEvent::kReasoning, std::string_view(buf).substr(0, end), out);
      buf.erase(0, pos + think_close.size());
      mode = Mode::kContent;
      boundary = Boundary::kAfterThink;
      return true;
    }
    if (final) {
      Emit(OutputEvent::kReasoning, buf, out);
      buf.clear();
      return false;
    }
    // Hold back a possible start of the closing marker and the whitespace before it (trimmed if
    // the block closes there).
    size_t keep = buf.size() - PartialMarkerSuffix(buf, think_close);
    while (keep > 0 && IsJsonWs(buf[keep - 1])) --keep;
    keep = Utf8SafeCut(buf, keep);
    Emit(OutputEvent::kReasoning, std::string_view(buf).substr(0, keep), out);
    buf.erase(0, keep);
    return false;
  }

  enum class OpenerMatch : uint8_t { kNone, kPartial, kThink, kCall };

  // Which marker starts at the front of `s` (s may be a proper prefix of one: kPartial).
  OpenerMatch MatchOpener(std::string_view s, bool final, size_t* len) const {
    bool partial = false;
    auto check = [&](std::string_view marker) {
      if (s.starts_with(marker)) {
        *len = marker.size();
        return true;
      }
      if (!final && marker.starts_with(s)) partial = true;
      return false;
    };
    if (think_allowed && check(think_open)) return OpenerMatch::kThink;
    for (std::string_view m : openers) {
      if (check(m)) return OpenerMatch::kCall;
    }
    if (call_position) {
      for (std::string_view m : positional_openers) {
        if (check(m)) return OpenerMatch::kCall;
      }
    }
    return partial ? OpenerMatch::kPartial : OpenerMatch::kNone;
  }

  bool StartMarker(OpenerMatch kind, size_t len) {
    if (kind == OpenerMatch::kThink) {
      buf.erase(0, len);
      mode = Mode::kReasoning;
      reasoning_start = true;
      think_allowed = false;
      boundary = Boundary::kNone;
      return true;
    }
    mode = Mode::kCall;
    opener_len = len;
    rematch_scanned = 0;
    return true;
  }

  // Whitespace separating Llama 3 calls may include ';' ({…}; {…}).
  bool IsBoundarySkip(char c) const {
    return IsJsonWs(c) ||
           (c == ';' && boundary == Boundary::kAfterCall && format == ToolCallFormat::kLlama3Json);
  }

  bool StepContent(bool final, std::vector<OutputEvent>* out) {
    if (boundary != Boundary::kNone) {
      size_t n = 0;
      while (n < buf.size() && IsBoundarySkip(buf[n])) ++n;
      if (n == buf.size() && !final) return false;
      size_t len = 0;
      OpenerMatch m = MatchOpener(std::string_view(buf).substr(n), final, &len);
      if (m == OpenerMatch::kPartial || (n == buf.size() && !final)) return false;
      if (m == OpenerMatch::kThink || m == OpenerMatch::kCall) {
        dropped_ws = boundary == Boundary::kAfterThink ? "" : buf.substr(0, n);
        buf.erase(0, n);
        return StartMarker(m, len);
      }
      // Not a marker: the whitespace is text unless it follows the reasoning block or the output
      // ends after a call.
      if (boundary == Boundary::kAfterThink ||
          (boundary == Boundary::kAfterCall && n == buf.size()))
        buf.erase(0, n);
      boundary = Boundary::kNone;
      think_allowed = false;
      if (!buf.empty()) call_position = false;
    }
    // Earliest opener anywhere in the text.
    size_t best = std::string::npos, best_len = 0;
    for (std::string_view m : openers) {
      size_t p = buf.find(m);
      if (p < best) {
        best = p;
        best_len = m.size();
      }
    }
    if (best != std::string::npos) {
      Emit(OutputEvent::kText, std::string_view(buf).substr(0, best), out);
      buf.erase(0, best);
      dropped_ws.clear();
      think_allowed = false;
      call_position = false;
      return StartMarker(OpenerMatch::kCall, best_len);
    }
    if (final) {
      Emit(OutputEvent::kText, buf, out);
      buf.clear();
      return false;
    }
    size_t hold = 0;
    for (std::string_view m : openers) hold = std::max(hold, PartialMarkerSuffix(buf, m));
    size_t keep = Utf8SafeCut(buf, buf.size() - hold);
    Emit(OutputEvent::kText, std::string_view(buf).substr(0, keep), out);
    buf.erase(0, keep);
    return false;
  }

  bool WorthMatching() {
    if (buf.size() <= kRematchAlwaysBytes) return true;
    // Overlap the previous scan by a marker's length so a closing tag split across chunks counts.
    size_t from = rematch_scanned > 16 ? rematch_scanned - 16 : 0;
    bool tagged = format == ToolCallFormat::kHermesJson || format == ToolCallFormat::kQwenXml;
    bool ending = tagged ? buf.find("</tool_call>", from) != std::string::npos
                         : buf.find_first_of("}]", from) != std::string::npos;
    rematch_scanned = buf.size();
    return ending;
  }

  bool StepCall(bool final, std::vector<OutputEvent>* out) {
    if (!final && !WorthMatching()) return false;
    CallMatch m = tool_syntax::MatchToolCalls(format, buf, schemas);
    if (m.scan == Scan::kNeedMore && !final) return false;
    if (m.scan == Scan::kComplete) {
      for (tool_syntax::ToolCall& c : m.calls) EmitCall(std::move(c), out);
      buf.erase(0, m.consumed);
      mode = Mode::kContent;
      boundary = Boundary::kAfterCall;
      call_position = true;
      think_allowed = false;
      return true;
    }
    // Not a call (or unterminated at the end): the opener is text and scanning resumes after it.
    Emit(OutputEvent::kText, dropped_ws, out);
    Emit(OutputEvent::kText, std::string_view(buf).substr(0, opener_len), out);
    dropped_ws.clear();
    buf.erase(0, opener_len);
    mode = Mode::kContent;
    boundary = Boundary::kNone;
    think_allowed = false;
    call_position = false;
    return true;
  }

  void EmitCall(tool_syntax::ToolCall call, std::vector<OutputEvent>* out) {
    int index = n_calls++;
    OutputEvent begin;
    begin.kind = OutputEvent::kToolCallBegin;
    begin.tool_index = index;
    begin.name = std::move(call.name);
    begin.id = std::move(call.id);
    out->push_back(std::move(begin));
    OutputEvent args;
    args.kind = OutputEvent::kToolCallArgs;
    args.tool_index = index;
    args.text = std::move(call.arguments);
    out->push_back(std::move(args));
    OutputEvent end;
    end.kind = OutputEvent::kToolCallEnd;
    end.tool_index = index;
    end.error = std::move(call.error);
    out->push_back(std::move(end));
    dropped_ws.clear();
  }
};

OutputParser::OutputParser(const OutputParserOptions& options)
    : s_(std::make_unique<State>(options)) {}

OutputParser::~OutputParser() = default;

void OutputParser::Feed(std::string_view chunk, std::vector<OutputEvent>* out) {
  s_->buf.append(chunk);
  s_->Process(/*final=*/false, out);
}

void OutputParser::Finish(std::vector<OutputEvent>* out) { s_->Process(/*final=*/true, out); }

void AccumulateEvents(std::span<const OutputEvent> events, ParsedOutput* result) {
  for (const OutputEvent& e : events) {
    switch (e.kind) {
      case OutputEvent::kText:
        result->text += e.text;
        break;
      case OutputEvent::kReasoning:
        result->reasoning += e.text;
        break;
      case OutputEvent::kToolCallBegin:
        result->calls.push_back({e.name, e.id, "", ""});
        break;
      case OutputEvent::kToolCallArgs:
        if (!result->calls.empty()) result->calls.back().arguments_json += e.text;
        break;
      case OutputEvent::kToolCallEnd:
        if (!result->calls.empty()) result->calls.back().error = e.error;
        break;
    }
  }
}

ParsedOutput ParseOutput(std::string_view all, const OutputParserOptions& options) {
  OutputParser parser(options);
  std::vector<OutputEvent> events;
  parser.Feed(all, &events);
  parser.Finish(&events);
  ParsedOutput result;
  AccumulateEvents(events, &result);
  return result;
}

}  // namespace kvstash::engine
