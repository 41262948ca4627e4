#include "fake_apiserver/object_store.hpp"

#include <array>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <charconv>
#include <cstdio>
#include <stdexcept>

namespace dsproxy::fake_api {

namespace json = boost::json;

namespace {

constexpr std::array<ResourceInfo, 6> kResources{{
    {"services", "Service", "v1", "", true},
    {"pods", "Pod", "v1", "", true},
    {"nodes", "Node", "v1", "", false},
    {"namespaces", "Namespace", "v1", "", false},
    {"endpointslices", "EndpointSlice", "discovery.k8s.io/v1", "discovery.k8s.io", true},
    // Istio's CRD (issue 12); a test that wants it absent injects 404s on its path.
    {"authorizationpolicies", "AuthorizationPolicy", "security.istio.io/v1", "security.istio.io", true},
}};

std::string_view string_at(const json::object& object, std::string_view key) {
  auto it = object.find(key);
  if (it == object.end() || !it->value().is_string()) return {};
  return it->value().get_string();
}

const json::object* object_at(const json::object& object, std::string_view key) {
  auto it = object.find(key);
  if (it == object.end() || !it->value().is_object()) return nullptr;
  return &it->value().get_object();
}

// A field's value as the apiserver's field selectors compare it: its text; missing is "".
std::optional<std::string> field_text(const json::object& object, std::string_view path) {
  const json::value* current = nullptr;
  const json::object* container = &object;
  while (true) {
    auto dot = path.find('.');
    std::string_view head = path.substr(0, dot);
    auto it = container->find(head);
    if (it == container->end()) return std::nullopt;
    current = &it->value();
    if (dot == std::string_view::npos) break;
    if (!current->is_object()) return std::nullopt;
    container = &current->get_object();
    path.remove_prefix(dot + 1);
  }
  if (current->is_string()) return std::string(current->get_string());
  if (current->is_null()) return std::nullopt;
  return json::serialize(*current);
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  while (!text.empty()) {
    auto at = text.find(separator);
    parts.push_back(text.substr(0, at));
    if (at == std::string_view::npos) break;
    text.remove_prefix(at + 1);
  }
  return parts;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  return text;
}

}  // namespace

std::string_view namespace_of(const json::object& object) {
  const json::object* metadata = object_at(object, "metadata");
  return metadata ? string_at(*metadata, "namespace") : std::string_view{};
}

const ResourceInfo* find_resource(std::string_view plural) {
  for (const auto& r : kResources)
    if (r.plural == plural) return &r;
  return nullptr;
}

const ResourceInfo* find_resource_by_kind(std::string_view kind) {
  for (const auto& r : kResources)
    if (r.kind == kind) return &r;
  return nullptr;
}

std::string_view to_string(EventType type) {
  switch (type) {
    case EventType::added: return "ADDED";
    case EventType::modified: return "MODIFIED";
    case EventType::deleted: return "DELETED";
  }
  return "";
}

Selector Selector::parse_fields(std::string_view text) {
  Selector selector;
  for (std::string_view term : split(text, ',')) {
    term = trim(term);
    if (term.empty()) continue;
    Op op;
    std::size_t at, width;
    if ((at = term.find("!=")) != std::string_view::npos) {
      op = Op::not_equals, width = 2;
    } else if ((at = term.find("==")) != std::string_view::npos) {
      op = Op::equals, width = 2;
    } else if ((at = term.find('=')) != std::string_view::npos) {
      op = Op::equals, width = 1;
    } else {
      throw std::invalid_argument("invalid field selector term: " + std::string(term));
    }
    selector.terms_.push_back(
        {false, std::string(trim(term.substr(0, at))), op, std::string(trim(term.substr(at + width)))});
  }
  return selector;
}

Selector Selector::parse_labels(std::string_view text) {
  Selector selector;
  for (std::string_view term : split(text, ',')) {
    term = trim(term);
    if (term.empty()) continue;
    if (term.find('(') != std::string_view::npos)
      throw std::invalid_argument("set-based label selectors are not supported: " + std::string(term));
    std::size_t at;
    if ((at = term.find("!=")) != std::string_view::npos) {
      selector.terms_.push_back(
          {true, std::string(trim(term.substr(0, at))), Op::not_equals, std::string(trim(term.substr(at + 2)))});
    } else if ((at = term.find("==")) != std::string_view::npos) {
      selector.terms_.push_back(
          {true, std::string(trim(term.substr(0, at))), Op::equals, std::string(trim(term.substr(at + 2)))});
    } else if ((at = term.find('=')) != std::string_view::npos) {
      selector.terms_.push_back(
          {true, std::string(trim(term.substr(0, at))), Op::equals, std::string(trim(term.substr(at + 1)))});
    } else if (term.front() == '!') {
      selector.terms_.push_back({true, std::string(trim(term.substr(1))), Op::not_exists, {}});
    } else {
      selector.terms_.push_back({true, std::string(term), Op::exists, {}});
    }
  }
  return selector;
}

bool Selector::matches(const json::object& object) const {
  for (const auto& term : terms_) {
    std::optional<std::string> value;
    if (term.label) {
      const json::object* metadata = object_at(object, "metadata");
      const json::object* labels = metadata ? object_at(*metadata, "labels") : nullptr;
      if (labels) {
        auto it = labels->find(term.path);
        if (it != labels->end() && it->value().is_string()) value = std::string(it->value().get_string());
      }
    } else {
      value = field_text(object, term.path);
    }
    switch (term.op) {
      case Op::equals:
        if (value.value_or("") != term.value) return false;
        break;
      case Op::not_equals:
        if (value.value_or("") == term.value) return false;
        break;
      case Op::exists:
        if (!value) return false;
        break;
      case Op::not_exists:
        if (value) return false;
        break;
    }
  }
  return true;
}

ObjectStore::ObjectStore(std::uint64_t initial_resource_version, std::size_t history_limit)
    : resource_version_(initial_resource_version),
      compacted_(initial_resource_version),
      history_limit_(history_limit == 0 ? 1 : history_limit) {}

std::string ObjectStore::key_of(const ResourceInfo& resource, std::string_view ns, std::string_view name) {
  if (!resource.namespaced) return std::string(name);
  std::string key(ns);
  key += '/';
  key += name;
  return key;
}

const StoredEvent& ObjectStore::record(StoredEvent event) {
  history_.push_back(std::move(event));
  while (history_.size() > history_limit_) {
    compacted_ = history_.front().resource_version;
    history_.pop_front();
  }
  return history_.back();
}

const StoredEvent& ObjectStore::upsert(const ResourceInfo& resource, json::object object) {
  json::value& metadata_value = object["metadata"];
  if (!metadata_value.is_object()) metadata_value = json::object{};
  json::object& metadata = metadata_value.get_object();
  if (string_at(metadata, "name").empty())
    throw std::invalid_argument(std::string(resource.kind) + " without metadata.name");
  if (resource.namespaced) {
    if (string_at(metadata, "namespace").empty()) metadata["namespace"] = "default";
  } else {
    metadata.erase("namespace");
  }
  std::string key = key_of(resource, string_at(metadata, "namespace"), string_at(metadata, "name"));
  auto& objects = objects_[resource.plural];
  auto existing = objects.find(key);
  ObjectPtr previous = existing == objects.end() ? nullptr : existing->second;

  if (string_at(metadata, "uid").empty()) {
    if (previous) {
      metadata["uid"] = string_at(*object_at(*previous, "metadata"), "uid");
    } else {
      char uid[40];
      std::snprintf(uid, sizeof uid, "fa4e0000-0000-4000-8000-%012llu",
                    static_cast<unsigned long long>(++uid_counter_));
      metadata["uid"] = uid;
    }
  }
  if (!metadata.contains("creationTimestamp")) metadata["creationTimestamp"] = "2026-01-01T00:00:00Z";
  std::uint64_t version = ++resource_version_;
  metadata["resourceVersion"] = std::to_string(version);
  // kind and apiVersion first, as the real server serializes them.
  json::object ordered;
  ordered["kind"] = resource.kind;
  ordered["apiVersion"] = resource.api_version;
  for (auto& member : object)
    if (member.key() != "kind" && member.key() != "apiVersion") ordered[member.key()] = std::move(member.value());

  auto stored = std::make_shared<const json::object>(std::move(ordered));
  objects[key] = stored;
  return record({version, &resource, previous ? EventType::modified : EventType::added, std::move(key), stored,
                 std::move(previous)});
}

const StoredEvent* ObjectStore::erase(const ResourceInfo& resource, std::string_view ns, std::string_view name) {
  auto& objects = objects_[resource.plural];
  auto it = objects.find(key_of(resource, ns, name));
  if (it == objects.end()) return nullptr;
  std::uint64_t version = ++resource_version_;
  auto last = std::make_shared<json::object>(*it->second);
  (*last)["metadata"].get_object()["resourceVersion"] = std::to_string(version);
  ObjectPtr previous = it->second;
  std::string key = it->first;
  objects.erase(it);
  return &record({version, &resource, EventType::deleted, std::move(key), std::move(last), std::move(previous)});
}

ObjectPtr ObjectStore::get(const ResourceInfo& resource, std::string_view ns, std::string_view name) const {
  auto by_resource = objects_.find(resource.plural);
  if (by_resource == objects_.end()) return nullptr;
  auto it = by_resource->second.find(key_of(resource, ns, name));
  return it == by_resource->second.end() ? nullptr : it->second;
}

void ObjectStore::compact() {
  history_.clear();
  compacted_ = resource_version_;
}

ObjectStore::ObjectMap ObjectStore::state_at(const ResourceInfo& resource, std::uint64_t version) const {
  ObjectMap state;
  if (auto it = objects_.find(resource.plural); it != objects_.end()) state = it->second;
  // Undo, newest first, what happened after `version`: the caller checked it is all retained.
  for (auto event = history_.rbegin(); event != history_.rend() && event->resource_version > version; ++event) {
    if (event->resource != &resource) continue;
    if (event->type == EventType::added)
      state.erase(event->key);
    else
      state[event->key] = event->previous;
  }
  return state;
}

std::variant<ListPage, ListExpired> ObjectStore::list(const ResourceInfo& resource,
                                                      const ListRequest& request) const {
  std::uint64_t version = resource_version_;
  std::string start_after;
  bool continued = !request.continue_token.empty();
  if (continued) {
    // The token: base64 of {"v":..., "rv":N, "start":"last key", "epoch":E}.
    auto decoded = base64_decode(request.continue_token);
    json::object token;
    try {
      if (!decoded) throw std::invalid_argument("not base64");
      token = json::parse(*decoded).as_object();
      version = static_cast<std::uint64_t>(token.at("rv").to_number<std::int64_t>());
      start_after = std::string(token.at("start").as_string());
      if (token.at("epoch").to_number<std::int64_t>() != static_cast<std::int64_t>(continue_epoch_))
        return ListExpired{};
    } catch (const std::exception&) {
      throw std::invalid_argument("continue key is not valid");
    }
    if (version < compacted_) return ListExpired{};
  }

  ObjectMap pinned;
  const ObjectMap* state = nullptr;
  bool changed_since = false;
  if (continued) {
    for (auto event = history_.rbegin(); event != history_.rend() && event->resource_version > version; ++event)
      if (event->resource == &resource) changed_since = true;
  }
  if (changed_since) {
    pinned = state_at(resource, version);
    state = &pinned;
  } else if (auto it = objects_.find(resource.plural); it != objects_.end()) {
    state = &it->second;
  }

  ListPage page;
  page.resource_version = version;
  if (!state) return page;
  auto it = continued ? state->upper_bound(start_after) : state->begin();
  std::string last_key;
  for (; it != state->end(); ++it) {
    const json::object& object = *it->second;
    if (!request.namespace_filter.empty() && namespace_of(object) != request.namespace_filter) continue;
    if (!request.fields.matches(object) || !request.labels.matches(object)) continue;
    if (request.limit != 0 && page.items.size() == request.limit) break;
    page.items.push_back(it->second);
    last_key = it->first;
  }
  if (it != state->end()) {
    std::uint64_t remaining = 0;
    for (auto rest = it; rest != state->end(); ++rest) {
      const json::object& object = *rest->second;
      if (!request.namespace_filter.empty() && namespace_of(object) != request.namespace_filter) continue;
      if (!request.fields.matches(object) || !request.labels.matches(object)) continue;
      ++remaining;
    }
    if (remaining > 0) {
      json::object token{{"v", "meta.k8s.io/v1"},
                         {"rv", static_cast<std::int64_t>(version)},
                         {"start", last_key},
                         {"epoch", static_cast<std::int64_t>(continue_epoch_)}};
      page.continue_token = base64_encode(json::serialize(token));
      // The real server reports remainingItemCount only when no selector filters the list.
      if (request.fields.empty() && request.labels.empty()) page.remaining_items = remaining;
    }
  }
  return page;
}

std::vector<ObjectPtr> ObjectStore::current(const ResourceInfo& resource) const {
  std::vector<ObjectPtr> result;
  if (auto it = objects_.find(resource.plural); it != objects_.end())
    for (const auto& [key, object] : it->second) result.push_back(object);
  return result;
}

std::optional<std::vector<const StoredEvent*>> ObjectStore::events_since(const ResourceInfo& resource,
                                                                         std::uint64_t since) const {
  if (since < compacted_) return std::nullopt;
  std::vector<const StoredEvent*> events;
  for (const auto& event : history_)
    if (event.resource_version > since && event.resource == &resource) events.push_back(&event);
  return events;
}

std::string base64_encode(std::string_view data) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < data.size(); i += 3) {
    unsigned v = (static_cast<unsigned char>(data[i]) << 16) | (static_cast<unsigned char>(data[i + 1]) << 8) |
                 static_cast<unsigned char>(data[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == data.size()) {
    unsigned v = static_cast<unsigned char>(data[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == data.size()) {
    unsigned v = (static_cast<unsigned char>(data[i]) << 16) | (static_cast<unsigned char>(data[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  auto value_of = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  std::string out;
  unsigned buffer = 0;
  int bits = 0;
  for (char c : text) {
    int v = value_of(c);
    if (v < 0) return std::nullopt;
    buffer = (buffer << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xff);
    }
  }
  return out;
}

}  // namespace dsproxy::fake_api
