// Unicode support for the tokenizers: UTF-8 decoding, the code point classes that the
// pre-tokenizer regexes test (\p{L}, \p{N}, \s, \p{P}), NFC normalization, and GPT-2's reversible
// byte <-> code point map used by byte-level BPE.
//
// Categories and NFC come from ICU (libicuuc, Unicode 15 in Debian 12). The class lookup keeps a
// flat table for U+0000..U+1FFFF, built once on first use; higher code points ask ICU directly.
// Invalid UTF-8 never fails: each offending byte decodes as one code point of class kOther with
// value kInvalidCodepoint, so byte-exact round trips survive arbitrary input.
//
// Thread safety: every function is safe to call concurrently (the table's lazy init is a
// function-local static).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvstash::engine::unicode {

// Marks a byte that does not start a valid UTF-8 sequence.
constexpr uint32_t kInvalidCodepoint = 0xFFFFFFFFu;

// Code point classes, as bit flags. Exactly one of letter/number/other is set for every code
// point; whitespace (the Unicode White_Space property, what regex \s matches) and punctuation
// (general category P*) are extra bits.
enum CodepointClass : uint8_t {
  kLetter = 1 << 0,      // \p{L}: Lu Ll Lt Lm Lo
  kNumber = 1 << 1,      // \p{N}: Nd Nl No
  kOther = 1 << 2,       // everything else (marks, symbols, controls, unassigned, invalid bytes)
  kWhitespace = 1 << 3,  // \s
  kPunctuation = 1 << 4  // \p{P}: Pc Pd Ps Pe Pi Pf Po
};

uint8_t ClassOf(uint32_t cp);

struct Decoded {
  uint32_t cp;   // the code point, or kInvalidCodepoint
  uint32_t len;  // bytes consumed, 1..4
};

// Decodes the sequence starting at s[pos] (pos < s.size()). Overlong forms, surrogates, values
// above U+10FFFF and truncated sequences are invalid and consume one byte.
Decoded DecodeUtf8(std::string_view s, size_t pos);

// Appends the UTF-8 encoding of `cp` (must be <= U+10FFFF).
void AppendUtf8(uint32_t cp, std::string* out);

// Canonical composition (NFC). Valid UTF-8 runs are normalized; invalid bytes pass through
// unchanged. Text that cannot change (every code point below U+0300) is returned as is.
std::string Nfc(std::string_view text);

// GPT-2 byte-level map: every byte has a printable code point stand-in (' ' -> U+0120 'Ġ').
uint32_t ByteToCodepoint(uint8_t b);
// The byte a stand-in code point represents, or -1 when `cp` is not one.
int CodepointToByte(uint32_t cp);
// Maps every byte of `bytes` to its stand-in, as UTF-8.
std::string ByteLevelEncode(std::string_view bytes);
// Inverse of ByteLevelEncode. Code points that are not stand-ins are copied as UTF-8, so text
// that was never byte-level encoded (added tokens) survives.
std::string ByteLevelDecode(std::string_view text);

}  // namespace kvstash::engine::unicode
