#pragma once
// Decodes Kubernetes objects from YAML or JSON text: multi-document streams, `kind: List`
// (what `kubectl get ... -o yaml` prints), and plain JSON all work.
//
// An invalid field throws ConfigError naming the document and the field path, e.g.
//   "cluster.yaml: document 3 (Service ipv4/tcp-echo): spec.ports[1].port: expected an integer
//    1-65535, got \"abc\""
// so a user can find it; the caller keeps its last good configuration. Documents (and the items
// of a `kind: List`, "document 1 item 3") count from 1 as a reader counts them; indexes inside a
// field path count from 0, as kubectl's own error messages do.

#include <stdexcept>
#include <string>
#include <string_view>

#include "config/k8s_objects.hpp"

namespace dsproxy::config {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// `source` names the input in messages (a file path, or "<string>").
ClusterObjects decode_objects(std::string_view text, std::string_view source = "<string>");
ClusterObjects load_objects_file(const std::string& path);

}  // namespace dsproxy::config
