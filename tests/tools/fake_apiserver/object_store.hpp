// The fake API server's storage: objects per resource, one global resourceVersion counter and a
// bounded event history, as etcd + the apiserver's watch cache present them to a client.
// Not thread-safe: FakeApiServer uses it from its server thread only.
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace dsproxy::fake_api {

struct ResourceInfo {
  std::string_view plural;       // "endpointslices"
  std::string_view kind;         // "EndpointSlice"
  std::string_view api_version;  // "discovery.k8s.io/v1"
  std::string_view group;        // "discovery.k8s.io" ("" for the core group)
  bool namespaced;
};

const ResourceInfo* find_resource(std::string_view plural);
const ResourceInfo* find_resource_by_kind(std::string_view kind);
// An object's metadata.namespace ("" when cluster-scoped or missing).
std::string_view namespace_of(const boost::json::object& object);

enum class EventType { added, modified, deleted };
std::string_view to_string(EventType type);

using ObjectPtr = std::shared_ptr<const boost::json::object>;

struct StoredEvent {
  std::uint64_t resource_version;
  const ResourceInfo* resource;
  EventType type;
  std::string key;      // "ns/name" or "name"
  ObjectPtr object;     // the new state (for deleted: the last state at the deletion's version)
  ObjectPtr previous;   // the state before (null for added)
};

// A parsed fieldSelector or labelSelector: all terms must hold.
class Selector {
 public:
  // Throws std::invalid_argument on a term it does not understand.
  static Selector parse_fields(std::string_view text);
  static Selector parse_labels(std::string_view text);
  bool matches(const boost::json::object& object) const;
  bool empty() const { return terms_.empty(); }

 private:
  enum class Op { equals, not_equals, exists, not_exists };
  struct Term {
    bool label;
    std::string path;  // dotted field path, or the label key
    Op op;
    std::string value;
  };
  std::vector<Term> terms_;
};

struct ListRequest {
  std::string namespace_filter;  // empty: all namespaces
  Selector fields;
  Selector labels;
  std::size_t limit = 0;         // 0: no limit
  std::string continue_token;
};

struct ListPage {
  std::uint64_t resource_version;
  std::vector<ObjectPtr> items;
  std::string continue_token;  // empty: last page
  std::optional<std::uint64_t> remaining_items;
};

struct ListExpired {};  // the continue token is too old: 410 Expired

class ObjectStore {
 public:
  ObjectStore(std::uint64_t initial_resource_version, std::size_t history_limit);

  // Throws std::invalid_argument (no metadata.name). Returns the stored event.
  const StoredEvent& upsert(const ResourceInfo& resource, boost::json::object object);
  const StoredEvent* erase(const ResourceInfo& resource, std::string_view ns, std::string_view name);
  ObjectPtr get(const ResourceInfo& resource, std::string_view ns, std::string_view name) const;

  std::uint64_t resource_version() const { return resource_version_; }
  // Events after `since` of this resource are all retained iff since >= compacted_version().
  std::uint64_t compacted_version() const { return compacted_; }
  void compact();
  void expire_continue_tokens() { ++continue_epoch_; }

  std::variant<ListPage, ListExpired> list(const ResourceInfo& resource, const ListRequest& request) const;
  // Current objects of a resource in key order (for a watch from resourceVersion 0).
  std::vector<ObjectPtr> current(const ResourceInfo& resource) const;
  // Events of a resource after `since`, oldest first; nullopt if some were compacted away.
  std::optional<std::vector<const StoredEvent*>> events_since(const ResourceInfo& resource,
                                                              std::uint64_t since) const;

  static std::string key_of(const ResourceInfo& resource, std::string_view ns, std::string_view name);

 private:
  using ObjectMap = std::map<std::string, ObjectPtr, std::less<>>;
  const StoredEvent& record(StoredEvent event);
  ObjectMap state_at(const ResourceInfo& resource, std::uint64_t version) const;

  std::uint64_t resource_version_;
  std::uint64_t compacted_;
  std::size_t history_limit_;
  std::uint64_t continue_epoch_ = 0;
  std::uint64_t uid_counter_ = 0;
  std::map<std::string_view, ObjectMap, std::less<>> objects_;  // by plural
  std::deque<StoredEvent> history_;
};

// Base64 (standard alphabet, padded): continue tokens and certificate-authority-data.
std::string base64_encode(std::string_view data);
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace dsproxy::fake_api
