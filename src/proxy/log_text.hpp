#pragma once
// Text a peer chose (certificate names, SNI, HTTP/2 header fields, nghttp2's messages quoting
// them) on its way into a log line. A log is read by people and parsed by collectors line by
// line: a CR/LF would forge a line, an ESC would drive the reader's terminal, and a 10 KB name
// — once a second, per refusal reason — would swamp it. So every byte outside printable ASCII
// becomes \xNN and each string is capped, saying how long it really was.
//
//   log_text("spiffe://a\nb")          -> "spiffe://a\x0ab"
//   log_text(ten_kb)                   -> first 256 bytes, escaped, then "…(10240 bytes)"
//   log_list({a, b, c, d, e, f})       -> "a b c d and 2 more"

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace dsproxy::proxy {

inline constexpr std::size_t kLogTextMax = 256;  // bytes of a peer's string that are logged
inline constexpr std::size_t kLogListMax = 4;    // items of a peer's list that are logged

// At most `max` bytes of `text`, escaped; a longer text ends with "…(N bytes)", N its full length.
std::string log_text(std::string_view text, std::size_t max = kLogTextMax);

// The first `max_items` of `items`, each through log_text, joined by spaces; then "and N more".
std::string log_list(const std::vector<std::string>& items, std::size_t max_items = kLogListMax);

}  // namespace dsproxy::proxy
