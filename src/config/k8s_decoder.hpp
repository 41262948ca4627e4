#pragma once
// The one decoder of Kubernetes objects, over Boost.JSON values, with two transports:
//   - text (`--config FILE`): YAML or JSON, multi-document streams, `kind: List` (what
//     `kubectl get ... -o yaml|json` prints) and typed lists (ServiceList, ...): decode_objects;
//   - one object at a time (the API watch: LIST items and WATCH events): decode_object.
// Both apply the same field rules and write the same messages.
//
// An invalid field throws ConfigError naming the document and the field path, e.g.
//   "cluster.yaml: document 3 (Service ipv4/tcp-echo): spec.ports[1].port: expected an integer
//    1-65535, got \"abc\""
// so a user can find it; the caller keeps its last good configuration. Documents (and the items
// of a `kind: List`, "document 1 item 3") count from 1 as a reader counts them; indexes inside a
// field path count from 0, as kubectl's own error messages do.
//
// Scalars are read by their text, whatever the transport typed them as: `name: 123` is a name,
// `port: "80"` a port, `hostNetwork: "true"` true. Structure is strict: a mapping or list where a
// scalar belongs is an error, never silently stringified.

#include <boost/json/object.hpp>

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "config/k8s_objects.hpp"

namespace dsproxy::config {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What one config input may cost to decode. The config is trusted to be correct but not to be
// small: it may come from a generator or a pipeline an attacker can write to, and a reload runs
// on the control loop of a live proxy. Without bounds, 500 bytes of nested YAML aliases ("billion
// laughs") expand to 10^9 nodes and take minutes of CPU, and a cyclic alias (`&a [*a]`) recursed
// until the stack overflowed. Input past a limit is refused whole with a ConfigError that names
// the limit; a reload keeps the last good config. JSON and YAML have the same limits.
//
// The text is decoded one object at a time (each document, each item of a List), so memory is
// bounded by the largest object (max_object_nodes) plus what is decoded, not by the input. A
// 10,000-Service dual-stack cluster with 100,000 endpoints (bench/tools/gen_cluster.py) is 4.2
// million nodes: 104 MB as `kubectl get -o json` prints it, 47 MB as YAML. The byte and node
// limits bound CPU, about 0.2 us a node for JSON and 2 us for YAML (yaml-cpp's scanner), and
// admit twice that cluster as JSON (five times as YAML). One object: the API server stores at
// most 1.5 MiB per object (etcd's request limit), a few hundred thousand nodes even if packed; a
// Service with 60,000 ports is 300,000; the generated cluster's largest object is 173. Objects
// nest about 10-20 levels (a `kind: List` adds two), CRD schemas (parsed, then ignored) a few
// dozen. Anchors in hand-written files repeat a few labels or ports; 100,000 repeated nodes is a
// hundred times more than that and still milliseconds to build.
inline constexpr std::size_t kMaxConfigBytes = 256u << 20;       // 256 MiB; the read stops there
inline constexpr std::size_t kMaxConfigNodes = 40'000'000;       // scalars, keys, mappings and lists read
inline constexpr std::size_t kMaxConfigObjectNodes = 1'000'000;  // in the tree of one object at a time
inline constexpr std::size_t kMaxConfigDepth = 100;              // mappings and lists inside each other
inline constexpr std::size_t kMaxConfigAliasNodes = 100'000;     // nodes repeated through aliases, in total

struct DecodeLimits {
  std::size_t max_bytes = kMaxConfigBytes;
  std::size_t max_nodes = kMaxConfigNodes;
  std::size_t max_depth = kMaxConfigDepth;
  std::size_t max_alias_nodes = kMaxConfigAliasNodes;
  std::size_t max_object_nodes = kMaxConfigObjectNodes;
};

// `source` names the input in messages (a file path, or "<string>"). `limits` exist as a
// parameter for tests; dsproxy itself always uses the defaults. Text whose first non-space
// character is `{` or `[` is read as JSON (Boost.JSON's parser; text that is not valid JSON is
// then tried as YAML, which JSON-looking flow YAML is, and if that fails too the JSON error is
// reported), anything else as YAML.
ClusterObjects decode_objects(std::string_view text, std::string_view source = "<string>",
                              const DecodeLimits& limits = {});
// Reads the file in pieces: its text is never held whole, only one object's tree at a time.
ClusterObjects load_objects_file(const std::string& path, const DecodeLimits& limits = {});

// ---- one object at a time (the API watch) ----

// An addressType FQDN slice comes back as an EndpointSlice with AddressType::FQDN (decode_objects
// keeps those apart, in ClusterObjects::fqdn_slices).
using DecodedObject = std::variant<Service, Pod, EndpointSlice, Node, Namespace, AuthorizationPolicy>;

// Decodes one object of `kind` ("Service", "Pod", "EndpointSlice", "Node", "Namespace",
// "AuthorizationPolicy" of security.istio.io/v1 or v1beta1), as LIST items and
// WATCH event objects come (they may lack "kind"; the object's own "kind", if any, must agree).
// nullopt: a kind dsproxy ignores, or a known kind of another API group (its apiVersion, when
// present, is not v1 / discovery.k8s.io/v1). Throws ConfigError "<where> (Kind ns/name): path:
// message". Checks across objects (two Services with one cluster IP, one object twice) are the
// snapshot's business, not the decoder's, here. `warnings`, if given, receives what
// decode_objects would list in ClusterObjects::warnings (an FQDN slice, another API group).
std::optional<DecodedObject> decode_object(std::string_view kind, const boost::json::object& object,
                                           std::string_view where, std::vector<std::string>* warnings = nullptr);
// The same with the kind taken from the object's "kind" (required).
std::optional<DecodedObject> decode_object(const boost::json::object& object, std::string_view where,
                                           std::vector<std::string>* warnings = nullptr);

}  // namespace dsproxy::config
