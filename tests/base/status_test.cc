#include "base/status.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace kvstash {
namespace {

Result<int> Half(int x) {
  if (x % 2) return Status::InvalidArgument("odd: " + std::to_string(x));
  return x / 2;
}

Status UseHalf(int x, int* out) {
  KV_ASSIGN_OR_RETURN(*out, Half(x));
  return Status::Ok();
}

TEST(StatusTest, ResultCarriesValueOrError) {
  int out = 0;
  EXPECT_TRUE(UseHalf(8, &out).ok());
  EXPECT_EQ(out, 4);
  Status s = UseHalf(7, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.ToString(), "InvalidArgument: odd: 7");
}

TEST(StatusTest, ErrnoMapsToActionableCodes) {
  EXPECT_EQ(Status::FromErrno("write /x", ENOSPC).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Status::FromErrno("open /x", ENOENT).code(), StatusCode::kNotFound);
  EXPECT_EQ(Status::FromErrno("read /x", EIO).code(), StatusCode::kIOError);
  EXPECT_NE(Status::FromErrno("read /x", EIO).message().find("read /x"), std::string::npos);
}

TEST(StatusTest, ContextIsPrefixed) {
  Status s = Status::Corruption("bad checksum").WithContext("segment 3");
  EXPECT_EQ(s.message(), "segment 3: bad checksum");
  EXPECT_TRUE(Status::Ok().WithContext("x").ok());
}

}  // namespace
}  // namespace kvstash
