#pragma once
// One Kubernetes resource dsproxy reads (services, endpointslices, pods, nodes) and the request
// targets for it: the paginated LIST and the WATCH, with their query strings.

#include <cstdint>
#include <string>
#include <string_view>

namespace dsproxy::sources::kubernetes {

struct Resource {
  std::string group;     // "" for the core group, "discovery.k8s.io"
  std::string version;   // "v1"
  std::string plural;    // "endpointslices": the path segment and the RBAC resource name
  std::string kind;      // "EndpointSlice": what the sink passes to config::decode_object, since
                         // LIST items and WATCH objects do not reliably carry it
  std::string namespace_name;  // "" = all namespaces
  std::string field_selector;  // e.g. "spec.nodeName=node-1"; "" = none
  std::string label_selector;  // "" = none
  // A resource of a CRD that may not be installed (Istio's AuthorizationPolicy): a 404 on its
  // LIST means "none of them", logged once; the LIST is tried again every absent_retry.
  bool optional = false;

  // "endpointslices.discovery.k8s.io", "services": how kubectl and RBAC errors name it.
  std::string display_name() const;
  // "/api/v1/services", "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices" (without the
  // server's base path).
  std::string collection_path() const;
  // The RBAC rule dsproxy's service account needs for this resource, as a ClusterRole writes it:
  // apiGroups [""] resources ["services"] verbs ["get","list","watch"].
  std::string rbac_rule() const;
};

namespace resources {
Resource services();
Resource endpoint_slices();
// `node_name` non-empty: only the pods scheduled to that node (fieldSelector spec.nodeName=...).
Resource pods(std::string_view node_name = {});
Resource nodes();
Resource namespaces();

// security.istio.io/v1 authorizationpolicies, all namespaces; optional (Istio's CRD).
Resource authorization_policies();
}  // namespace resources

// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass as they are).
std::string url_encode(std::string_view value);

// The LIST request target: `limit` items a page, `continue_token` from the previous page ("" for
// the first). resourceVersion is left out: the list is a consistent read of the latest state,
// paginated from a snapshot (from etcd, or from the watch cache on servers with consistent cache
// reads), so a page is bounded and a relist cannot go back in time.
std::string list_target(std::string_view base_path, const Resource& resource, std::uint32_t limit,
                        std::string_view continue_token);

// The WATCH request target: events after `resource_version`, with bookmarks, ended by the server
// after `timeout_seconds`.
std::string watch_target(std::string_view base_path, const Resource& resource, std::string_view resource_version,
                         std::uint32_t timeout_seconds);

}  // namespace dsproxy::sources::kubernetes
