// FakeApiServer: a Kubernetes API server for dsproxy's tests, speaking the real wire format over
// HTTPS, with fault injection driven by the test.
//
// What it serves (GET only; everything else is 405):
//   /api/v1/services            /api/v1/namespaces/{ns}/services
//   /api/v1/pods                /api/v1/namespaces/{ns}/pods
//   /api/v1/nodes
//   /apis/discovery.k8s.io/v1/endpointslices   /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices
//   .../{name} (one object), /version, /healthz
// LIST   `limit`, `continue` (a token pinned to the list's resourceVersion: later pages show the
//        objects as of that version, like etcd's MVCC read; 410 "Expired" once the history it needs
//        is compacted or expire_continue_tokens() was called), `fieldSelector` (`a.b=v`, `a.b==v`,
//        `a.b!=v`, comma = and; e.g. spec.nodeName=X), `labelSelector` (`k=v`, `k!=v`, `k`).
//        Items carry no kind/apiVersion (as the real server's typed lists); the list does.
// WATCH  `watch=1|true`, `resourceVersion` (absent or "0": ADDED for every current object first),
//        `allowWatchBookmarks`, `timeoutSeconds`, the same selectors (an object leaving the
//        selector is DELETED for that watch, one entering it ADDED, as the real server does).
//        Chunked transfer encoding, one `{"type":…,"object":…}\n` line per chunk by default.
//        A resourceVersion older than the retained history: one ERROR event with a Status 410
//        "Expired", then the stream ends.
// Objects are JSON; every write takes the next value of one global resourceVersion counter (etcd's
// revision), stored in metadata.resourceVersion. A deleted object's last state carries the
// deletion's resourceVersion. History (for watches and continue tokens) is bounded.
//
// Threads: the server runs its own io_context on its own thread (start() .. stop()). Every public
// member may be called from any thread; each one runs on the server thread and returns when done,
// so after upsert() returns, the event is queued on every open watch. Do not call them from inside
// the server thread except through the standalone control API, which is handled there.
//
// Secrets: the bearer token is written to the token file and kubeconfig only; requests() records
// whether an Authorization header was present and whether it was accepted, never its value.
#pragma once

#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dsproxy::fake_api {

struct FakeApiServerOptions {
  // Directory the TLS material, token and kubeconfigs are written to (created if missing). Required.
  std::filesystem::path dir{};
  // Address to listen on: "127.0.0.1", "::1" or any local address (e.g. a netns's).
  std::string listen_address = "127.0.0.1";
  std::uint16_t port = 0;  // 0: the kernel picks one; port() tells
  // Extra IP addresses for the server certificate's subjectAltName (the listen address,
  // 127.0.0.1 and ::1 are always in it, plus DNS:localhost).
  std::vector<std::string> extra_san_addresses{};
  // Bearer token required on every API request (not /healthz, /version). Empty: a random one is
  // generated. Set require_token=false to serve anonymous clients.
  std::string token{};
  bool require_token = true;
  // Events retained for watches and continue tokens; older ones are compacted away.
  std::size_t history_limit = 10000;
  // The first write gets initial_resource_version + 1 (real clusters never start at 1).
  std::uint64_t initial_resource_version = 1000;
  // Watches that asked for bookmarks get one every interval (0: only on send_bookmarks()).
  std::chrono::milliseconds bookmark_interval{0};
  // A watch without timeoutSeconds ends after this (the real server: 30 to 60 minutes).
  std::chrono::seconds default_watch_timeout{1800};
};

// Which requests an injected failure applies to.
struct FailOptions {
  std::string path_prefix{};             // empty: every API path
  std::optional<bool> watch{};           // true: watches only, false: non-watch requests only
  std::optional<int> retry_after{};      // seconds, sent as Retry-After (default 1 for 429)
  std::string message{};                 // Status.message; empty: what the real server says
};

// How watch events are framed into HTTP chunks (the client must not care).
enum class ChunkMode {
  one_per_event,  // the real server's behaviour: a flush per event
  split,          // every event line split across two chunks
  coalesced,      // all pending events in one chunk
};

struct RecordedRequest {
  std::string method;
  std::string target;         // path and query, as sent
  bool has_authorization = false;
  bool authorized = false;    // the token matched (or none was required)
  bool watch = false;
  unsigned status = 0;        // the status answered (200 for a watch stream that started)
};

class FakeApiServer {
 public:
  explicit FakeApiServer(FakeApiServerOptions options);
  ~FakeApiServer();  // stop()
  FakeApiServer(const FakeApiServer&) = delete;
  FakeApiServer& operator=(const FakeApiServer&) = delete;

  // Generates the CA, server certificate and the "wrong" CA, writes the files below, binds and
  // starts the server thread. Throws std::runtime_error (bind failure, unwritable dir).
  void start();
  // Closes every connection and joins the thread. Idempotent.
  void stop();

  std::uint16_t port() const;
  std::string url() const;  // https://127.0.0.1:PORT or https://[::1]:PORT

  // Files in options.dir (valid after start()):
  std::filesystem::path ca_file() const;            // ca.crt: the CA that signed the server cert
  std::filesystem::path wrong_ca_file() const;      // wrong-ca.crt: a CA that signed nothing we serve
  std::filesystem::path token_file() const;         // token: the current bearer token, no newline
  std::filesystem::path kubeconfig_file() const;    // kubeconfig: server + certificate-authority + tokenFile
  // kubeconfig-inline: certificate-authority-data + token (data instead of files)
  std::filesystem::path inline_kubeconfig_file() const;
  // kubeconfig-wrong-ca: like kubeconfig but trusting wrong-ca.crt (verification must fail)
  std::filesystem::path wrong_ca_kubeconfig_file() const;
  // serviceaccount/{token,ca.crt,namespace}: the in-cluster mount layout (--service-account-dir)
  std::filesystem::path service_account_dir() const;
  std::string token() const;

  // --- objects (resource: "services", "pods", "nodes", "endpointslices") ---
  // Creates or replaces the object named by metadata.namespace/name (namespace defaults to
  // "default" for namespaced resources); sets kind, apiVersion, uid, creationTimestamp if absent
  // and metadata.resourceVersion. Returns the new resourceVersion. Throws std::invalid_argument
  // for an unknown resource or a missing name.
  std::uint64_t upsert(std::string_view resource, boost::json::object object);
  // Deletes; returns the deletion's resourceVersion, or nullopt if there was no such object.
  // ns is ignored for nodes.
  std::optional<std::uint64_t> erase(std::string_view resource, std::string_view ns, std::string_view name);
  std::optional<boost::json::object> get(std::string_view resource, std::string_view ns,
                                         std::string_view name) const;
  std::uint64_t resource_version() const;  // the last value handed out

  // --- history ---
  // Forgets all history up to now: watches from an older resourceVersion and continue tokens
  // issued before now get 410. Open watches are not affected (they already hold their events).
  void compact();
  // Every continue token issued so far is answered with 410 Expired.
  void expire_continue_tokens();

  // --- faults ---
  // The next `count` matching requests are answered with `status` (401, 403, 429, 500, 503, ...)
  // and a Status body like the real server's. Rules queue up; the first matching one is used.
  void fail_next(int count, unsigned status, FailOptions options = {});
  void clear_failures();
  // While on, every open and new watch sends nothing after its headers (no events, no bookmarks,
  // no end at timeoutSeconds); events queue up and flow again when turned off.
  void stall_watches(bool on = true);
  // Every open watch stream writes half of an event line (a chunk header promising the whole
  // line) and the connection is closed without a TLS close_notify.
  void cut_streams();
  // Closes every open connection (abruptly, as a crashed server would).
  void close_connections();
  // Closes every connection and the listening socket (new connections are refused) for
  // `duration`, then listens on the same port again. resume() ends a pause early.
  void pause(std::chrono::milliseconds duration);
  void resume();
  // Rotates the bearer token: the old one gets 401 from now on; the token files are rewritten
  // (atomically, by rename, as the kubelet swaps a projected volume).
  void set_token(std::string token);
  // Every open watch that asked for bookmarks gets a BOOKMARK at the current resourceVersion.
  void send_bookmarks();
  void set_chunk_mode(ChunkMode mode);
  // While on, new TLS handshakes present a certificate signed by the wrong CA.
  void present_wrong_certificate(bool on = true);

  // --- observation ---
  std::vector<RecordedRequest> requests() const;
  void clear_requests();
  std::size_t open_watches() const;
  // Polls (5 ms steps) until at least `count` watches are open; false on timeout.
  bool wait_for_watches(std::size_t count, std::chrono::milliseconds timeout) const;
  // Polls until `predicate(requests())` holds; false on timeout.
  template <typename Predicate>
  bool wait_for_requests(Predicate predicate, std::chrono::milliseconds timeout) const {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (predicate(requests())) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      sleep_briefly();
    }
  }

  // --- standalone control API (plain HTTP, see README.md): listens on 127.0.0.1, returns its port.
  std::uint16_t start_control(std::uint16_t port = 0);

  struct Impl;

 private:
  static void sleep_briefly();
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsproxy::fake_api
