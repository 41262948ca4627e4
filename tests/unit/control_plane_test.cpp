// The daemon's control plane with scripted sources: nothing is served before every source is
// synced, changes are coalesced into few builds, and a slow build never holds up the DNS proxy
// (which only reads the SnapshotStore) on another thread.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <future>
#include <thread>

#include "config/k8s_decoder.hpp"
#include "daemon/control_plane.hpp"
#include "resolver/dns_message.hpp"
#include "resolver/dns_proxy.hpp"

namespace dsproxy::daemon {
namespace control_plane_test {  // named: unity builds put several test files in one translation unit

namespace asio = boost::asio;
using namespace std::chrono_literals;

// A source whose deliveries the test scripts; every sink call is made on the control-plane thread.
class ScriptedSource final : public sources::ConfigSource {
 public:
  ScriptedSource(ControlPlane& cp, std::string name, config::ClusterObjects initial, bool sync_at_start = true)
      : cp_(cp), name_(std::move(name)), initial_(std::move(initial)), sync_at_start_(sync_at_start) {}
  std::string name() const override { return name_; }
  void start() override {
    for (auto& s : initial_.services) cp_.upsert(*this, s);
    for (auto& s : initial_.pods) cp_.upsert(*this, s);
    for (auto& s : initial_.endpoint_slices) cp_.upsert(*this, s);
    if (sync_at_start_) say_synced();
  }
  void stop() override {}
  void resync(std::string_view) override {}
  bool synced() const override { return synced_; }
  boost::json::object status() const override { return {{"type", "scripted"}, {"synced", synced()}}; }

  void say_synced() {
    synced_ = true;
    cp_.synced(*this);
  }
  // Runs `f` on the control-plane thread and waits for it.
  void on_thread(std::function<void()> f) {
    std::promise<void> done;
    asio::post(cp_.io(), [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

 private:
  ControlPlane& cp_;
  std::string name_;
  config::ClusterObjects initial_;
  bool sync_at_start_;
  std::atomic<bool> synced_{false};
};

config::Service service(const std::string& ns, const std::string& name, const char* ip) {
  config::Service s;
  s.ns = ns;
  s.name = name;
  s.cluster_ips = {*net::IpAddress::parse(ip)};
  s.ip_families = {net::Family::v4};
  s.ports = {{.name = "", .port = 80, .target_port = std::uint16_t{8080}}};
  return s;
}

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// Every command succeeds, and a rule asked about (-C) or deleted (-D) is never there, as on a
// node with nothing of ours; or, with `fail`, every command fails.
struct NoRunner : redirect::CommandRunner {
  redirect::CommandResult run(const redirect::Command& c) override {
    calls.fetch_add(1);
    if (fail.load()) return {4, "", "denied\n"};
    for (const auto& a : c.argv)
      if (a == "-C" || a == "-D") return {1, "", ""};
    return {};
  }
  std::atomic<int> calls{0};
  std::atomic<bool> fail{false};
};

class ControlPlaneTest : public ::testing::Test {
 protected:
  void make(ControlPlaneOptions options = {}) {
    options.snapshot.node_name = "kind-worker";
    cp = std::make_unique<ControlPlane>(std::move(options), store, runner,
                                        ControlPlane::Callbacks{.ready = [this] { ++ready_calls; },
                                                                .fatal = [this](int code) { fatal_code = code; }});
  }
  void TearDown() override {
    if (cp) cp->stop();
  }

  snapshot::SnapshotStore store;
  NoRunner runner;
  std::unique_ptr<ControlPlane> cp;
  std::atomic<int> ready_calls{0};
  std::atomic<int> fatal_code{0};
};

TEST_F(ControlPlaneTest, NothingIsPublishedUntilEverySourceIsSynced) {
  make();
  config::ClusterObjects a;
  a.services.push_back(service("demo", "web", "10.96.0.10"));
  auto first = std::make_unique<ScriptedSource>(*cp, "a", a);
  auto second = std::make_unique<ScriptedSource>(*cp, "b", config::ClusterObjects{}, false);
  auto* second_ptr = second.get();
  cp->add_source(std::move(first));
  cp->add_source(std::move(second));
  cp->start();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(store.generation(), 0u);
  EXPECT_FALSE(cp->synced());
  EXPECT_EQ(ready_calls.load(), 0);
  second_ptr->on_thread([&] { second_ptr->say_synced(); });
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  EXPECT_EQ(ready_calls.load(), 1);
  EXPECT_EQ(store.generation(), 1u);
  EXPECT_NE(store.current()->find_cluster({*net::IpAddress::parse("10.96.0.10"), 80}), nullptr);
  EXPECT_EQ(fatal_code.load(), 0);
}

TEST_F(ControlPlaneTest, ABurstOfChangesIsOneBuild) {
  ControlPlaneOptions options;
  options.coalesce = 50ms;
  make(options);
  auto source = std::make_unique<ScriptedSource>(*cp, "a", config::ClusterObjects{});
  auto* s = source.get();
  cp->add_source(std::move(source));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  const auto builds = cp->builds();
  s->on_thread([&] {
    for (int i = 0; i < 1000; ++i) {
      const std::string ip = "10.96." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1);
      cp->upsert(*s, service("demo", "svc-" + std::to_string(i), ip.c_str()));
    }
    cp->erase(*s, sources::ObjectKind::service, "demo", "svc-0");
  });
  ASSERT_TRUE(wait_for([&] { return cp->builds() > builds; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(cp->builds(), builds + 1);
  EXPECT_EQ(store.current()->clusters().size(), 999u);
  EXPECT_EQ(store.current()->find_cluster({*net::IpAddress::parse("10.96.0.1"), 80}), nullptr);
  EXPECT_NE(store.current()->find_cluster({*net::IpAddress::parse("10.96.3.250"), 80}), nullptr);
}

// One Service the snapshot refuses (a bad dsproxy.io/ annotation) is skipped with its last good
// version kept, and does not fail the builds of everything else.
TEST_F(ControlPlaneTest, ABadServiceIsSkippedNotEveryBuild) {
  make();
  auto source = std::make_unique<ScriptedSource>(*cp, "a", config::ClusterObjects{});
  auto* s = source.get();
  cp->add_source(std::move(source));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  s->on_thread([&] { cp->upsert(*s, service("demo", "web", "10.96.0.10")); });
  ASSERT_TRUE(wait_for([&] { return store.current()->clusters().size() == 1; }));
  s->on_thread([&] {
    auto bad = service("demo", "web", "10.96.0.99");
    bad.annotations["dsproxy.io/family-fallback"] = "sideways";
    cp->upsert(*s, bad);
    cp->upsert(*s, service("demo", "api", "10.96.0.11"));
  });
  ASSERT_TRUE(wait_for([&] { return store.current()->clusters().size() == 2; }));
  EXPECT_EQ(cp->build_failures(), 0u);
  EXPECT_NE(store.current()->find_cluster({*net::IpAddress::parse("10.96.0.10"), 80}), nullptr) << "last good web";
  EXPECT_EQ(store.current()->find_cluster({*net::IpAddress::parse("10.96.0.99"), 80}), nullptr);
}

// A whole file with such a Service is refused whole, as a reload always was.
TEST_F(ControlPlaneTest, ABadFileKeepsTheLastSnapshot) {
  make();
  auto source = std::make_unique<ScriptedSource>(*cp, "a", config::ClusterObjects{});
  auto* s = source.get();
  cp->add_source(std::move(source));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  const auto generation = store.generation();
  s->on_thread([&] {
    config::ClusterObjects file;
    file.services.push_back(service("demo", "web", "10.96.0.10"));
    file.services.back().annotations["dsproxy.io/family-fallback"] = "sideways";
    cp->replace_all(*s, std::move(file));
  });
  ASSERT_TRUE(wait_for([&] { return cp->build_failures() == 1; }));
  EXPECT_EQ(store.generation(), generation);
}

// While a batch (a LIST) is open, changes wait for its end: one build for the lot, even when
// the LIST takes longer than the coalescing delay.
TEST_F(ControlPlaneTest, AnOpenBatchHoldsTheBuildUntilItEnds) {
  ControlPlaneOptions options;
  options.coalesce = 5ms;
  make(options);
  auto source = std::make_unique<ScriptedSource>(*cp, "a", config::ClusterObjects{});
  auto* s = source.get();
  cp->add_source(std::move(source));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  const auto builds = cp->builds();
  s->on_thread([&] {
    cp->begin_batch(*s);
    cp->upsert(*s, service("demo", "a", "10.96.0.10"));
  });
  std::this_thread::sleep_for(100ms);  // twenty coalescing delays
  EXPECT_EQ(cp->builds(), builds);
  s->on_thread([&] {
    cp->upsert(*s, service("demo", "b", "10.96.0.11"));
    cp->end_batch(*s);
  });
  ASSERT_TRUE(wait_for([&] { return cp->builds() > builds; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(cp->builds(), builds + 1);
  EXPECT_EQ(store.current()->clusters().size(), 2u);
}

// A batch never closed (a LIST that failed midway and is not retried yet) holds for a bounded time.
TEST_F(ControlPlaneTest, ABatchLeftOpenHoldsOnlyForAWhile) {
  ControlPlaneOptions options;
  options.max_batch_hold = 200ms;
  make(options);
  auto source = std::make_unique<ScriptedSource>(*cp, "a", config::ClusterObjects{});
  auto* s = source.get();
  cp->add_source(std::move(source));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  s->on_thread([&] {
    cp->begin_batch(*s);
    cp->upsert(*s, service("demo", "a", "10.96.0.10"));
  });
  EXPECT_TRUE(wait_for([&] { return store.current()->clusters().size() == 1; }, 3s));
}

TEST_F(ControlPlaneTest, FailingSourceIsFatal) {
  make();
  struct Failing final : sources::ConfigSource {
    explicit Failing(ControlPlane& cp) : cp(cp) {}
    ControlPlane& cp;
    std::string name() const override { return "failing"; }
    void start() override { cp.failed(*this, "no file", 2); }
    void stop() override {}
    void resync(std::string_view) override {}
    bool synced() const override { return false; }
    boost::json::object status() const override { return {}; }
  };
  cp->add_source(std::make_unique<Failing>(*cp));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return fatal_code.load() == 2; }));
  EXPECT_FALSE(cp->synced());
}

// One UDP DNS question to 127.0.0.1:port; the answer's addresses, nullopt without an answer in 3 s.
std::optional<resolver::MessageInfo> ask(std::uint16_t port, const char* name) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  timeval tv{3, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto query = resolver::build_query(1, resolver::Name::from_text(name).value(), resolver::rrtype::A);
  ::sendto(fd, query.data(), query.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a);
  resolver::Bytes buf(4096);
  const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  ::close(fd);
  if (n <= 0) return std::nullopt;
  buf.resize(static_cast<std::size_t>(n));
  return resolver::parse_message(buf).info;
}

// Issue 10: a reload took 13.3 s and the pods' DNS timed out meanwhile. Here the control plane's
// build sleeps 4 s (the test hook) while a DNS proxy on its own thread, as the daemon's front
// thread runs it, answers from the snapshot in force. Asserted: an answer at all, within a
// generous 2 s, while the build is still running; no latency figure.
TEST_F(ControlPlaneTest, DnsAnswersWhileABuildIsSlow) {
  ControlPlaneOptions options;
  options.test_build_delay = 4s;
  make(options);
  auto source = std::make_unique<ScriptedSource>(
      *cp, "a", config::load_objects_file(std::string(DSPROXY_SOURCE_DIR) + "/config/tcp-echo-experiment.yaml"));
  auto* s = source.get();
  cp->add_source(std::move(source));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));  // the first build does not sleep

  asio::io_context front;
  resolver::DnsProxyOptions dns;
  dns.port = 0;
  dns.bind = {"127.0.0.1"};
  dns.transparent = false;
  dns.mark = 0;
  dns.upstreams = {"127.0.0.1:9"};  // never asked: only cluster names here
  resolver::DnsProxy proxy(front, dns, store);
  proxy.start();
  std::thread front_thread([&] { front.run(); });

  const auto builds = cp->builds();
  const auto generation = store.generation();
  s->on_thread([&] { cp->upsert(*s, service("late", "web", "10.96.50.50")); });
  std::this_thread::sleep_for(200ms);  // the build has begun sleeping

  const auto asked = std::chrono::steady_clock::now();
  const auto answer = ask(proxy.bound_port(), "tcp-echo.ipv4.svc.cluster.local");
  const auto took = std::chrono::steady_clock::now() - asked;
  const auto late = ask(proxy.bound_port(), "web.late.svc.cluster.local");
  EXPECT_EQ(cp->builds(), builds) << "the build was meant to be still running";
  EXPECT_EQ(store.generation(), generation);
  ASSERT_TRUE(answer) << "no DNS answer while the control plane was building";
  EXPECT_LT(took, 2s);
  EXPECT_EQ(answer->addresses, std::vector<net::IpAddress>{*net::IpAddress::parse("10.96.104.229")});
  ASSERT_TRUE(late);
  EXPECT_EQ(late->header.rcode(), 3) << "answered from the snapshot in force, before the build ends";

  ASSERT_TRUE(wait_for([&] { return cp->builds() > builds; }, 10s));
  const auto after = ask(proxy.bound_port(), "web.late.svc.cluster.local");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->addresses, std::vector<net::IpAddress>{*net::IpAddress::parse("10.96.50.50")});

  asio::post(front, [&] {
    proxy.stop();
    front.stop();
  });
  front_thread.join();
}

// The drain released the capture (which stops the control plane), then a successor asks for the
// rules: the answer must come at once, on the caller's thread, since nothing runs the control
// plane's io_context any more. Without it the successor times out and installs anyway, and the
// old owner, never superseded, removes the successor's rules at exit.
TEST_F(ControlPlaneTest, RelinquishAfterTheReleaseAnswersAndRemovesNothing) {
  ControlPlaneOptions options;
  options.redirect = true;
  make(options);
  config::ClusterObjects a;
  a.services.push_back(service("demo", "web", "10.96.0.10"));
  cp->add_source(std::make_unique<ScriptedSource>(*cp, "a", a));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  ASSERT_EQ(fatal_code.load(), 0);
  cp->stop();
  EXPECT_TRUE(cp->release_capture(true));
  bool answered = false;
  cp->relinquish_rules([&] { answered = true; });
  EXPECT_TRUE(answered) << "the successor's takeover is never answered";
  const int before = runner.calls.load();
  cp->remove_rules(false);  // the old owner's exit, superseded
  EXPECT_EQ(runner.calls.load(), before) << "the successor's rules were touched";
}

// A release that fails (here every command) is reported, so the daemon removes every rule at once
// instead of closing its listeners behind a capture that is still in place.
TEST_F(ControlPlaneTest, AFailedCaptureReleaseIsReported) {
  ControlPlaneOptions options;
  options.redirect = true;
  make(options);
  cp->add_source(std::make_unique<ScriptedSource>(*cp, "a", config::ClusterObjects{}));
  cp->start();
  ASSERT_TRUE(wait_for([&] { return cp->synced(); }));
  cp->stop();
  runner.fail = true;
  EXPECT_FALSE(cp->release_capture(true));
}

}  // namespace control_plane_test
}  // namespace dsproxy::daemon
