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

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

#include "config/k8s_objects.hpp"

namespace dsproxy::config {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What one config input may cost to decode. The config is trusted to be correct but not to be
// small: it may come from a generator or a pipeline an attacker can write to, and a reload runs
// on the control loop of a live proxy. Without bounds, 500 bytes of nested YAML aliases ("billion
// laughs") expand to 10^9 nodes and take minutes of CPU; a cyclic alias (`&a [*a]`) recursed until
// the stack overflowed; and yaml-cpp 0.7 spends about 470 bytes of memory and 3.5 us per node it
// builds, so node count, not bytes, is what bounds memory. Input past a limit is refused whole,
// before yaml-cpp builds a node, with a ConfigError that names the limit; a reload keeps the last
// good config. JSON input is YAML to the decoder and has the same limits.
//
// The values sit well above real input and well below what hurts a node: 5,000 dual-stack
// Services with an EndpointSlice each are 4.4 MB and 560,000 nodes (8 bytes a node; the configs in
// config/ take 10-12), so the byte limit admits about 2 million nodes and the node limit matches
// it (about 1 GB and 7 s in yaml-cpp at worst). Kubernetes objects nest about 10-20 levels (a
// `kind: List` adds two), CRD schemas (parsed, then ignored) a few dozen. Anchors in hand-written
// files repeat a few labels or ports; 100,000 repeated nodes is a hundred times more than that and
// still milliseconds to walk.
inline constexpr std::size_t kMaxConfigBytes = 16u << 20;      // 16 MiB; the read stops there
inline constexpr std::size_t kMaxConfigNodes = 2'000'000;      // scalars, mappings and lists built
inline constexpr std::size_t kMaxConfigDepth = 100;            // mappings and lists inside each other
inline constexpr std::size_t kMaxConfigAliasNodes = 100'000;   // nodes repeated through aliases, in total

struct DecodeLimits {
  std::size_t max_bytes = kMaxConfigBytes;
  std::size_t max_nodes = kMaxConfigNodes;
  std::size_t max_depth = kMaxConfigDepth;
  std::size_t max_alias_nodes = kMaxConfigAliasNodes;
};

// `source` names the input in messages (a file path, or "<string>"). `limits` exist as a
// parameter for tests; dsproxy itself always uses the defaults.
ClusterObjects decode_objects(std::string_view text, std::string_view source = "<string>",
                              const DecodeLimits& limits = {});
ClusterObjects load_objects_file(const std::string& path, const DecodeLimits& limits = {});

}  // namespace dsproxy::config
