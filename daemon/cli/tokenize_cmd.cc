// `kvstash tokenize` and `kvstash detokenize`: the model's tokenizer on its own, for checking
// prompts and ids by hand. Only the vocabulary is read (a GGUF model or vocab file, or a Hugging
// Face tokenizer.json); no weights are touched. Without either, the embedded default model's
// vocabulary is used, as `kvstash run` does.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/cli/commands.h"
#include "daemon/cli/default_model.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace kvstash::cli {
namespace {

constexpr int kOk = 0;
constexpr int kRuntimeError = 1;
constexpr int kUsageError = 2;

struct Source {
  std::string model;           // -m: GGUF file; neither set: the default model
  std::string tokenizer_json;  // --tokenizer-json
};

struct TokenizeArgs {
  Source source;
  std::string prompt;
  std::string file;
  bool prompt_given = false;
  bool no_bos = false;
  bool json = false;
  bool parse_special = false;
};

struct DetokenizeArgs {
  Source source;
  std::string ids;
  bool ids_given = false;
  bool json = false;
  bool render_special = false;
};

Result<std::unique_ptr<engine::Tokenizer>> LoadTokenizer(const Source& s) {
  engine::Vocab vocab;
  if (!s.tokenizer_json.empty()) {
    KV_ASSIGN_OR_RETURN(vocab, engine::LoadHfVocab(s.tokenizer_json));
  } else {
    std::string path = s.model;
    if (path.empty()) {
      KV_ASSIGN_OR_RETURN(path, EnsureDefaultModel());
    }
    KV_ASSIGN_OR_RETURN(auto file, engine::GgufFile::Open(path));
    KV_ASSIGN_OR_RETURN(vocab, engine::Vocab::FromGguf(*file));
  }
  return engine::Tokenizer::Create(std::move(vocab));
}

bool CheckSource(const Source& s, const char* cmd) {
  if (!s.model.empty() && !s.tokenizer_json.empty()) {
    std::fprintf(stderr, "kvstash %s: give at most one of -m MODEL and --tokenizer-json FILE\n",
                 cmd);
    return false;
  }
  return true;
}

Result<std::string> ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError("open " + path + ": cannot read");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return Status::IOError("read " + path + " failed");
  return bytes;
}

// A piece for a terminal: printable text as is, control characters and bytes that are not part
// of valid UTF-8 escaped, so every piece stays on one line and partial characters are visible.
std::string EscapePiece(const std::string& piece) {
  std::string out;
  for (size_t i = 0; i < piece.size(); ++i) {
    const auto c = static_cast<unsigned char>(piece[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      // Copy a complete UTF-8 sequence; escape a lone or truncated one byte by byte.
      const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
      bool complete = len > 0 && i + len <= piece.size();
      for (size_t k = 1; complete && k < len; ++k) {
        complete = (static_cast<unsigned char>(piece[i + k]) & 0xC0) == 0x80;
      }
      if (complete) {
        out.append(piece, i, len);
        i += len - 1;
      } else {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\x%02X", c);
        out += buf;
      }
    }
  }
  return out;
}

// JSON strings must be UTF-8; invalid bytes (partial characters of byte tokens) become U+FFFD.
std::string DumpJson(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int RunTokenize(const TokenizeArgs& a) {
  if (!CheckSource(a.source, "tokenize")) return kUsageError;
  if (a.prompt_given == !a.file.empty()) {
    std::fprintf(stderr, "kvstash tokenize: give exactly one of -p TEXT and -f FILE\n");
    return kUsageError;
  }
  std::string text = a.prompt;
  if (!a.file.empty()) {
    Result<std::string> bytes = ReadFileBytes(a.file);
    if (!bytes.ok()) {
      std::fprintf(stderr, "kvstash tokenize: %s\n", bytes.status().ToString().c_str());
      return kRuntimeError;
    }
    text = std::move(bytes).value();
  }
  auto tok = LoadTokenizer(a.source);
  if (!tok.ok()) {
    std::fprintf(stderr, "kvstash tokenize: %s\n", tok.status().ToString().c_str());
    return kRuntimeError;
  }
  const engine::Tokenizer& t = **tok;
  const bool add_bos = t.vocab().add_bos && !a.no_bos;
  const std::vector<int32_t> ids = t.Encode(text, add_bos, a.parse_special);
  if (a.json) {
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(t.TokenToPiece(id, /*render_special=*/true));
    const nlohmann::json out = {{"ids", ids}, {"pieces", std::move(pieces)}};
    std::printf("%s\n", DumpJson(out).c_str());
    return kOk;
  }
  for (int32_t id : ids) {
    std::printf("%7d -> '%s'\n", id, EscapePiece(t.TokenToPiece(id, true)).c_str());
  }
  std::printf("%zu tokens\n", ids.size());
  return kOk;
}

// Ids separated by spaces, commas or brackets ("1 2 3", "[1, 2, 3]").
Result<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::string cleaned = s;
  for (char& c : cleaned) {
    if (c == ',' || c == '[' || c == ']') c = ' ';
  }
  std::istringstream in(cleaned);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || v < 0 || v > INT32_MAX) {
      return Status::InvalidArgument("not a token id: '" + word + "'");
    }
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

int RunDetokenize(const DetokenizeArgs& a) {
  if (!CheckSource(a.source, "detokenize")) return kUsageError;
  std::string ids_text = a.ids;
  if (!a.ids_given) {
    ids_text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  Result<std::vector<int32_t>> ids = ParseIds(ids_text);
  if (!ids.ok()) {
    std::fprintf(stderr, "kvstash detokenize: %s\n", ids.status().message().c_str());
    return kUsageError;
  }
  auto tok = LoadTokenizer(a.source);
  if (!tok.ok()) {
    std::fprintf(stderr, "kvstash detokenize: %s\n", tok.status().ToString().c_str());
    return kRuntimeError;
  }
  const engine::Tokenizer& t = **tok;
  for (int32_t id : *ids) {
    if (id >= t.vocab().size()) {
      std::fprintf(stderr, "kvstash detokenize: token id %d is outside the %d-token vocabulary\n",
                   id, t.vocab().size());
      return kRuntimeError;
    }
  }
  const std::string text = t.Decode(*ids, a.render_special);
  if (a.json) {
    std::printf("%s\n", DumpJson(nlohmann::json{{"text", text}}).c_str());
    return kOk;
  }
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (isatty(STDOUT_FILENO)) std::fputc('\n', stdout);  // exact bytes when piped
  return kOk;
}

void AddSourceOptions(CLI::App* cmd, Source* s) {
  cmd->add_option("-m,--model", s->model,
                  "GGUF model or vocab-only file; only the vocab is read (default: the embedded "
                  "default model, as for `kvstash run`, created on first use)");
  cmd->add_option("--tokenizer-json", s->tokenizer_json,
                  "Hugging Face tokenizer.json instead of -m (tokenizer_config.json beside it is "
                  "read when present)");
}

}  // namespace

void RegisterTokenizeCommands(CLI::App& app, int* exit_code) {
  auto targs = std::make_shared<TokenizeArgs>();
  CLI::App* tcmd = app.add_subcommand("tokenize", "Print the token ids and pieces of a text.");
  AddSourceOptions(tcmd, &targs->source);
  tcmd->add_option("-p,--prompt", targs->prompt, "Text to tokenize");
  tcmd->add_option("-f,--file", targs->file, "Tokenize the bytes of a file, exactly as stored");
  tcmd->add_flag("--no-bos", targs->no_bos, "Do not prepend BOS (even if the vocab asks for it)");
  tcmd->add_flag("--parse-special", targs->parse_special,
                 "Map control-token text such as <|im_start|> to its id");
  tcmd->add_flag("--json", targs->json, R"(Print {"ids": [...], "pieces": [...]})");
  tcmd->callback([targs, tcmd, exit_code] {
    targs->prompt_given = tcmd->count("--prompt") > 0;
    *exit_code = RunTokenize(*targs);
  });

  auto dargs = std::make_shared<DetokenizeArgs>();
  CLI::App* dcmd = app.add_subcommand(
      "detokenize", "Print the text of token ids (from --ids, else read from stdin).");
  AddSourceOptions(dcmd, &dargs->source);
  dcmd->add_option("--ids", dargs->ids, R"(Token ids: "1 2 3" or "[1, 2, 3]")");
  dcmd->add_flag("--render-special", dargs->render_special, "Show control tokens as their text");
  dcmd->add_flag("--json", dargs->json, R"(Print {"text": "..."})");
  dcmd->callback([dargs, dcmd, exit_code] {
    dargs->ids_given = dcmd->count("--ids") > 0;
    *exit_code = RunDetokenize(*dargs);
  });
}

}  // namespace kvstash::cli
