// The API client and the reflector against the in-process fake API server (HTTPS on port 0):
// pagination, watch, bookmarks, 410 relists, expired continue tokens, stalls, cut streams,
// 401/403/429/5xx, token rotation and TLS verification.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fake_apiserver/fake_api_server.hpp"
#include "sources/kubernetes/api_client.hpp"
#include "sources/kubernetes/reflector.hpp"

namespace k8s = dsproxy::sources::kubernetes;
namespace asio = boost::asio;
namespace json = boost::json;
using dsproxy::fake_api::FailOptions;
using dsproxy::fake_api::FakeApiServer;
using dsproxy::fake_api::FakeApiServerOptions;
using namespace std::chrono_literals;

namespace {

std::string key_of(const json::object& o) {
  const auto& md = o.at("metadata").as_object();
  std::string ns = md.contains("namespace") ? std::string(md.at("namespace").as_string()) : "";
  return ns + "/" + std::string(md.at("name").as_string());
}

// Mirrors the resource the way the daemon's sink will: listed items are applied at once, end_list
// deletes what the list did not mention, events apply as they come.
class MirrorSink : public k8s::ReflectorSink {
 public:
  void begin_list(const k8s::Resource&) override {
    std::lock_guard lock(mutex_);
    ++begins;
    listed_.clear();
    log.push_back("begin");
  }
  void listed(const k8s::Resource&, const json::object& item) override {
    std::lock_guard lock(mutex_);
    objects[key_of(item)] = item;
    listed_.insert(key_of(item));
    if (on_listed) on_listed(key_of(item));
  }
  void end_list(const k8s::Resource&) override {
    std::lock_guard lock(mutex_);
    ++ends;
    for (auto it = objects.begin(); it != objects.end();) {
      it = listed_.count(it->first) ? std::next(it) : objects.erase(it);
    }
    log.push_back("end");
  }
  void event(const k8s::Resource&, k8s::WatchEventType type, const json::object& object) override {
    std::lock_guard lock(mutex_);
    const std::string key = key_of(object);
    log.push_back(std::string(k8s::to_string(type)) + " " + key);
    if (type == k8s::WatchEventType::deleted)
      objects.erase(key);
    else
      objects[key] = object;
  }

  template <class P>
  bool wait(P predicate, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      {
        std::lock_guard lock(mutex_);
        if (predicate()) return true;
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(2ms);
    }
  }
  std::set<std::string> keys() {
    std::lock_guard lock(mutex_);
    std::set<std::string> k;
    for (const auto& [key, _] : objects) k.insert(key);
    return k;
  }
  std::size_t count_in_log(const std::string& entry) {
    std::lock_guard lock(mutex_);
    return static_cast<std::size_t>(std::count(log.begin(), log.end(), entry));
  }

  // Runs on the reflector's thread, under the sink's lock, for each listed item.
  std::function<void(const std::string&)> on_listed;
  std::map<std::string, json::object> objects;
  std::vector<std::string> log;
  int begins = 0;
  int ends = 0;

 private:
  std::recursive_mutex mutex_;  // wait() predicates call keys() and count_in_log()
  std::set<std::string> listed_;
};

json::object service(const std::string& name, const std::string& ns = "default") {
  return json::object{{"metadata", json::object{{"name", name}, {"namespace", ns}}},
                      {"spec", json::object{{"clusterIP", "10.96.0.10"}, {"ports", json::array{}}}}};
}

class ReflectorTempDir {
 public:
  ReflectorTempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dsproxy-fakeapi-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~ReflectorTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Test timing: backoff in tens of milliseconds, so that a whole failure sequence takes well under
// a second; the stall timeout long enough not to fire unless a test stalls the server.
k8s::ReflectorOptions fast_options() {
  k8s::ReflectorOptions o;
  o.backoff = k8s::BackoffPolicy{20ms, 200ms, 2.0, 0.2};
  o.stall_timeout = 5s;
  o.min_watch_timeout = 60s;
  o.log_interval = 0ms;
  o.client.connect_timeout = 2s;
  o.client.tls_timeout = 2s;
  o.client.response_timeout = 5s;
  return o;
}

class KubernetesReflector : public ::testing::Test {
 protected:
  void SetUp() override { start_server("127.0.0.1"); }

  void start_server(const std::string& address) {
    FakeApiServerOptions options;
    options.dir = dir_.path() / "server";
    options.listen_address = address;
    server = std::make_unique<FakeApiServer>(options);
    server->start();
  }

  void TearDown() override {
    stop();
    if (server) server->stop();
  }

  k8s::ApiServerConfig config() { return k8s::kubeconfig_config(server->kubeconfig_file().string()); }

  void start(k8s::Resource resource, k8s::ReflectorOptions options = fast_options(),
             std::optional<k8s::ApiServerConfig> cfg = std::nullopt) {
    config_ = cfg ? *cfg : config();
    reflector = std::make_unique<k8s::Reflector>(io.get_executor(), config_, std::move(resource), sink, options);
    reflector->start();
    thread_ = std::thread([this] { io.run(); });
  }

  void stop() {
    if (!reflector) return;
    asio::post(io, [this] { reflector->stop(); });
    if (thread_.joinable()) thread_.join();  // returns once the reflector's loop has ended
    reflector.reset();
  }

  template <class P>
  bool wait_status(P predicate, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (predicate(reflector->status())) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(2ms);
    }
  }

  std::vector<dsproxy::fake_api::RecordedRequest> watch_requests() {
    std::vector<dsproxy::fake_api::RecordedRequest> w;
    for (auto& r : server->requests())
      if (r.watch) w.push_back(r);
    return w;
  }
  std::vector<dsproxy::fake_api::RecordedRequest> list_requests() {
    std::vector<dsproxy::fake_api::RecordedRequest> l;
    for (auto& r : server->requests())
      if (!r.watch && r.target.find("/api") == 0) l.push_back(r);
    return l;
  }

  ReflectorTempDir dir_;
  std::unique_ptr<FakeApiServer> server;
  asio::io_context io;
  MirrorSink sink;
  k8s::ApiServerConfig config_;
  std::unique_ptr<k8s::Reflector> reflector;

 private:
  std::thread thread_;
};

std::string param(const std::string& target, const std::string& name) {
  const auto q = target.find('?');
  if (q == std::string::npos) return {};
  std::string query = "&" + target.substr(q + 1);
  const auto at = query.find("&" + name + "=");
  if (at == std::string::npos) return {};
  const auto start = at + name.size() + 2;
  return query.substr(start, query.find('&', start) - start);
}

}  // namespace

TEST_F(KubernetesReflector, ListsPageByPageThenWatchesFromTheListVersion) {
  for (int i = 0; i < 12; ++i) server->upsert("services", service("svc-" + std::to_string(i)));
  const std::string list_rv = std::to_string(server->resource_version());
  auto options = fast_options();
  options.page_size = 5;
  start(k8s::resources::services(), options);
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }));
  EXPECT_TRUE(reflector->synced());
  EXPECT_EQ(sink.keys().size(), 12u);
  EXPECT_EQ(sink.begins, 1);

  const auto lists = list_requests();
  ASSERT_EQ(lists.size(), 3u);  // 5 + 5 + 2
  EXPECT_EQ(param(lists[0].target, "limit"), "5");
  EXPECT_EQ(param(lists[0].target, "continue"), "");
  EXPECT_NE(param(lists[1].target, "continue"), "");
  EXPECT_NE(param(lists[2].target, "continue"), "");
  EXPECT_EQ(param(lists[0].target, "resourceVersion"), "");  // a consistent read of the latest state

  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  const auto watches = watch_requests();
  ASSERT_EQ(watches.size(), 1u);
  EXPECT_EQ(param(watches[0].target, "resourceVersion"), list_rv);
  EXPECT_EQ(param(watches[0].target, "allowWatchBookmarks"), "true");
  const int timeout = std::stoi(param(watches[0].target, "timeoutSeconds"));
  EXPECT_GE(timeout, 60);
  EXPECT_LE(timeout, 120);

  server->upsert("services", service("new"));
  auto changed = service("svc-3");
  changed["spec"].as_object()["clusterIP"] = "10.96.0.99";
  server->upsert("services", changed);
  server->erase("services", "default", "svc-4");
  ASSERT_TRUE(sink.wait([&] { return sink.log.size() >= 5; }));
  EXPECT_EQ(sink.log[2], "ADDED default/new");
  EXPECT_EQ(sink.log[3], "MODIFIED default/svc-3");
  EXPECT_EQ(sink.log[4], "DELETED default/svc-4");
  EXPECT_EQ(sink.keys().size(), 12u);
  EXPECT_EQ(sink.objects["default/svc-3"].at("spec").at("clusterIP").as_string(), "10.96.0.99");

  const auto status = reflector->status();
  EXPECT_EQ(status.resource, "services");
  EXPECT_TRUE(status.synced);
  EXPECT_EQ(status.lists, 1u);
  EXPECT_EQ(status.relists, 0u);
  EXPECT_EQ(status.events, 3u);
  EXPECT_EQ(status.last_list_items, 12u);
  EXPECT_EQ(status.resource_version, std::to_string(server->resource_version()));
  EXPECT_TRUE(status.errors.empty());
  const json::object dump = status.to_json();
  EXPECT_EQ(dump.at("synced").as_bool(), true);
  EXPECT_EQ(dump.at("resource").as_string(), "services");
}

TEST_F(KubernetesReflector, BookmarkMovesTheVersionTheNextWatchStartsFrom) {
  server->upsert("services", service("a"));
  start(k8s::resources::services());
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  // Writes to another resource move the global resourceVersion without an event for services.
  for (int i = 0; i < 3; ++i) server->upsert("nodes", json::object{{"metadata", json::object{{"name", "n" + std::to_string(i)}}}});
  const std::string bookmark_rv = std::to_string(server->resource_version());
  server->send_bookmarks();
  ASSERT_TRUE(wait_status([&](const k8s::ReflectorStatus& s) { return s.bookmarks == 1; }));
  EXPECT_EQ(reflector->status().resource_version, bookmark_rv);
  server->close_connections();
  ASSERT_TRUE(server->wait_for_requests([](const auto& r) {
    return std::count_if(r.begin(), r.end(), [](const auto& x) { return x.watch; }) >= 2;
  }, 5s));
  const auto watches = watch_requests();
  EXPECT_EQ(param(watches.back().target, "resourceVersion"), bookmark_rv);
  EXPECT_EQ(list_requests().size(), 1u);  // resumed, not relisted
  EXPECT_EQ(sink.log, (std::vector<std::string>{"begin", "end"}));
}

TEST_F(KubernetesReflector, GoneWatchRelistsAndTheSinkLosesWhatWasDeletedMeanwhile) {
  for (const char* n : {"a", "b", "c"}) server->upsert("services", service(n));
  start(k8s::resources::services());
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  // The API server goes away; meanwhile b is deleted, d created, and the history compacted, so
  // the watch cannot resume from its version.
  server->pause(10s);
  server->erase("services", "default", "b");
  server->upsert("services", service("d"));
  server->compact();
  server->resume();
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 2; }));
  EXPECT_EQ(sink.keys(), (std::set<std::string>{"default/a", "default/c", "default/d"}));
  EXPECT_EQ(sink.count_in_log("DELETED default/b"), 0u);  // gone through the list's difference
  const auto status = reflector->status();
  EXPECT_EQ(status.relists, 1u);
  EXPECT_EQ(status.lists, 2u);
  EXPECT_GE(status.errors.at("gone"), 1u);
  // And the watch goes on from the relist.
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  server->erase("services", "default", "a");
  ASSERT_TRUE(sink.wait([&] { return sink.count_in_log("DELETED default/a") == 1; }));
}

TEST_F(KubernetesReflector, GoneOnTheWatchRequestItselfRelists) {
  server->upsert("services", service("a"));
  start(k8s::resources::services());
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  FailOptions watch_only;
  watch_only.watch = true;
  server->fail_next(1, 410, watch_only);
  server->close_connections();
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 2; }));
  EXPECT_EQ(reflector->status().relists, 1u);
  EXPECT_EQ(reflector->status().errors.count("http_5xx"), 0u);
}

TEST_F(KubernetesReflector, RepeatedGoneWithoutProgressBacksOffInsteadOfLooping) {
  server->upsert("services", service("a"));
  FailOptions watch_only;
  watch_only.watch = true;
  server->fail_next(4, 410, watch_only);  // every watch refused, even from a fresh list's version
  const auto started = std::chrono::steady_clock::now();
  start(k8s::resources::services());
  ASSERT_TRUE(server->wait_for_requests([](const auto& r) {
    return std::count_if(r.begin(), r.end(), [](const auto& x) { return x.watch && x.status == 200; }) >= 1;
  }, 5s));
  EXPECT_EQ(list_requests().size(), 5u);
  EXPECT_EQ(reflector->status().relists, 4u);
  // The first relist is immediate, the next ones wait 40, 80, 160 ms (-20 %): not a tight loop.
  EXPECT_GE(std::chrono::steady_clock::now() - started, 220ms);
}

TEST_F(KubernetesReflector, ExpiredContinueTokenRestartsTheList) {
  for (int i = 0; i < 6; ++i) server->upsert("services", service("s" + std::to_string(i)));
  bool expired = false;
  // Between page 1 and page 2 (the sink runs on the reflector's thread, between its requests),
  // the server forgets the continue token and an object of page 3 disappears.
  sink.on_listed = [&](const std::string&) {
    if (!expired && sink.objects.size() == 2) {
      expired = true;
      server->expire_continue_tokens();
      server->erase("services", "default", "s5");
    }
  };
  auto options = fast_options();
  options.page_size = 2;
  start(k8s::resources::services(), options);
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }));
  EXPECT_EQ(sink.begins, 2);  // the list started over
  EXPECT_EQ(sink.keys().size(), 5u);
  EXPECT_EQ(sink.keys().count("default/s5"), 0u);
  const auto status = reflector->status();
  EXPECT_EQ(status.relists, 1u);
  EXPECT_EQ(status.errors.at("gone"), 1u);
  const auto lists = list_requests();
  ASSERT_GE(lists.size(), 4u);
  EXPECT_EQ(lists[1].status, 410u);
  EXPECT_EQ(param(lists[2].target, "continue"), "");  // from the start, not the expired token
}

TEST_F(KubernetesReflector, StalledWatchIsResumedFromTheLastVersion) {
  server->upsert("services", service("a"));
  auto options = fast_options();
  options.stall_timeout = 300ms;
  start(k8s::resources::services(), options);
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  server->upsert("services", service("b"));
  const std::string b_rv = std::to_string(server->resource_version());
  ASSERT_TRUE(sink.wait([&] { return sink.count_in_log("ADDED default/b") == 1; }));
  server->stall_watches(true);
  const auto stalled_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_status([](const k8s::ReflectorStatus& s) { return s.errors.count("stalled") > 0; }, 2s));
  EXPECT_LT(std::chrono::steady_clock::now() - stalled_at, 1500ms);
  ASSERT_TRUE(server->wait_for_requests([](const auto& r) {
    return std::count_if(r.begin(), r.end(), [](const auto& x) { return x.watch; }) >= 2;
  }, 2s));
  EXPECT_EQ(param(watch_requests()[1].target, "resourceVersion"), b_rv);
  server->stall_watches(false);
  server->upsert("services", service("c"));
  ASSERT_TRUE(sink.wait([&] { return sink.count_in_log("ADDED default/c") == 1; }));
  EXPECT_EQ(list_requests().size(), 1u);
  EXPECT_GE(reflector->status().watch_restarts, 1u);
  EXPECT_EQ(sink.count_in_log("ADDED default/b"), 1u);
}

TEST_F(KubernetesReflector, StreamCutMidLineDropsThePartialLine) {
  server->upsert("services", service("a"));
  start(k8s::resources::services());
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  // An event is queued, then the stream carries half of its line and drops.
  server->stall_watches(true);
  server->upsert("services", service("half"));
  server->cut_streams();
  server->stall_watches(false);
  ASSERT_TRUE(sink.wait([&] { return sink.count_in_log("ADDED default/half") == 1; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(sink.count_in_log("ADDED default/half"), 1u);  // once, from the resumed watch
  const auto status = reflector->status();
  EXPECT_EQ(status.errors.count("decode"), 0u);  // the half line was never parsed
  EXPECT_GE(status.watch_restarts, 1u);
  EXPECT_EQ(status.lists, 1u);
}

TEST_F(KubernetesReflector, EventsSurviveAnyChunkFraming) {
  start(k8s::resources::services());
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  server->set_chunk_mode(dsproxy::fake_api::ChunkMode::split);
  for (int i = 0; i < 5; ++i) server->upsert("services", service("split-" + std::to_string(i)));
  server->stall_watches(true);
  server->set_chunk_mode(dsproxy::fake_api::ChunkMode::coalesced);
  for (int i = 0; i < 5; ++i) server->upsert("services", service("coalesced-" + std::to_string(i)));
  server->stall_watches(false);
  ASSERT_TRUE(sink.wait([&] { return sink.keys().size() == 10; }));
  EXPECT_TRUE(reflector->status().errors.empty());
}

TEST_F(KubernetesReflector, TooManyRequestsWaitsRetryAfter) {
  server->upsert("services", service("a"));
  FailOptions o;
  o.retry_after = 1;
  server->fail_next(1, 429, o);
  const auto started = std::chrono::steady_clock::now();
  start(k8s::resources::services());
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }, 5s));
  // The backoff alone would have retried after ~20 ms.
  EXPECT_GE(std::chrono::steady_clock::now() - started, 900ms);
  EXPECT_EQ(reflector->status().errors.at("http_429"), 1u);
}

TEST_F(KubernetesReflector, ServerErrorsBackOffExponentiallyThenSucceed) {
  server->upsert("services", service("a"));
  server->fail_next(3, 500);
  auto options = fast_options();
  options.backoff = k8s::BackoffPolicy{100ms, 10s, 2.0, 0.2};
  const auto started = std::chrono::steady_clock::now();
  start(k8s::resources::services(), options);
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }, 5s));
  // 100 + 200 + 400 ms, each -20 % at worst: a fixed delay would be done in 240 ms.
  EXPECT_GE(std::chrono::steady_clock::now() - started, 560ms);
  EXPECT_EQ(reflector->status().errors.at("http_5xx"), 3u);
  EXPECT_EQ(list_requests().size(), 4u);
  // A success resets the backoff: the next failure waits the initial delay again.
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  server->fail_next(1, 503, FailOptions{});
  const auto cut_at = std::chrono::steady_clock::now();
  server->close_connections();
  ASSERT_TRUE(server->wait_for_requests([](const auto& r) {
    return std::count_if(r.begin(), r.end(), [](const auto& x) { return x.watch && x.status == 200; }) >= 2;
  }, 5s));
  EXPECT_LT(std::chrono::steady_clock::now() - cut_at, 400ms);  // not 800 ms, the next doubling
}

TEST_F(KubernetesReflector, UnauthorizedRereadsTheTokenAndRotationNeedsNoRestart) {
  server->upsert("services", service("a"));
  server->fail_next(1, 401);
  start(k8s::resources::services());
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }));
  EXPECT_EQ(reflector->status().errors.at("http_401"), 1u);
  EXPECT_GE(config_.token->reads(), 2u);  // the 401 forced a read of the file
  EXPECT_NE(reflector->status().last_error.find("rejected the bearer token from"), std::string::npos);
  EXPECT_EQ(reflector->status().last_error.find(server->token()), std::string::npos);

  // Rotation, as the kubelet does it: the file is replaced, the old token refused. The open watch
  // is closed; the next request carries the new token without a 401 first.
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  server->clear_requests();
  server->set_token("rotated-token-" + std::to_string(::getpid()));
  server->close_connections();
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  for (const auto& r : server->requests()) EXPECT_TRUE(r.authorized) << r.target;
  server->upsert("services", service("after-rotation"));
  ASSERT_TRUE(sink.wait([&] { return sink.count_in_log("ADDED default/after-rotation") == 1; }));
}

TEST_F(KubernetesReflector, ForbiddenNamesTheMissingRbacRule) {
  FailOptions o;
  o.path_prefix = "/apis/discovery.k8s.io";
  server->fail_next(2, 403, o);
  start(k8s::resources::endpoint_slices());
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }));
  const auto status = reflector->status();
  EXPECT_EQ(status.errors.at("http_403"), 2u);
  EXPECT_NE(status.last_error.find("kubernetes: list endpointslices.discovery.k8s.io: 403 Forbidden — dsproxy's "
                                   "service account needs: apiGroups [\"discovery.k8s.io\"] resources "
                                   "[\"endpointslices\"] verbs [\"get\",\"list\",\"watch\"] (see deploy/)"),
            std::string::npos)
      << status.last_error;
}

TEST_F(KubernetesReflector, UntrustedCertificatesAreRefused) {
  server->upsert("services", service("a"));
  // The kubeconfig trusts a CA that did not sign the server's certificate.
  start(k8s::resources::services(), fast_options(), k8s::kubeconfig_config(server->wrong_ca_kubeconfig_file().string()));
  ASSERT_TRUE(wait_status([](const k8s::ReflectorStatus& s) { return s.errors.count("tls") && s.errors.at("tls") >= 2; }));
  EXPECT_FALSE(reflector->synced());
  EXPECT_NE(reflector->status().last_error.find("certificate verify failed"), std::string::npos)
      << reflector->status().last_error;
  EXPECT_TRUE(list_requests().empty());  // no request was sent over the unverified connection
  EXPECT_EQ(sink.begins, 0);
}

TEST_F(KubernetesReflector, TheServerNameIsVerifiedNotJustTheChain) {
  server->upsert("services", service("a"));
  auto cfg = config();
  cfg.tls_server_name = "api.example.com";  // the certificate is for 127.0.0.1, ::1 and localhost
  start(k8s::resources::services(), fast_options(), cfg);
  ASSERT_TRUE(wait_status([](const k8s::ReflectorStatus& s) { return s.errors.count("tls") > 0; }));
  EXPECT_FALSE(reflector->synced());
  stop();
  // The same CA and the name the certificate carries: accepted (SNI and host-name check).
  MirrorSink other;
  cfg.tls_server_name = "localhost";
  asio::io_context io2;
  k8s::Reflector r(io2.get_executor(), cfg, k8s::resources::services(), other, fast_options());
  r.start();
  std::thread t([&] { io2.run_for(5s); });
  EXPECT_TRUE(other.wait([&] { return other.ends == 1; }));
  asio::post(io2, [&] { r.stop(); });
  t.join();
}

TEST_F(KubernetesReflector, InClusterOverIpv6) {
  server->stop();
  start_server("::1");
  server->upsert("services", service("v6"));
  const std::string port = std::to_string(server->port());
  auto env = [&](const char* name) -> const char* {
    if (std::string_view(name) == "KUBERNETES_SERVICE_HOST") return "::1";
    if (std::string_view(name) == "KUBERNETES_SERVICE_PORT") return port.c_str();
    return nullptr;
  };
  auto cfg = k8s::in_cluster_config(server->service_account_dir().string(), env);
  EXPECT_EQ(cfg.authority(), "[::1]:" + port);
  start(k8s::resources::services(), fast_options(), cfg);
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }));
  EXPECT_EQ(sink.keys(), (std::set<std::string>{"default/v6"}));
}

TEST_F(KubernetesReflector, PodsOfThisNodeOnly) {
  auto pod = [](const std::string& name, const std::string& node) {
    return json::object{{"metadata", json::object{{"name", name}, {"namespace", "default"}}},
                        {"spec", json::object{{"nodeName", node}}}};
  };
  server->upsert("pods", pod("mine", "node-1"));
  server->upsert("pods", pod("theirs", "node-2"));
  start(k8s::resources::pods("node-1"));
  ASSERT_TRUE(sink.wait([&] { return sink.ends == 1; }));
  EXPECT_EQ(sink.keys(), (std::set<std::string>{"default/mine"}));
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  EXPECT_EQ(param(watch_requests()[0].target, "fieldSelector"), "spec.nodeName%3Dnode-1");
  server->upsert("pods", pod("other", "node-2"));
  server->upsert("pods", pod("second", "node-1"));
  ASSERT_TRUE(sink.wait([&] { return sink.keys().count("default/second") == 1; }));
  EXPECT_EQ(sink.keys().count("default/other"), 0u);
}

TEST_F(KubernetesReflector, NoSinkCallAfterStop) {
  start(k8s::resources::services());
  ASSERT_TRUE(server->wait_for_watches(1, 5s));
  stop();
  const auto log_size = sink.log.size();
  server->upsert("services", service("late"));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(sink.log.size(), log_size);
}

// The client on its own: connection reuse and the body bound.
TEST_F(KubernetesReflector, ClientReusesItsConnectionAndBoundsTheBody) {
  for (int i = 0; i < 20; ++i) server->upsert("services", service("s" + std::to_string(i)));
  const auto cfg = config();
  k8s::ApiClientOptions small;
  small.max_body_bytes = 1000;
  k8s::ApiClient client(io.get_executor(), cfg);
  k8s::ApiClient bounded(io.get_executor(), cfg, small);
  std::vector<k8s::ApiResult> results;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    // Named targets: no class temporaries inside a co_await expression (GCC 12).
    const std::string page = "/api/v1/services?limit=5";
    const std::string all = "/api/v1/services";
    for (int i = 0; i < 3; ++i) {
      k8s::ApiResult r = co_await client.get(page);
      results.push_back(std::move(r));
    }
    k8s::ApiResult r = co_await bounded.get(all);
    results.push_back(std::move(r));
    // The server drops the idle kept-alive connection: the next request notices and reconnects
    // once instead of failing.
    server->close_connections();
    k8s::ApiResult again = co_await client.get(page);
    results.push_back(std::move(again));
  }, asio::detached);
  io.run_for(10s);
  ASSERT_EQ(results.size(), 5u);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(results[i].ok()) << results[i].describe();
  EXPECT_EQ(results[3].error, k8s::ApiErrorKind::too_large) << results[3].describe();
  EXPECT_TRUE(results[4].ok()) << results[4].describe();
  EXPECT_EQ(client.connections_opened(), 2u);
}
