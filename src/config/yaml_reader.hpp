#pragma once
// YAML text (multi-document streams, what `kubectl get -o yaml` writes) into a JsonTreeBuilder,
// from yaml-cpp's parser events: yaml-cpp's own nodes (about 470 bytes and 3.5 us each in 0.7)
// are never built. Scalars are typed the way YAML 1.2's core schema types them, as far as JSON
// can say the same thing: a plain `80` is the number 80, `true`/`false` booleans, `~`/`null`/empty
// null, and anything else, including every quoted scalar, a string holding the text as written.
// (Plain `True`, `0x50` or `1.5` stay strings: the decoder reads scalars by their text, so its
// rules and messages are those of the text either way.)
//
// The limits hold while the values are built. Aliases are expanded into copies, so what they
// repeat is bounded (max_alias_nodes over the whole input), as before; an alias to a mapping or
// list that contains it is a cycle and refused; an anchored node is copied once when it
// completes, and the copy counts towards the node limit.

#include <istream>
#include <string_view>

#include "config/json_tree_builder.hpp"
#include "config/k8s_decoder.hpp"

namespace dsproxy::config {

// Reads every document of `in`. Throws ConfigError: syntax errors ("source: line L, column C:
// invalid YAML: ..."), limits ("source: document N: line L, column C: ...").
void read_yaml(std::istream& in, JsonTreeBuilder& builder, std::string_view source, const DecodeLimits& limits);

}  // namespace dsproxy::config
