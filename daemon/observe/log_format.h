#pragma once
// walshiftd's human log format: one record per line, whatever the message holds.

#include <memory>

#include "daemon/observe/format.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/spdlog.h"

namespace walshift {

// The `%*` flag: the record's message through OneLine() (a server error's DETAIL and HINT lines
// joined with "; ").
class OneLineMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    absl::string_view text(msg.payload.data(), msg.payload.size());
    if (text.find_first_of("\r\n") == absl::string_view::npos) {  // the usual record: as it is
      dest.append(text.data(), text.data() + text.size());
      return;
    }
    std::string line = OneLine(text);
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<OneLineMessageFlag>(); }
};

// Time, level and message, one record per line.
inline void UseOneLineLogFormat() {
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<OneLineMessageFlag>('*').set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %*");
  spdlog::set_formatter(std::move(formatter));
}

}  // namespace walshift
