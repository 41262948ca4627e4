#pragma once
// Splits a WATCH body into its lines. The API server writes one JSON event per line
// (`{"type":"ADDED","object":{...}}\n`), but chunk and TCP boundaries fall anywhere, so a line
// arrives in pieces, or several at once. Only complete lines (ended by '\n') are handed on: a
// stream cut mid-line leaves its partial line in pending(), which the caller drops instead of
// parsing half an object. A line longer than the bound (a runaway or hostile stream) stops the
// splitter rather than growing without limit.

#include <cstddef>
#include <string>
#include <string_view>

namespace dsproxy::sources::kubernetes {

class LineSplitter {
 public:
  enum class Result { ok, stopped, line_too_long };

  explicit LineSplitter(std::size_t max_line_bytes) : max_line_(max_line_bytes) {}

  // Calls `on_line(std::string_view line)` for each complete, non-empty line in the bytes seen so
  // far (without its '\n' or a '\r' before it); on_line returns false to stop (the rest of `data`
  // is then discarded). Cost is linear in the bytes fed, however the line is cut.
  template <class OnLine>
  Result feed(std::string_view data, OnLine&& on_line) {
    while (!data.empty()) {
      const auto newline = data.find('\n');
      if (newline == std::string_view::npos) {
        if (partial_.size() + data.size() > max_line_) return Result::line_too_long;
        partial_.append(data);
        return Result::ok;
      }
      std::string_view line;
      if (partial_.empty()) {
        line = data.substr(0, newline);  // the common case: no copy
      } else {
        if (partial_.size() + newline > max_line_) return Result::line_too_long;
        partial_.append(data.substr(0, newline));
        line = partial_;
      }
      data.remove_prefix(newline + 1);
      if (line.size() > max_line_) return Result::line_too_long;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      const bool go_on = line.empty() || on_line(line);
      partial_.clear();
      if (!go_on) return Result::stopped;
    }
    return Result::ok;
  }

  // Bytes of a line not yet ended by '\n'.
  std::size_t pending() const { return partial_.size(); }
  void reset() { partial_.clear(); }

 private:
  std::size_t max_line_;
  std::string partial_;
};

}  // namespace dsproxy::sources::kubernetes
