#include "sources/kubernetes/resource.hpp"

namespace dsproxy::sources::kubernetes {

std::string Resource::display_name() const { return group.empty() ? plural : plural + "." + group; }

std::string Resource::collection_path() const {
  std::string path = group.empty() ? "/api/" + version : "/apis/" + group + "/" + version;
  if (!namespace_name.empty()) path += "/namespaces/" + url_encode(namespace_name);
  return path + "/" + plural;
}

std::string Resource::rbac_rule() const {
  return "apiGroups [\"" + group + "\"] resources [\"" + plural + "\"] verbs [\"get\",\"list\",\"watch\"]";
}

namespace resources {

Resource services() { return Resource{"", "v1", "services", "Service", "", "", ""}; }
Resource endpoint_slices() { return Resource{"discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", "", "", ""}; }
Resource pods(std::string_view node_name) {
  Resource r{"", "v1", "pods", "Pod", "", "", ""};
  if (!node_name.empty()) r.field_selector = "spec.nodeName=" + std::string(node_name);
  return r;
}
Resource nodes() { return Resource{"", "v1", "nodes", "Node", "", "", ""}; }
Resource namespaces() { return Resource{"", "v1", "namespaces", "Namespace", "", "", ""}; }

Resource authorization_policies() {
  Resource r{"security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy", "", "", ""};
  r.optional = true;
  return r;
}

}  // namespace resources

std::string url_encode(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size());
  for (unsigned char c : value) {
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                            c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

namespace {

std::string selectors(const Resource& resource) {
  std::string q;
  if (!resource.field_selector.empty()) q += "&fieldSelector=" + url_encode(resource.field_selector);
  if (!resource.label_selector.empty()) q += "&labelSelector=" + url_encode(resource.label_selector);
  return q;
}

}  // namespace

std::string list_target(std::string_view base_path, const Resource& resource, std::uint32_t limit,
                        std::string_view continue_token) {
  std::string t = std::string(base_path) + resource.collection_path() + "?limit=" + std::to_string(limit);
  if (!continue_token.empty()) t += "&continue=" + url_encode(continue_token);
  return t + selectors(resource);
}

std::string watch_target(std::string_view base_path, const Resource& resource, std::string_view resource_version,
                         std::uint32_t timeout_seconds) {
  std::string t = std::string(base_path) + resource.collection_path() + "?watch=true&allowWatchBookmarks=true";
  if (!resource_version.empty()) t += "&resourceVersion=" + url_encode(resource_version);
  t += "&timeoutSeconds=" + std::to_string(timeout_seconds);
  return t + selectors(resource);
}

}  // namespace dsproxy::sources::kubernetes
