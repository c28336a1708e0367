#include "engine/tokenizer/vocab_gguf.h"

namespace kvstash::engine {

int64_t AddVocabToGguf(GgufWriter& w, const Vocab& v) {
  w.SetString("tokenizer.ggml.model", v.kind == TokenizerKind::kSpm ? "llama" : "gpt2");
  if (!v.pre.empty()) w.SetString("tokenizer.ggml.pre", v.pre);
  w.SetStringArray("tokenizer.ggml.tokens", v.tokens);
  if (!v.scores.empty()) w.SetFloat32Array("tokenizer.ggml.scores", v.scores);
  if (!v.types.empty()) {
    std::vector<int32_t> types(v.types.size());
    for (size_t i = 0; i < types.size(); ++i) types[i] = static_cast<int32_t>(v.types[i]);
    w.SetInt32Array("tokenizer.ggml.token_type", types);
  }
  if (!v.merges.empty()) w.SetStringArray("tokenizer.ggml.merges", v.merges);
  const std::pair<const char*, int32_t> ids[] = {{"tokenizer.ggml.bos_token_id", v.bos_id},
                                                 {"tokenizer.ggml.eos_token_id", v.eos_id},
                                                 {"tokenizer.ggml.eot_token_id", v.eot_id},
                                                 {"tokenizer.ggml.unknown_token_id", v.unk_id},
                                                 {"tokenizer.ggml.padding_token_id", v.pad_id}};
  for (const auto& [key, id] : ids) {
    if (id >= 0) w.SetUint32(key, static_cast<uint32_t>(id));
  }
  w.SetBool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.SetBool("tokenizer.ggml.add_eos_token", v.add_eos);
  if (v.kind == TokenizerKind::kSpm)
    w.SetBool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  if (!v.chat_template.empty()) w.SetString("tokenizer.chat_template", v.chat_template);
  return v.size();
}

}  // namespace kvstash::engine
