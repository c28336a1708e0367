// Output parser: realistic outputs of each model family (text, reasoning, single and parallel
// tool calls), malformed markup degrading to text, invalid arguments reported, and the property
// the streaming API promises — the accumulated result is the same however the output is split
// into chunks (every split point, 1-byte chunks, random chunkings).
#include "engine/chat/output_parser.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/chat/tool_call_syntax.h"

namespace kvstash::engine {
namespace {

using json = nlohmann::json;
using Call = ParsedOutput::Call;

// True when `s` is well-formed UTF-8.
bool IsUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

ParsedOutput ParseChunks(std::string_view all, const std::vector<size_t>& cuts,
                         const OutputParserOptions& options, bool check_utf8) {
  OutputParser parser(options);
  std::vector<OutputEvent> events;
  size_t prev = 0;
  for (size_t cut : cuts) {
    parser.Feed(all.substr(prev, cut - prev), &events);
    prev = cut;
  }
  parser.Feed(all.substr(prev), &events);
  parser.Finish(&events);
  for (const OutputEvent& e : events) {
    if (check_utf8 && (e.kind == OutputEvent::kText || e.kind == OutputEvent::kReasoning)) {
      EXPECT_TRUE(IsUtf8(e.text)) << "event splits a UTF-8 character: " << e.text;
    }
    if (e.kind == OutputEvent::kText || e.kind == OutputEvent::kReasoning) {
      EXPECT_FALSE(e.text.empty());
      EXPECT_EQ(e.tool_index, -1);
    }
  }
  ParsedOutput result;
  AccumulateEvents(events, &result);
  return result;
}

std::string Describe(const ParsedOutput& p) {
  std::string s = "text=[" + p.text + "] reasoning=[" + p.reasoning + "]";
  for (const Call& c : p.calls) {
    s += " call{" + c.name + " id=" + c.id + " args=" + c.arguments_json + " err=" + c.error + "}";
  }
  return s;
}

// Parses `all` unsplit, then split at every byte boundary, in 1-byte chunks and in random
// chunkings, and expects the same result each time. Returns the unsplit result.
ParsedOutput ParseEverySplit(std::string_view all, const OutputParserOptions& options) {
  ParsedOutput whole = ParseOutput(all, options);
  bool utf8 = IsUtf8(all);
  for (size_t k = 0; k <= all.size(); ++k) {
    ParsedOutput split = ParseChunks(all, {k}, options, utf8);
    EXPECT_EQ(split, whole) << "split at " << k << ": " << Describe(split) << "\nvs "
                            << Describe(whole);
    if (split != whole) break;
  }
  std::vector<size_t> bytes;
  for (size_t k = 1; k < all.size(); ++k) bytes.push_back(k);
  EXPECT_EQ(ParseChunks(all, bytes, options, utf8), whole) << "1-byte chunks";
  std::mt19937 rng(static_cast<uint32_t>(all.size()));
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<size_t> cuts;
    for (size_t k = 1; k < all.size(); ++k) {
      if (rng() % 5 == 0) cuts.push_back(k);
    }
    EXPECT_EQ(ParseChunks(all, cuts, options, utf8), whole) << "random chunking " << trial;
  }
  return whole;
}

OutputParserOptions Opts(ToolCallFormat format, bool starts_in_reasoning = false,
                         const json* tools = nullptr) {
  OutputParserOptions o;
  o.format = format;
  o.starts_in_reasoning = starts_in_reasoning;
  o.tools = tools;
  return o;
}

ParsedOutput Text(std::string text, std::string reasoning = "") {
  return ParsedOutput{std::move(text), std::move(reasoning), {}};
}

// ---- Reasoning ---------------------------------------------------------------------------------

TEST(OutputParserTest, ThinkBlockIsReasoningAndItsWhitespaceIsTrimmed) {
  EXPECT_EQ(ParseEverySplit("<think>\nThe user greets me.\nBe brief.\n</think>\n\nHello!",
                            Opts(ToolCallFormat::kNone)),
            Text("Hello!", "The user greets me.\nBe brief."));
}

TEST(OutputParserTest, PromptOpenedThinkOnlyClosingMarkerAppears) {
  EXPECT_EQ(ParseEverySplit("Step 1: add.\n2 + 2 = 4\n</think>\n\nIt is 4.",
                            Opts(ToolCallFormat::kNone, /*starts_in_reasoning=*/true)),
            Text("It is 4.", "Step 1: add.\n2 + 2 = 4"));
}

TEST(OutputParserTest, UnterminatedReasoningStaysReasoning) {
  EXPECT_EQ(ParseEverySplit("<think>\nI ran out of tok", Opts(ToolCallFormat::kNone)),
            Text("", "I ran out of tok"));
}

TEST(OutputParserTest, EmptyThinkBlockGivesNoReasoning) {
  EXPECT_EQ(ParseEverySplit("<think>\n\n</think>\n\nHi", Opts(ToolCallFormat::kHermesJson)),
            Text("Hi"));
}

TEST(OutputParserTest, ThinkMarkerLaterInTheTextIsText) {
  std::string s = "Models write <think> and </think> around reasoning.";
  EXPECT_EQ(ParseEverySplit(s, Opts(ToolCallFormat::kNone)), Text(s));
}

TEST(OutputParserTest, ReasoningDisabledLeavesMarkersAsText) {
  OutputParserOptions o = Opts(ToolCallFormat::kNone);
  o.reasoning = false;
  std::string s = "<think>x</think>y";
  EXPECT_EQ(ParseEverySplit(s, o), Text(s));
}

TEST(OutputParserTest, UnicodeReasoningAndTextAreNeverSplitMidCharacter) {
  EXPECT_EQ(ParseEverySplit("<think>Größe: 東京 🎉</think>Ответ: 😀", Opts(ToolCallFormat::kNone)),
            Text("Ответ: 😀", "Größe: 東京 🎉"));
}

TEST(OutputParserTest, PlainTextIsUnchanged) {
  for (std::string s :
       {std::string(""), std::string("  leading space"), std::string("a < b"),
        std::string("trailing <"), std::string("<tool_call"), std::string("\n\n")}) {
    EXPECT_EQ(ParseEverySplit(s, Opts(ToolCallFormat::kHermesJson)), Text(s)) << s;
  }
}

TEST(OutputParserTest, TextIsEmittedBeforeTheOutputEnds) {
  OutputParser p(Opts(ToolCallFormat::kHermesJson));
  std::vector<OutputEvent> ev;
  p.Feed("Hello wor", &ev);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "Hello wor");
  ev.clear();
  p.Feed("ld <tool", &ev);  // "<tool" may open a call: held back
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "ld ");
  ev.clear();
  p.Feed("box>", &ev);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "<toolbox>");
  ev.clear();
  p.Feed("\xC3", &ev);  // first byte of "é": held back
  EXPECT_TRUE(ev.empty());
  p.Feed("\xA9", &ev);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "é");
}

// ---- Hermes / Qwen3 JSON ------------------------------------------------------------------------

TEST(OutputParserTest, HermesSingleCall) {
  ParsedOutput p = ParseEverySplit(
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}\n</tool_call>",
      Opts(ToolCallFormat::kHermesJson));
  EXPECT_EQ(p, (ParsedOutput{"", "", {{"get_weather", "", R"({"city": "Paris"})", ""}}}));
}

TEST(OutputParserTest, HermesReasoningTextThenParallelCalls) {
  ParsedOutput p = ParseEverySplit(
      "<think>\nNeed both cities.\n</think>\n\nChecking both.\n"
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich 東京 🎉\"}}\n"
      "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": "
      "\"Europe/Paris\", \"nested\": {\"a\": [1, {\"b\": null}], \"s\": \"say \\\"hi\\\" "
      "</tool_call> {]\"}}}\n</tool_call>",
      Opts(ToolCallFormat::kHermesJson));
  EXPECT_EQ(p.reasoning, "Need both cities.");
  EXPECT_EQ(p.text, "Checking both.\n");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(p.calls[0].arguments_json)["city"], "Zürich 東京 🎉");
  EXPECT_EQ(p.calls[1].name, "get_time");
  json args = json::parse(p.calls[1].arguments_json);
  EXPECT_EQ(args["nested"]["s"], "say \"hi\" </tool_call> {]");
  EXPECT_EQ(args["nested"]["a"][1]["b"], nullptr);
  EXPECT_TRUE(p.calls[0].error.empty() && p.calls[1].error.empty());
}

TEST(OutputParserTest, HermesTextAfterCallKeepsItsWhitespace) {
  ParsedOutput p =
      ParseEverySplit("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n\nDone.",
                      Opts(ToolCallFormat::kHermesJson));
  EXPECT_EQ(p, (ParsedOutput{"\n\nDone.", "", {{"f", "", "{}", ""}}}));
}

TEST(OutputParserTest, HermesInvalidArgumentsAreReportedNotRepaired) {
  ParsedOutput p = ParseEverySplit(
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": tru, \"b\": 'x'}}\n</tool_call>",
      Opts(ToolCallFormat::kHermesJson));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments_json, "{\"a\": tru, \"b\": 'x'}");
  EXPECT_EQ(p.calls[0].error, "arguments are not valid JSON");
  EXPECT_EQ(p.text, "");
}

TEST(OutputParserTest, HermesDoubleEncodedArgumentsAreUnwrapped) {
  ParsedOutput p =
      ParseEverySplit(R"(<tool_call>{"name": "f", "arguments": "{\"a\": 1}"}</tool_call>)",
                      Opts(ToolCallFormat::kHermesJson));
  EXPECT_EQ(p, (ParsedOutput{"", "", {{"f", "", R"({"a": 1})", ""}}}));
}

TEST(OutputParserTest, HermesArgumentsThatAreNotAnObjectAreReported) {
  ParsedOutput p = ParseEverySplit(R"(<tool_call>{"name": "f", "arguments": [1]}</tool_call>)",
                                   Opts(ToolCallFormat::kHermesJson));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].error, "arguments are not a JSON object");
}

TEST(OutputParserTest, HermesMalformedMarkupDegradesToText) {
  const char* cases[] = {
      // Unterminated call.
      "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}",
      // Unterminated JSON string.
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"x}}\n</tool_call>",
      // Not JSON after the tag.
      "Wrap calls in <tool_call> tags, like <tool_call>this</tool_call>.",
      // No name.
      "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
      // Something after the JSON before the closing tag.
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {}} extra\n</tool_call>",
      // Mismatched brackets.
      "<tool_call>{\"name\": \"f\", \"arguments\": {]}</tool_call> after",
      // Broken object layout.
      "<tool_call>{\"name\" \"f\"}</tool_call>",
  };
  for (const char* c : cases) {
    EXPECT_EQ(ParseEverySplit(c, Opts(ToolCallFormat::kHermesJson)), Text(c)) << c;
  }
}

TEST(OutputParserTest, HermesBadCallThenGoodCall) {
  ParsedOutput p = ParseEverySplit(
      "<tool_call>oops</tool_call>\n<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>",
      Opts(ToolCallFormat::kHermesJson));
  EXPECT_EQ(p, (ParsedOutput{"<tool_call>oops</tool_call>\n", "", {{"g", "", "{}", ""}}}));
}

TEST(OutputParserTest, LeadingWhitespaceBeforeAFailedCallIsKept) {
  EXPECT_EQ(ParseEverySplit("\n\n<tool_call> is a tag", Opts(ToolCallFormat::kHermesJson)),
            Text("\n\n<tool_call> is a tag"));
}

TEST(OutputParserTest, EventsOfACall) {
  OutputParser p(Opts(ToolCallFormat::kHermesJson));
  std::vector<OutputEvent> ev;
  p.Feed("Hi <tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>", &ev);
  p.Finish(&ev);
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].kind, OutputEvent::kText);
  EXPECT_EQ(ev[1].kind, OutputEvent::kToolCallBegin);
  EXPECT_EQ(ev[1].name, "f");
  EXPECT_EQ(ev[1].tool_index, 0);
  EXPECT_EQ(ev[2].kind, OutputEvent::kToolCallArgs);
  EXPECT_EQ(ev[2].text, "{\"x\": 1}");
  EXPECT_EQ(ev[3].kind, OutputEvent::kToolCallEnd);
  EXPECT_EQ(ev[3].tool_index, 0);
}

TEST(OutputParserTest, CallEventsArriveWhenTheCallClosesNotAtFinish) {
  OutputParser p(Opts(ToolCallFormat::kMistral));
  std::vector<OutputEvent> ev;
  p.Feed("[TOOL_CALLS]a[CALL_ID]id1[ARGS]{\"x\": ", &ev);
  EXPECT_TRUE(ev.empty());
  p.Feed("1}[TOOL_CALLS]b[ARGS]{}", &ev);
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[0].kind, OutputEvent::kToolCallBegin);
  EXPECT_EQ(ev[0].name, "a");
  EXPECT_EQ(ev[0].id, "id1");
  EXPECT_EQ(ev[1].text, "{\"x\": 1}");
  EXPECT_EQ(ev[3].kind, OutputEvent::kToolCallBegin);
  EXPECT_EQ(ev[3].tool_index, 1);
  EXPECT_EQ(ev[5].kind, OutputEvent::kToolCallEnd);
  ev.clear();
  p.Finish(&ev);
  EXPECT_TRUE(ev.empty());
}

// ---- Qwen3.5 / Qwen3-Coder XML
// -------------------------------------------------------------------

const json& Tools() {
  static const json tools = json::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                     "metric": {"type": "boolean"}, "lat": {"type": "number"},
                     "opts": {"type": "object"}, "tags": {"type": "array"},
                     "note": {"type": ["string", "null"]}, "maybe": {"type": ["integer", "null"]},
                     "any": {"anyOf": [{"type": "number"}, {"type": "boolean"}]}}}}},
    {"type": "function", "function": {"name": "write_file", "parameters": {"type": "object",
      "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}},
    {"name": "bare", "parameters": {"properties": {"n": {"type": "integer"}}}},
    "garbage", 42, {"function": {"name": 7}}
  ])");
  return tools;
}

TEST(OutputParserTest, QwenXmlCallWithSchemaTypes) {
  ParsedOutput p = ParseEverySplit(
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n"
      "<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n"
      "<parameter=lat>\n-23.5\n</parameter>\n<parameter=opts>\n{\"a\": [1, 2]}\n</parameter>\n"
      "<parameter=tags>\n[\"x\"]\n</parameter>\n<parameter=note>\nnull\n</parameter>\n"
      "<parameter=maybe>\nnull\n</parameter>\n<parameter=any>\nfalse\n</parameter>\n"
      "<parameter=unknown>\n5\n</parameter>\n</function>\n</tool_call>",
      Opts(ToolCallFormat::kQwenXml, false, &Tools()));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(p.calls[0].error, "");
  EXPECT_EQ(p.calls[0].arguments_json,
            R"({"city": "São Paulo", "days": 3, "metric": true, "lat": -23.5, )"
            R"("opts": {"a": [1, 2]}, "tags": ["x"], "note": "null", "maybe": null, )"
            R"("any": false, "unknown": "5"})");
}

TEST(OutputParserTest, QwenXmlMultilineValuesWithAngleBrackets) {
  ParsedOutput p = ParseEverySplit(
      "I'll write the file.\n\n<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/a.cc\n"
      "</parameter>\n<parameter=content>\n#include <vector>\nint main() {\n  if (1 < 2) "
      "return 0;\n}\n// </function> </tool_call>\n\n</parameter>\n</function>\n</tool_call>",
      Opts(ToolCallFormat::kQwenXml, false, &Tools()));
  EXPECT_EQ(p.text, "I'll write the file.\n\n");
  ASSERT_EQ(p.calls.size(), 1u);
  json args = json::parse(p.calls[0].arguments_json);
  EXPECT_EQ(args["path"], "src/a.cc");
  EXPECT_EQ(args["content"],
            "#include <vector>\nint main() {\n  if (1 < 2) return 0;\n}\n// </function> "
            "</tool_call>\n");
}

TEST(OutputParserTest, QwenXmlWithoutToolsEveryValueIsAString) {
  ParsedOutput p = ParseEverySplit(
      "<tool_call>\n<function=f>\n<parameter=n>\n3\n</parameter>\n</function>\n</tool_call>",
      Opts(ToolCallFormat::kQwenXml));
  EXPECT_EQ(p, (ParsedOutput{"", "", {{"f", "", R"({"n": "3"})", ""}}}));
}

TEST(OutputParserTest, QwenXmlValueThatDoesNotFitItsTypeIsReported) {
  ParsedOutput p = ParseEverySplit(
      "<tool_call>\n<function=get_weather>\n<parameter=days>\nthree\n</parameter>\n"
      "<parameter=metric>\nTrue\n</parameter>\n<parameter=lat>\n1.5\n</parameter>\n"
      "</function>\n</tool_call>",
      Opts(ToolCallFormat::kQwenXml, false, &Tools()));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments_json, R"({"days": "three", "metric": "True", "lat": 1.5})");
  EXPECT_EQ(p.calls[0].error,
            "parameter \"days\" is not a valid integer value; parameter \"metric\" is not a valid "
            "boolean value");
}

// nlohmann's lexer stops at a NUL byte (the end of a C string), so "3\0x" would pass as the
// integer 3 and the arguments would carry the raw NUL: invalid JSON with no error. A value with a
// NUL in it is not JSON; it is reported and kept as a string (found by fuzz.output_parser).
TEST(OutputParserTest, QwenXmlValueWithANulByteAfterJsonIsReported) {
  using namespace std::string_literals;
  ParsedOutput p = ParseEverySplit(
      "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\0x\n</parameter>\n"
      "<parameter=opts>\n{\"k\": [1]}\n\0\0\n</parameter>\n</function>\n</tool_call>"s,
      Opts(ToolCallFormat::kQwenXml, false, &Tools()));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_TRUE(json::accept(p.calls[0].arguments_json)) << p.calls[0].arguments_json;
  EXPECT_EQ(json::parse(p.calls[0].arguments_json),
            json({{"days", "3\0x"s}, {"opts", "{\"k\": [1]}\n\0\0"s}}));
  EXPECT_EQ(p.calls[0].error,
            "parameter \"days\" is not a valid integer value; parameter \"opts\" is not a valid "
            "object value");
}

TEST(OutputParserTest, HermesDoubleEncodedArgumentsWithANulAreReported) {
  ParsedOutput p =
      ParseEverySplit(R"(<tool_call>{"name": "f", "arguments": "{\"a\": 1}\u0000x"}</tool_call>)",
                      Opts(ToolCallFormat::kHermesJson));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].error, "arguments are a JSON string, not an object");
}

TEST(OutputParserTest, QwenXmlReasoningThenParallelCalls) {
  // Qwen3.5's generation prompt ends with "<think>\n".
  ParsedOutput p = ParseEverySplit(
      "Two lookups needed.\n</think>\n\n<tool_call>\n<function=bare>\n<parameter=n>\n1\n"
      "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=bare>\n<parameter=n>\n2\n"
      "</parameter>\n</function>\n</tool_call>\n",
      Opts(ToolCallFormat::kQwenXml, /*starts_in_reasoning=*/true, &Tools()));
  EXPECT_EQ(p, (ParsedOutput{"",
                             "Two lookups needed.",
                             {{"bare", "", R"({"n": 1})", ""}, {"bare", "", R"({"n": 2})", ""}}}));
}

TEST(OutputParserTest, QwenXmlNoParametersAndJsonBodyBothAccepted) {
  ParsedOutput p = ParseEverySplit(
      "<tool_call>\n<function=now>\n</function>\n</tool_call><tool_call>\n{\"name\": \"j\", "
      "\"arguments\": {}}\n</tool_call>",
      Opts(ToolCallFormat::kQwenXml));
  EXPECT_EQ(p, (ParsedOutput{"", "", {{"now", "", "{}", ""}, {"j", "", "{}", ""}}}));
}

TEST(OutputParserTest, QwenXmlMalformedDegradesToText) {
  const char* cases[] = {
      "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>",
      "<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</tool_call>",
      "<tool_call>\n<function=>\n</function>\n</tool_call>",
      "<tool_call>\n<function=f\n>\n</function>\n</tool_call>",
      "<tool_call>\n<func=f>\n</func>\n</tool_call>",
      "<tool_call>\n<function=f>\n</function>\n",
      "<tool_call>\n<function=f>\nstray text\n</function>\n</tool_call>",
      // Names that are not valid UTF-8 (regression: found by output_parser_fuzz).
      "<tool_call>\n<function=f\x8e>\n</function>\n</tool_call>",
      "<tool_call>\n<function=f>\n<parameter=\xff>\n1\n</parameter>\n</function>\n</tool_call>",
  };
  for (const char* c : cases) {
    EXPECT_EQ(ParseEverySplit(c, Opts(ToolCallFormat::kQwenXml, false, &Tools())), Text(c)) << c;
  }
}

// ---- Llama 3.x JSON -----------------------------------------------------------------------------

TEST(OutputParserTest, Llama3BareJsonCall) {
  EXPECT_EQ(
      ParseEverySplit(
          R"({"name": "get_weather", "parameters": {"city": "Paris", "q": "a \"b\" }"}})",
          Opts(ToolCallFormat::kLlama3Json)),
      (ParsedOutput{"", "", {{"get_weather", "", R"({"city": "Paris", "q": "a \"b\" }"})", ""}}}));
}

TEST(OutputParserTest, Llama3PythonTagAndArgumentsKey) {
  EXPECT_EQ(
      ParseEverySplit(
          "<|python_tag|>{\"type\": \"function\", \"name\": \"f\", \"arguments\": {\"x\": 1}}",
          Opts(ToolCallFormat::kLlama3Json)),
      (ParsedOutput{"", "", {{"f", "", R"({"x": 1})", ""}}}));
}

TEST(OutputParserTest, Llama3SeveralCallsSeparatedBySemicolons) {
  EXPECT_EQ(ParseEverySplit(
                " {\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {}}\n",
                Opts(ToolCallFormat::kLlama3Json)),
            (ParsedOutput{"", "", {{"a", "", "{}", ""}, {"b", "", "{}", ""}}}));
}

TEST(OutputParserTest, Llama3JsonAnswerStreamsOnceItsFirstKeyRulesOutACall) {
  OutputParser p(Opts(ToolCallFormat::kLlama3Json));
  std::vector<OutputEvent> ev;
  p.Feed("{\"items\": [1, 2", &ev);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "{\"items\": [1, 2");
}

TEST(OutputParserTest, Llama3InvalidArgumentsReported) {
  ParsedOutput p = ParseEverySplit(R"({"name": "f", "parameters": {"a": 01}})",
                                   Opts(ToolCallFormat::kLlama3Json));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments_json, R"({"a": 01})");
  EXPECT_EQ(p.calls[0].error, "arguments are not valid JSON");
}

TEST(OutputParserTest, Llama3TextAndNonCallJsonStayText) {
  const char* cases[] = {
      "Hello! {\"name\": \"f\", \"parameters\": {}}",
      "{\"name\": \"Ada\", \"age\": 36}",
      "{\"name\": \"f\"}",
      "{\"parameters\": {}}",
      "{\"name\": \"f\", \"parameters\": {\"a\": 1}",
      "{not json at all}",
      "<|python_tag|>brave_search.call(query=\"x\")",
      "{\"name\": \"a\", \"parameters\": {}} and then some text {\"name\": \"b\"}",
  };
  for (const char* c : cases) {
    ParsedOutput p = ParseEverySplit(c, Opts(ToolCallFormat::kLlama3Json));
    if (std::string_view(c).starts_with("{\"name\": \"a\"")) {
      EXPECT_EQ(p,
                (ParsedOutput{" and then some text {\"name\": \"b\"}", "", {{"a", "", "{}", ""}}}));
    } else {
      EXPECT_EQ(p, Text(c)) << c;
    }
  }
}

// ---- Mistral ------------------------------------------------------------------------------------

TEST(OutputParserTest, MistralNemoArrayWithIds) {
  ParsedOutput p = ParseEverySplit(
      "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": "
      "\"abc123def\"}, {\"name\": \"get_time\", \"arguments\": {}, \"id\": \"xyz987uvw\"}]",
      Opts(ToolCallFormat::kMistral));
  EXPECT_EQ(p, (ParsedOutput{"",
                             "",
                             {{"get_weather", "abc123def", R"({"city": "Paris"})", ""},
                              {"get_time", "xyz987uvw", "{}", ""}}}));
}

TEST(OutputParserTest, MistralNameArgsStyleParallelAndCallId) {
  ParsedOutput p = ParseEverySplit(
      "Let me look.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Köln\"}[TOOL_CALLS]get_time"
      "[CALL_ID]a1b2c3d4e[ARGS]{\"tz\": {\"name\": \"CET\"}}",
      Opts(ToolCallFormat::kMistral));
  EXPECT_EQ(p, (ParsedOutput{"Let me look.",
                             "",
                             {{"get_weather", "", R"({"city": "Köln"})", ""},
                              {"get_time", "a1b2c3d4e", R"({"tz": {"name": "CET"}})", ""}}}));
}

TEST(OutputParserTest, MistralThinkBlock) {
  EXPECT_EQ(ParseEverySplit("[THINK]Short.[/THINK]Answer", Opts(ToolCallFormat::kMistral)),
            Text("Answer", "Short."));
}

TEST(OutputParserTest, MistralInvalidArgumentsReported) {
  ParsedOutput p = ParseEverySplit("[TOOL_CALLS]f[ARGS]{\"a\": }", Opts(ToolCallFormat::kMistral));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].error, "arguments are not valid JSON");
}

TEST(OutputParserTest, MistralMalformedDegradesToText) {
  const char* cases[] = {
      "[TOOL_CALLS] hello there",
      "[TOOL_CALLS]f[ARGS]{\"a\": 1",
      "[TOOL_CALLS]f[ARGS]nope",
      "[TOOL_CALLS]f(x)",
      "[TOOL_CALLS][]",
      "[TOOL_CALLS][{\"name\": \"f\"}, 3]",
      "[TOOL_CALLS][{\"arguments\": {}}]",
  };
  // Names longer than 256 bytes are not calls, in the list form too (regression: found by
  // output_parser_fuzz, the NAME[ARGS] form could not carry them).
  std::string long_name(300, 'f');
  std::string nemo = "[TOOL_CALLS][{\"name\": \"" + long_name + "\", \"arguments\": {}}]";
  EXPECT_EQ(ParseEverySplit(nemo, Opts(ToolCallFormat::kMistral)), Text(nemo));
  std::string bare = "[TOOL_CALLS]" + long_name + "[ARGS]{}";
  EXPECT_EQ(ParseEverySplit(bare, Opts(ToolCallFormat::kMistral)), Text(bare));
  for (const char* c : cases) {
    EXPECT_EQ(ParseEverySplit(c, Opts(ToolCallFormat::kMistral)), Text(c)) << c;
  }
}

// Calls longer than the parser's always-re-match window (256 bytes) are re-matched only when a
// closing sequence arrives; a closing tag split across chunks must still complete them.
TEST(OutputParserTest, LongCallsCompleteWhateverTheSplit) {
  std::string code;
  for (int i = 0; code.size() < 1500; ++i) {
    code += "if (a[" + std::to_string(i) + "] < b) { c = {1, 2}; } // </tool_call\n";
  }
  std::string xml = "<tool_call>\n<function=write_file>\n<parameter=content>\n" + code +
                    "\n</parameter>\n</function>\n</tool_call>after";
  ParsedOutput p = ParseEverySplit(xml, Opts(ToolCallFormat::kQwenXml));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(json::parse(p.calls[0].arguments_json)["content"], code);
  EXPECT_EQ(p.text, "after");

  std::string quoted = json(code).dump();
  std::string hermes =
      "<tool_call>\n{\"name\": \"w\", \"arguments\": {\"c\": " + quoted + "}}\n</tool_call>after";
  p = ParseEverySplit(hermes, Opts(ToolCallFormat::kHermesJson));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments_json, "{\"c\": " + quoted + "}");
  EXPECT_EQ(p.text, "after");

  std::string mistral = "[TOOL_CALLS]w[ARGS]{\"c\": " + quoted + "}after";
  p = ParseEverySplit(mistral, Opts(ToolCallFormat::kMistral));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.text, "after");

  // Unterminated long call: all text.
  std::string open = xml.substr(0, xml.size() - 20);
  EXPECT_EQ(ParseEverySplit(open, Opts(ToolCallFormat::kQwenXml)), Text(open));
}

// ---- Detection, prompts, serialisation ----------------------------------------------------------

TEST(OutputParserTest, DetectToolCallFormatFromTemplateMarkup) {
  // Excerpts of the official templates (the markup each one writes for tool calls).
  EXPECT_EQ(
      DetectToolCallFormat(
          R"({{- '<tool_call>\n<function=' + tool_call.name + '>\n' }}{{- '<parameter=' + args_name + '>\n' }})"
          R"({%- if tools %}<tool_call>{% endif %})"),
      ToolCallFormat::kQwenXml);
  EXPECT_EQ(DetectToolCallFormat(
                R"(<|im_start|>{{- '<tool_call>\n{"name": "' }}{{- '", "arguments": ' }})"),
            ToolCallFormat::kHermesJson);
  EXPECT_EQ(
      DetectToolCallFormat(R"({{- "[TOOL_CALLS][" }}{%- set out = tool_call.function|tojson %})"),
      ToolCallFormat::kMistral);
  EXPECT_EQ(DetectToolCallFormat(R"({{- '[TOOL_CALLS]' + tool_call.function.name }}[ARGS])"),
            ToolCallFormat::kMistral);
  EXPECT_EQ(
      DetectToolCallFormat(
          R"(<|start_header_id|>{{- "Environment: ipython\n" }}{{- '"parameters": ' }}<|eot_id|>)"),
      ToolCallFormat::kLlama3Json);
  EXPECT_EQ(DetectToolCallFormat(R"(<|start_header_id|>{{ "<|python_tag|>" }} "parameters")"),
            ToolCallFormat::kLlama3Json);
  EXPECT_EQ(DetectToolCallFormat("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"),
            ToolCallFormat::kNone);
  // GLM-4.x: <tool_call> with <arg_key> bodies is not a supported format.
  EXPECT_EQ(DetectToolCallFormat("<tool_call>{{ name }}<arg_key>k</arg_key> arguments"),
            ToolCallFormat::kNone);
  // Lookalikes with other bodies: MiniMax <invoke>, Apriel <tool_calls>[…], Seed-OSS
  // <seed:tool_call>, Functionary v3.1 (Llama 3 based) <function=NAME>{json}.
  EXPECT_EQ(DetectToolCallFormat("<tool_call><invoke name=\"f\"> arguments"),
            ToolCallFormat::kNone);
  EXPECT_EQ(DetectToolCallFormat("in <tool_call></tool_call> tags; <tool_calls>[{\"arguments\""),
            ToolCallFormat::kNone);
  EXPECT_EQ(DetectToolCallFormat("<seed:tool_call>\n<function=f>\n<parameter=p>"),
            ToolCallFormat::kNone);
  EXPECT_EQ(DetectToolCallFormat(
                "<|start_header_id|>ipython <|python_tag|> parameters <function=f>{}</function>"),
            ToolCallFormat::kNone);
  EXPECT_EQ(DetectToolCallFormat(""), ToolCallFormat::kNone);
}

TEST(OutputParserTest, PromptOpensReasoning) {
  EXPECT_TRUE(PromptOpensReasoning("<|im_start|>assistant\n<think>\n"));
  EXPECT_TRUE(PromptOpensReasoning("[INST]hi[/INST][THINK]"));
  EXPECT_FALSE(PromptOpensReasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  EXPECT_FALSE(PromptOpensReasoning("<|im_start|>assistant\n"));
}

TEST(OutputParserTest, FormattedCallsParseBackToTheSameCalls) {
  std::vector<Call> calls = {{"get_weather", "", R"({"city": "Paris", "days": 3})", ""},
                             {"write_file", "", R"({"path": "a.txt", "content": "x\n<y>"})", ""}};
  for (ToolCallFormat f : {ToolCallFormat::kHermesJson, ToolCallFormat::kQwenXml,
                           ToolCallFormat::kLlama3Json, ToolCallFormat::kMistral}) {
    std::string text = FormatToolCalls(f, calls);
    SCOPED_TRACE(text);
    ParsedOutput p = ParseEverySplit(text, Opts(f, false, &Tools()));
    EXPECT_EQ(p.text, "");
    ASSERT_EQ(p.calls.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(p.calls[i].name, calls[i].name);
      EXPECT_EQ(json::parse(p.calls[i].arguments_json), json::parse(calls[i].arguments_json));
      EXPECT_EQ(p.calls[i].error, "");
    }
  }
  EXPECT_EQ(FormatToolCalls(ToolCallFormat::kHermesJson, std::span(calls).first(1)),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", "
            "\"days\": 3}}\n</tool_call>");
  EXPECT_EQ(FormatToolCalls(ToolCallFormat::kQwenXml, std::span(calls).first(1)),
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
            "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>");
  EXPECT_EQ(FormatToolCalls(ToolCallFormat::kNone, calls), "");
}

// What the official templates render for an assistant turn with two calls
// (get_weather {"city": "Zürich \"HQ\"", "days": 3} id abc123def, then {"city": "東京", "days": 1}
// id xyz987uvw), rendered by jinja2 from llama.cpp's models/templates/ copies; the end-of-turn
// token (<|im_end|>, <|eot_id|>, </s>) is a stop token and not part of the generated text.
struct Rendered {
  const char* template_name;
  ToolCallFormat format;
  bool starts_in_reasoning;
  bool has_ids;
  bool format_tool_calls_matches;  // FormatToolCalls() writes exactly the calls part
  std::string_view prefix;         // what precedes the calls
  std::string_view calls;
};
const Rendered kRendered[] = {
    {"Qwen3-0.6B", ToolCallFormat::kHermesJson, false, false, true, "<think>\n\n</think>\n\n",
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich \\\"HQ\\\"\", "
     "\"days\": 3}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
     "{\"city\": \"東京\", \"days\": 1}}\n</tool_call>"},
    {"Qwen3.5-4B", ToolCallFormat::kQwenXml, true, false, true, "\n</think>\n\n",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nZürich \"HQ\"\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
     "<function=get_weather>\n<parameter=city>\n東京\n</parameter>\n<parameter=days>\n1\n"
     "</parameter>\n</function>\n</tool_call>"},
    {"Qwen3-Coder", ToolCallFormat::kQwenXml, false, false, true, "",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nZürich \"HQ\"\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
     "<function=get_weather>\n<parameter=city>\n東京\n</parameter>\n<parameter=days>\n1\n"
     "</parameter>\n</function>\n</tool_call>"},
    {"Mistral-Nemo-Instruct-2407", ToolCallFormat::kMistral, false, true, false, "",
     "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich \\\"HQ\\\"\", "
     "\"days\": 3}, \"id\": \"abc123def\"}, {\"name\": \"get_weather\", \"arguments\": {\"city\": "
     "\"東京\", \"days\": 1}, \"id\": \"xyz987uvw\"}]"},
    {"Mistral-Small-3.2-24B-Instruct-2506", ToolCallFormat::kMistral, false, true, true, "",
     "[TOOL_CALLS]get_weather[CALL_ID]abc123def[ARGS]{\"city\": \"Zürich \\\"HQ\\\"\", \"days\": "
     "3}[TOOL_CALLS]get_weather[CALL_ID]xyz987uvw[ARGS]{\"city\": \"東京\", \"days\": 1}"},
    {"Devstral-Small-2507", ToolCallFormat::kMistral, false, false, true, "",
     "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Zürich \\\"HQ\\\"\", \"days\": 3}[TOOL_CALLS]"
     "get_weather[ARGS]{\"city\": \"東京\", \"days\": 1}"},
};

TEST(OutputParserTest, CallsRenderedByTheOfficialTemplatesParse) {
  json tools = json::parse(R"([{"type": "function", "function": {"name": "get_weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                      "days": {"type": "integer"}}}}}])");
  std::vector<Call> want = {
      {"get_weather", "abc123def", R"({"city": "Zürich \"HQ\"", "days": 3})", ""},
      {"get_weather", "xyz987uvw", R"({"city": "東京", "days": 1})", ""}};
  for (const Rendered& r : kRendered) {
    SCOPED_TRACE(r.template_name);
    std::string output = std::string(r.prefix) + std::string(r.calls);
    ParsedOutput p = ParseEverySplit(output, Opts(r.format, r.starts_in_reasoning, &tools));
    EXPECT_EQ(p.text, "");
    EXPECT_EQ(p.reasoning, "");
    ASSERT_EQ(p.calls.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(p.calls[i].name, want[i].name);
      EXPECT_EQ(p.calls[i].id, r.has_ids ? want[i].id : "");
      EXPECT_EQ(p.calls[i].arguments_json, want[i].arguments_json);
      EXPECT_EQ(p.calls[i].error, "");
    }
    if (r.format_tool_calls_matches) {
      EXPECT_EQ(FormatToolCalls(r.format, p.calls), r.calls);
    }
  }
  // Llama 3.1 renders one call per message.
  std::string llama =
      R"({"name": "get_weather", "parameters": {"city": "Zürich \"HQ\"", "days": 3}})";
  ParsedOutput p = ParseEverySplit(llama, Opts(ToolCallFormat::kLlama3Json));
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments_json, want[0].arguments_json);
  EXPECT_EQ(FormatToolCalls(ToolCallFormat::kLlama3Json, p.calls), llama);
}

TEST(OutputParserTest, ScanBalancedFindsTheEndOfNestedJson) {
  using tool_syntax::Scan;
  size_t end = 0;
  EXPECT_EQ(tool_syntax::ScanBalanced(R"({"a": "}]\"", "b": [{}]} tail)", 0, &end),
            Scan::kComplete);
  EXPECT_EQ(end, 24u);
  EXPECT_EQ(tool_syntax::ScanBalanced(R"({"a": [})", 0, &end), Scan::kInvalid);
  EXPECT_EQ(tool_syntax::ScanBalanced(R"({"a": "})", 0, &end), Scan::kNeedMore);
}

}  // namespace
}  // namespace kvstash::engine
