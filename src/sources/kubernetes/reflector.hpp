#pragma once
// Keeps one resource (services, endpointslices, pods, nodes) of the API server mirrored into a
// sink: LIST, then WATCH from the list's resourceVersion, forever, the way client-go's reflector
// does (our own code; client-go was read to get the protocol right).
//
//   start ─► LIST page 1..n ─► begin_list, listed×N, end_list ─► WATCH from RV ─┐
//              ▲  (limit=500, continue=...)                                     │
//              │                                                                ▼
//              └── 410 Gone (watch request, ERROR event, expired continue) ◄── events, BOOKMARKs
//                                                                               │ stream ended,
//                                  WATCH again from the last RV (not a relist) ◄┘ stalled, cut
//
// Failures and what follows:
//   410 on the watch (HTTP or an ERROR event with code 410), 410 on a continue token
//        → relist at once: a full paginated LIST, then end_list, so the sink applies only the
//          difference (nothing is reset, no connection of the data path is dropped)
//   watch ended by the server (timeoutSeconds), stalled (no byte for stall_timeout), cut
//        → WATCH again from the last resourceVersion (events or bookmarks), without relisting
//   429  → wait Retry-After (bounded by max_retry_after), else the backoff
//   401  → re-read the token file, log, back off
//   403  → log the RBAC rule the service account lacks, back off
//   5xx, 404, connect/TLS/timeouts/resets, unparsable bodies
//        → exponential backoff with jitter (200 ms doubling to 30 s, ±20 %), reset by a success
// Error lines are rate-limited (log_interval) so that a failing API server does not flood the log.
//
// Threading: everything, the sink calls included, runs on the executor given to the constructor
// (the control-plane thread). status() and synced() may be called from any thread.

#include <boost/asio/any_io_executor.hpp>
#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "sources/kubernetes/api_client.hpp"
#include "sources/kubernetes/api_server_config.hpp"
#include "sources/kubernetes/backoff.hpp"
#include "sources/kubernetes/resource.hpp"

namespace dsproxy::sources::kubernetes {

enum class WatchEventType { added, modified, deleted };
const char* to_string(WatchEventType type);

// What the daemon implements to receive the objects (decode with config::decode_object(
// resource.kind, object, where), feed the snapshot builder). Calls come on the reflector's
// executor, in this grammar per resource:
//
//   ( begin_list  listed*  [begin_list listed*]*  end_list  event* )*
//
// - begin_list: a LIST starts. It can come again before end_list when a LIST failed midway
//   (an expired continue token): forget what was marked listed since the previous begin_list.
// - listed: one item of the LIST, page by page as pages arrive (items are never all held).
// - end_list: the set of this resource is now exactly what was listed since the last
//   begin_list; delete the rest. The first end_list of a resource means it is synced (readiness).
//   After a relist this is how objects deleted while the watch was down disappear.
// - event: a watch event (Added, Modified, Deleted with the object's last state).
// Objects are the API's JSON (LIST items and watch objects usually lack kind and apiVersion:
// use resource.kind). The object is only valid during the call. A sink should not throw; if it
// does, the reflector logs it, counts a "sink" error and carries on with the next object.
class ReflectorSink {
 public:
  virtual ~ReflectorSink() = default;
  virtual void begin_list(const Resource& resource) = 0;
  virtual void listed(const Resource& resource, const boost::json::object& item) = 0;
  virtual void end_list(const Resource& resource) = 0;
  virtual void event(const Resource& resource, WatchEventType type, const boost::json::object& object) = 0;
};

struct ReflectorOptions {
  std::uint32_t page_size = 500;
  // Each WATCH asks the server to end it after a random timeoutSeconds in [min, 2·min]: the
  // random spread keeps the nodes' watches from restarting in lockstep.
  std::chrono::seconds min_watch_timeout{300};
  // No byte (event, bookmark) for this long → the watch is treated as ended and resumed. The API
  // server sends a bookmark about every minute to watchers that allow them.
  std::chrono::milliseconds stall_timeout{150'000};
  BackoffPolicy backoff{};
  std::chrono::seconds max_retry_after{60};
  // A watch that ends without a single line sooner than this counts as a failure (backoff), so a
  // server that accepts and closes at once is not hammered.
  std::chrono::milliseconds short_watch{1'000};
  std::chrono::milliseconds log_interval{10'000};
  // An optional resource (Resource::optional) the server does not serve (404: its CRD is not
  // installed) is listed again after this long.
  std::chrono::milliseconds absent_retry{60'000};
  ApiClientOptions client{};
};

// For /config_dump and readiness. Error kinds: "http_401", "http_403", "http_404", "http_429",
// "http_5xx", "http_other", "gone" (410s), "connect", "resolve", "tls", "timeout", "io",
// "stalled", "too_large", "protocol", "decode" (unparsable body or line), "watch_error" (an ERROR
// event other than 410), "sink".
struct ReflectorStatus {
  std::string resource;          // "endpointslices.discovery.k8s.io"
  bool synced = false;           // a first LIST completed
  std::string resource_version;  // the last one seen (list, event or bookmark)
  std::uint64_t lists = 0;       // LISTs completed
  std::uint64_t relists = 0;     // LISTs started after the first sync, or restarted on an expired continue
  std::uint64_t watch_restarts = 0;  // WATCHes resumed from the last resourceVersion
  std::uint64_t events = 0;
  std::uint64_t bookmarks = 0;
  std::uint64_t last_list_items = 0;
  bool absent = false;  // an optional resource the server answered 404 for: treated as empty
  std::map<std::string, std::uint64_t> errors;
  std::string last_error;  // a description without secrets; "" if none yet

  boost::json::object to_json() const;
};

class Reflector {
 public:
  // Throws KubernetesConfigError if the TLS configuration cannot be loaded. Does nothing until
  // start(). `sink` must outlive the reflector.
  Reflector(boost::asio::any_io_executor executor, const ApiServerConfig& config, Resource resource,
            ReflectorSink& sink, ReflectorOptions options = {});
  ~Reflector();  // stop()s: destroy on the executor's thread, or after its io_context stopped
  Reflector(const Reflector&) = delete;
  Reflector& operator=(const Reflector&) = delete;

  void start();
  // No sink call happens after stop() returns. Call on the executor's thread (or after the
  // io_context stopped running).
  void stop();

  const Resource& resource() const;
  bool synced() const;
  ReflectorStatus status() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace dsproxy::sources::kubernetes
