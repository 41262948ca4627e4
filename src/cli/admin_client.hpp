#pragma once
// Fetches a document from a running dsproxy's admin API (used by `dsproxy proxy-config`).

#include <string>
#include <string_view>

namespace dsproxy::cli {

// `admin` is "127.0.0.1:15000" or "[::1]:15000". Throws std::runtime_error saying what failed and
// where, with a 5 s limit on every step so a wedged proxy never hangs the CLI.
std::string admin_get(const std::string& admin, std::string_view path);

}  // namespace dsproxy::cli
