#pragma once
// How error messages spell the path of a field inside a Kubernetes object: "spec.ports[1].port",
// but "metadata.labels[kubernetes.io/service-name]", since a key with dots in it would read as
// more path. Indexes count from 0, as kubectl's own messages do.

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

namespace dsproxy::config {

inline std::string index_path(std::string_view path, std::size_t i) {
  std::string s(path);
  s += '[';
  s += std::to_string(i);
  s += ']';
  return s;
}

inline std::string key_path(std::string_view path, std::string_view key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
  std::string s(path);
  if (path.empty()) return s.append(key);
  if (plain) return (s += '.').append(key);
  return ((s += '[').append(key)) += ']';
}

}  // namespace dsproxy::config
