#include "engine/tokenizer/unicode.h"

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace kvstash::engine::unicode {
namespace {

// Class of one code point straight from ICU.
uint8_t ComputeClass(uint32_t cp) {
  const auto c = static_cast<UChar32>(cp);
  const uint32_t mask = U_GET_GC_MASK(c);
  uint8_t cls;
  if (mask & U_GC_L_MASK) {
    cls = kLetter;
  } else if (mask & U_GC_N_MASK) {
    cls = kNumber;
  } else {
    cls = kOther;
  }
  if (mask & U_GC_P_MASK) cls |= kPunctuation;
  if (u_isUWhiteSpace(c)) cls |= kWhitespace;
  return cls;
}

// Planes 0 and 1 hold practically all text (BMP scripts, emoji); one byte per code point.
constexpr uint32_t kTableSize = 0x20000;

const uint8_t* ClassTable() {
  static const std::unique_ptr<uint8_t[]> table = [] {
    auto t = std::make_unique<uint8_t[]>(kTableSize);
    for (uint32_t cp = 0; cp < kTableSize; ++cp) t[cp] = ComputeClass(cp);
    return t;
  }();
  return table.get();
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// take U+0100.. in byte order.
struct ByteMaps {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // index: code point < 256 + 68
  std::array<std::string, 256> byte_to_utf8{};
};

const ByteMaps& Maps() {
  static const ByteMaps maps = [] {
    ByteMaps m;
    m.cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      m.byte_to_cp[b] = cp;
      m.cp_to_byte[cp] = static_cast<int16_t>(b);
      AppendUtf8(cp, &m.byte_to_utf8[b]);
    }
    return m;
  }();
  return maps;
}

// NFC of one valid UTF-8 run through UTF-16, which is what ICU's C API speaks.
void AppendNfcOfValidRun(std::string_view run, std::string* out) {
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* nfc = unorm2_getNFCInstance(&err);
  if (U_FAILURE(err)) {
    out->append(run);
    return;
  }
  std::vector<UChar> src(run.size() + 1);
  int32_t src_len = 0;
  u_strFromUTF8(src.data(), static_cast<int32_t>(src.size()), &src_len, run.data(),
                static_cast<int32_t>(run.size()), &err);
  if (U_FAILURE(err)) {
    out->append(run);
    return;
  }
  // NFC of a valid string is at most 3x longer in UTF-16 (worst case of canonical expansion).
  std::vector<UChar> dst(static_cast<size_t>(src_len) * 3 + 16);
  const int32_t dst_len = unorm2_normalize(nfc, src.data(), src_len, dst.data(),
                                           static_cast<int32_t>(dst.size()), &err);
  if (U_FAILURE(err)) {
    out->append(run);
    return;
  }
  std::string utf8(static_cast<size_t>(dst_len) * 3 + 4, '\0');
  int32_t utf8_len = 0;
  u_strToUTF8(utf8.data(), static_cast<int32_t>(utf8.size()), &utf8_len, dst.data(), dst_len, &err);
  if (U_FAILURE(err)) {
    out->append(run);
    return;
  }
  out->append(utf8.data(), static_cast<size_t>(utf8_len));
}

}  // namespace

uint8_t ClassOf(uint32_t cp) {
  if (cp < kTableSize) return ClassTable()[cp];
  if (cp > 0x10FFFF) return kOther;
  return ComputeClass(cp);
}

Decoded DecodeUtf8(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + pos;
  const size_t avail = s.size() - pos;
  const uint8_t b0 = p[0];
  if (b0 < 0x80) return {b0, 1};
  auto cont = [&](size_t i) { return i < avail && (p[i] & 0xC0) == 0x80; };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (cont(1)) return {(static_cast<uint32_t>(b0 & 0x1F) << 6) | (p[1] & 0x3F), 2};
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (cont(1) && cont(2)) {
      const uint32_t cp = (static_cast<uint32_t>(b0 & 0x0F) << 12) |
                          (static_cast<uint32_t>(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
      if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3};
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (cont(1) && cont(2) && cont(3)) {
      const uint32_t cp = (static_cast<uint32_t>(b0 & 0x07) << 18) |
                          (static_cast<uint32_t>(p[1] & 0x3F) << 12) |
                          (static_cast<uint32_t>(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
      if (cp >= 0x10000 && cp <= 0x10FFFF) return {cp, 4};
    }
  }
  return {kInvalidCodepoint, 1};
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Nfc(std::string_view text) {
  // Every code point below U+0300 is NFC_Quick_Check=Yes and none of them composes with a
  // preceding character; their UTF-8 lead bytes are all below 0xCC.
  bool may_change = false;
  for (char c : text) {
    if (static_cast<uint8_t>(c) >= 0xCC) {
      may_change = true;
      break;
    }
  }
  if (!may_change) return std::string(text);

  // Only runs of code points that normalization can touch (non-"inert" ones, all >= U+0300) go
  // through ICU, together with the starter just before them, which they may compose with.
  // Everything between such runs is copied: it has normalization boundaries on both sides.
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* nfc = unorm2_getNFCInstance(&err);
  if (U_FAILURE(err)) return std::string(text);
  auto touchable = [&](uint32_t cp) {
    return cp >= 0x300 && cp != kInvalidCodepoint && !unorm2_isInert(nfc, static_cast<UChar32>(cp));
  };
  std::string out;
  out.reserve(text.size());
  size_t copied = 0;             // text[0, copied) is in `out`
  size_t prev_start = SIZE_MAX;  // start of the previous valid code point not yet copied
  size_t pos = 0;
  while (pos < text.size()) {
    const Decoded d = DecodeUtf8(text, pos);
    if (!touchable(d.cp)) {
      prev_start = d.cp == kInvalidCodepoint ? SIZE_MAX : pos;
      pos += d.len;
      continue;
    }
    const size_t begin = (prev_start != SIZE_MAX && prev_start >= copied) ? prev_start : pos;
    size_t end = pos + d.len;
    while (end < text.size()) {
      const Decoded next = DecodeUtf8(text, end);
      if (!touchable(next.cp)) break;
      end += next.len;
    }
    out.append(text.substr(copied, begin - copied));
    AppendNfcOfValidRun(text.substr(begin, end - begin), &out);
    copied = pos = end;
    prev_start = SIZE_MAX;
  }
  out.append(text.substr(copied));
  return out;
}

uint32_t ByteToCodepoint(uint8_t b) { return Maps().byte_to_cp[b]; }

int CodepointToByte(uint32_t cp) {
  const ByteMaps& m = Maps();
  return cp < m.cp_to_byte.size() ? m.cp_to_byte[cp] : -1;
}

std::string ByteLevelEncode(std::string_view bytes) {
  const ByteMaps& m = Maps();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += m.byte_to_utf8[static_cast<uint8_t>(c)];
  return out;
}

std::string ByteLevelDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const Decoded d = DecodeUtf8(text, pos);
    const int b = d.cp == kInvalidCodepoint ? -1 : CodepointToByte(d.cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text.substr(pos, d.len));
    }
    pos += d.len;
  }
  return out;
}

}  // namespace kvstash::engine::unicode
