#include "sources/config_source.hpp"

namespace dsproxy::sources {

std::string_view to_string(ObjectKind kind) {
  switch (kind) {
    case ObjectKind::service: return "Service";
    case ObjectKind::pod: return "Pod";
    case ObjectKind::endpoint_slice: return "EndpointSlice";
    case ObjectKind::node: return "Node";
    case ObjectKind::namespace_: return "Namespace";

    case ObjectKind::authorization_policy: return "AuthorizationPolicy";
  }
  return "?";
}

}  // namespace dsproxy::sources
