#pragma once
// Splitting one fuzzer input into several messages: each is a 2-byte big-endian length and that
// many bytes (a shorter tail is the last message). Each message is copied into its own buffer
// with a NUL byte after it, as libpq hands the decoders their data, so ASan sees every read
// past a message's end.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace walshift::fuzz {

class Messages {
 public:
  Messages(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  // The next message in `out` (its size is the message's length + 1, the last byte 0); false at
  // the end of the input.
  bool Next(std::vector<char>* out) {
    if (pos_ + 2 > size_) return false;
    size_t len = (size_t{data_[pos_]} << 8) | data_[pos_ + 1];
    pos_ += 2;
    if (len > size_ - pos_) len = size_ - pos_;
    out->assign(data_ + pos_, data_ + pos_ + len);
    out->push_back('\0');
    pos_ += len;
    return true;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace walshift::fuzz
