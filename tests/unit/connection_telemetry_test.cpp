// Access-log formatting (text and JSON) and the Istio TCP metrics written from connection records.

#include "proxy/connection_telemetry.hpp"

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <set>
#include <sstream>

#include "admin/metrics_exporter.hpp"

namespace dsproxy::proxy {
namespace connection_telemetry_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

ConnectionRecord sample_record() {
  ConnectionRecord r;
  r.direction = Direction::outbound;
  r.start_wall = std::chrono::system_clock::time_point(std::chrono::milliseconds(1'700'000'000'123));
  r.source = *net::SocketAddress::parse("10.244.0.5:41234");
  r.destination = *net::SocketAddress::parse("[fd00:10:96::f9fc]:9000");
  r.source_workload = std::make_shared<WorkloadInfo>(WorkloadInfo{"sleep-5f7d-abcde", "default", "sleep", "sleep", "latest"});
  r.destination_workload =
      std::make_shared<WorkloadInfo>(WorkloadInfo{"tcp-echo-6c9-xyz12", "dual-stack", "tcp-echo", "tcp-echo", "v1"});
  r.service = std::make_shared<ServiceInfo>(ServiceInfo{"tcp-echo.dual-stack.svc.cluster.local", "tcp-echo", "dual-stack"});
  r.endpoint = *net::SocketAddress::parse("10.244.0.26:9000");
  r.fell_back = true;
  r.retries = 1;
  r.connected = true;
  r.bytes_to_upstream = 10;
  r.bytes_to_downstream = 16;
  r.duration = 3ms;
  r.reason = EndReason::completed;
  return r;
}

ConnectionRecord c_record_for_text() {
  auto r = sample_record();
  r.protocol = RequestProtocol::hbone;
  r.source_principal = std::make_shared<const std::string>("spiffe://x/ns/a/sa/b");
  r.policy = "a/p";
  r.reason = EndReason::denied_by_policy;
  return r;
}

TEST(AccessLogTest, TextHasZtunnelFieldsAndOurs) {
  EXPECT_EQ(format_access_log_text(sample_record()),
            "connection complete src.addr=10.244.0.5:41234 src.workload=sleep-5f7d-abcde src.namespace=default "
            "dst.addr=[fd00:10:96::f9fc]:9000 dst.service=tcp-echo.dual-stack.svc.cluster.local "
            "dst.workload=tcp-echo-6c9-xyz12 dst.namespace=dual-stack direction=outbound endpoint=10.244.0.26:9000 "
            "family=IPv4 fallback=true happy_eyeballs_other_family=false retries=1 bytes_sent=10 bytes_recv=16 "
            "duration=3ms reason=completed");
  auto r = sample_record();
  r.direction = Direction::inbound;  // bytes from the server pod's side, as ztunnel logs them
  r.reason = EndReason::upstream_reset;
  const auto line = format_access_log_text(r);
  EXPECT_NE(line.find("bytes_sent=16 bytes_recv=10"), std::string::npos) << line;
  EXPECT_NE(line.find("reason=upstream_reset error=upstream_reset"), std::string::npos) << line;
}

TEST(AccessLogTest, AddressesAreFormattedAsToStringDoes) {
  AddressText buf;
  std::vector<std::string> samples = {"10.244.0.5:41234", "0.0.0.0:1", "255.255.255.255:65535", "[fd00:10:96::f9fc]:9000",
                                      "[::1]:80", "[::]:0", "[fe80::1:0:0:1]:7", "[1:0:0:2:0:0:0:3]:8",
                                      "[2001:db8::]:53", "[::ffff:0:1]:9", "[1:2:3:4:5:6:7:8]:10", "[0:0:1::]:11"};
  std::uint64_t x = 88172645463325252ull;  // xorshift: random addresses with zero runs
  for (int i = 0; i < 2000; ++i) {
    std::array<std::uint8_t, 16> b{};
    for (int k = 0; k < 16; k += 2) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      if (x % 3) b[k] = static_cast<std::uint8_t>(x >> 8), b[k + 1] = static_cast<std::uint8_t>(x >> 16);
    }
    samples.push_back(net::SocketAddress{net::IpAddress::v6(b), static_cast<std::uint16_t>(x)}.to_string());
    samples.push_back(net::SocketAddress{net::IpAddress::v4({b[0], b[1], b[2], b[3]}), static_cast<std::uint16_t>(x >> 20)}.to_string());
  }
  for (const auto& s : samples) {
    const auto a = net::SocketAddress::parse(s, true);
    ASSERT_TRUE(a) << s;
    EXPECT_EQ(format_address(*a, buf), a->to_string());
  }
  // A log line takes the address text from a per-thread cache: twice over, so that the second
  // pass reads entries the first wrote (and others that collided since).
  for (int pass = 0; pass < 2; ++pass)
    for (const auto& s : samples) {
      ConnectionRecord r;
      r.source = *net::SocketAddress::parse(s, true);
      const auto line = format_access_log_text(r);
      EXPECT_NE(line.find("src.addr=" + r.source.to_string() + " "), std::string::npos) << line;
    }
}

TEST(AccessLogTest, TextWithoutNamesOrEndpoint) {
  ConnectionRecord r;
  r.source = *net::SocketAddress::parse("10.0.0.1:1");
  r.destination = *net::SocketAddress::parse("10.96.0.1:80");
  r.reason = EndReason::rejected_no_endpoint_for_family;
  EXPECT_EQ(format_access_log_text(r),
            "connection complete src.addr=10.0.0.1:1 dst.addr=10.96.0.1:80 direction=outbound retries=0 bytes_sent=0 "
            "bytes_recv=0 duration=0ms reason=rejected_no_endpoint_for_family error=rejected_no_endpoint_for_family");
}

TEST(AccessLogTest, JsonIsOneObjectWithTheSameFields) {
  const auto v = boost::json::parse(format_access_log_json(sample_record())).as_object();
  EXPECT_EQ(v.at("timestamp").as_string(), "2023-11-14T22:13:20.126Z");  // the close: start + 3 ms
  EXPECT_EQ(v.at("src.addr").as_string(), "10.244.0.5:41234");
  EXPECT_EQ(v.at("src.workload").as_string(), "sleep-5f7d-abcde");
  EXPECT_EQ(v.at("dst.addr").as_string(), "[fd00:10:96::f9fc]:9000");
  EXPECT_EQ(v.at("dst.service").as_string(), "tcp-echo.dual-stack.svc.cluster.local");
  EXPECT_EQ(v.at("dst.namespace").as_string(), "dual-stack");
  EXPECT_EQ(v.at("endpoint").as_string(), "10.244.0.26:9000");
  EXPECT_EQ(v.at("family").as_string(), "IPv4");
  EXPECT_EQ(v.at("fallback").as_bool(), true);
  EXPECT_EQ(v.at("bytes_sent").to_number<std::uint64_t>(), 10u);
  EXPECT_EQ(v.at("bytes_recv").to_number<std::uint64_t>(), 16u);
  EXPECT_EQ(v.at("duration").as_string(), "3ms");
  EXPECT_EQ(v.at("reason").as_string(), "completed");
  EXPECT_FALSE(v.contains("error"));
}

std::map<std::string, std::string> labels_of(const prometheus::ClientMetric& m) {
  std::map<std::string, std::string> out;
  for (const auto& l : m.label) out[l.name] = l.value;
  return out;
}

const prometheus::MetricFamily& find(const std::vector<prometheus::MetricFamily>& all, const std::string& name) {
  for (const auto& f : all)
    if (f.name == name) return f;
  throw std::runtime_error("no family " + name);
}

TEST(ConnectionTelemetryTest, WorkersSumIntoOneSeriesPerLabelSetAndLogOneLineEach) {
  std::ostringstream log;
  std::mutex log_mutex;
  ConnectionTelemetry t(2, {.access_log = AccessLogFormat::json, .metrics = true}, [&](std::string_view lines) -> bool {
    std::lock_guard lock(log_mutex);
    EXPECT_EQ(lines.back(), '\n');  // whole lines only
    log << lines;
    return true;
  });
  for (int w = 0; w < 2; ++w) {
    ConnectionResult c(t.sink(w), Direction::outbound, {}, {});
    c.record() = sample_record();
    c.mark_opened();
    c.finish(EndReason::completed);
  }
  {
    ConnectionResult failed(t.sink(1), Direction::outbound, {}, {});
    failed.record().service = sample_record().service;
    failed.finish(EndReason::connect_timeout);
  }
  const auto all = t.collect();
  const auto& opened = find(all, "istio_tcp_connections_opened_total");
  ASSERT_EQ(opened.metric.size(), 2u);  // the completed pair (two workers, one series), the failure
  bool saw_ok = false, saw_failed = false;
  for (const auto& m : opened.metric) {
    auto l = labels_of(m);
    EXPECT_EQ(l.size(), 23u);
    EXPECT_EQ(l["reporter"], "source");
    EXPECT_EQ(l["request_protocol"], "tcp");
    EXPECT_EQ(l["connection_security_policy"], "unknown");
    EXPECT_EQ(l["destination_service"], "tcp-echo.dual-stack.svc.cluster.local");
    EXPECT_EQ(l["destination_service_name"], "tcp-echo");
    EXPECT_EQ(l["destination_service_namespace"], "dual-stack");
    if (l["response_flags"] == "-") {
      saw_ok = true;
      EXPECT_EQ(m.counter.value, 2.0);
      EXPECT_EQ(l["source_workload"], "sleep");  // the workload, never the pod
      EXPECT_EQ(l["destination_workload"], "tcp-echo");
      EXPECT_EQ(l["destination_version"], "v1");
      EXPECT_EQ(l["destination_cluster"], "Kubernetes");
    } else {
      saw_failed = true;
      EXPECT_EQ(l["response_flags"], "CONNECT");
      EXPECT_EQ(l["source_workload"], "unknown");
      EXPECT_EQ(m.counter.value, 1.0);
    }
  }
  EXPECT_TRUE(saw_ok && saw_failed);
  const auto& received = find(all, "istio_tcp_received_bytes_total");
  const auto& sent = find(all, "istio_tcp_sent_bytes_total");
  double rx = 0, tx = 0;
  for (const auto& m : received.metric) rx += m.counter.value;
  for (const auto& m : sent.metric) tx += m.counter.value;
  EXPECT_EQ(rx, 20.0);  // request direction, 10 B from each of the two
  EXPECT_EQ(tx, 32.0);
  const auto& reasons = find(all, "dsproxy_connections_total");
  for (const auto& m : reasons.metric) {
    auto l = labels_of(m);
    const double want = l["reason"] == "completed" ? 2 : l["reason"] == "connect_timeout" ? 1 : 0;
    EXPECT_EQ(m.counter.value, want) << l["reason"];
  }
  // One line per connection.
  t.flush();
  std::istringstream lines(log.str());
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) EXPECT_NO_THROW(boost::json::parse(line)) << line;
  EXPECT_EQ(n, 3);
}

TEST(ConnectionTelemetryTest, LabelSetsPastTheCapGoToOneOverflowSeries) {
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::off, .metrics = true});
  const std::size_t n = ConnectionTelemetry::kMaxSeriesPerWorker + 10;
  for (std::size_t i = 0; i < n; ++i) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    std::string host = std::to_string(i);  // (GCC 12 warns, wrongly, about "s" + to_string(i))
    host += ".ns.svc";
    c.record().service = std::make_shared<ServiceInfo>(ServiceInfo{host, "s", "ns"});
    c.finish(EndReason::completed);
  }
  const auto all = t.collect();
  const auto& closed = find(all, "istio_tcp_connections_closed_total");
  EXPECT_EQ(closed.metric.size(), ConnectionTelemetry::kMaxSeriesPerWorker + 1);
  double overflow = -1;
  for (const auto& m : closed.metric)
    if (labels_of(m)["destination_service"] == "overflow") overflow = m.counter.value;
  EXPECT_EQ(overflow, 10.0);
  EXPECT_EQ(find(all, "dsproxy_metrics_series_overflow_total").metric.at(0).counter.value, 10.0);
}

// Series expiry: a label set that no open connection holds and whose counters have not moved for
// the expiry leaves the scrape and frees its cell; one held by an open connection stays however
// old; the overflow series expires like any other and a freed cell takes a new label set instead
// of the overflow.
TEST(ConnectionTelemetryTest, IdleSeriesExpireActiveOnesStayAndFreedCellsAreReused) {
  using namespace std::chrono_literals;
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::off, .metrics = true, .series_expiry = 10min});
  auto service = [](const std::string& host) { return std::make_shared<ServiceInfo>(ServiceInfo{host, "s", "ns"}); };
  auto hosts_in = [&]() {
    std::map<std::string, double> out;
    const auto all = t.collect();  // find() returns a reference into it
    for (const auto& m : find(all, "istio_tcp_connections_opened_total").metric)
      out[labels_of(m)["destination_service"]] = m.counter.value;
    return out;
  };
  const auto t0 = ConnectionTelemetry::Clock::now();
  {
    ConnectionResult idle(t.sink(0), Direction::outbound, {}, {});
    idle.record().service = service("idle.ns.svc");
    idle.finish(EndReason::completed);
  }
  auto active = std::make_unique<ConnectionResult>(t.sink(0), Direction::outbound, net::SocketAddress{},
                                                   net::SocketAddress{});
  active->record().service = service("active.ns.svc");
  active->mark_opened();
  EXPECT_EQ(t.expire_idle(0, t0), 0u);  // first sight: stamped, not judged
  EXPECT_EQ(t.expire_idle(0, t0 + 9min), 0u);
  EXPECT_EQ(hosts_in().count("idle.ns.svc"), 1u);
  // Touched again at 9 min: its ten minutes start over.
  {
    ConnectionResult again(t.sink(0), Direction::outbound, {}, {});
    again.record().service = service("idle.ns.svc");
    again.finish(EndReason::completed);
  }
  EXPECT_EQ(t.expire_idle(0, t0 + 10min), 0u);
  EXPECT_EQ(t.expire_idle(0, t0 + 19min), 0u);
  EXPECT_EQ(hosts_in().at("idle.ns.svc"), 2.0);
  EXPECT_EQ(t.expire_idle(0, t0 + 20min), 1u);
  auto now = hosts_in();
  EXPECT_EQ(now.count("idle.ns.svc"), 0u);
  EXPECT_EQ(now.count("active.ns.svc"), 1u);  // held by an open connection: stays, however old
  // Back after expiry: a fresh series, counting from 0 (Prometheus reads it as a counter reset).
  {
    ConnectionResult back(t.sink(0), Direction::outbound, {}, {});
    back.record().service = service("idle.ns.svc");
    back.finish(EndReason::completed);
  }
  EXPECT_EQ(hosts_in().at("idle.ns.svc"), 1.0);
  active.reset();  // closes: now it may expire too
  EXPECT_EQ(t.expire_idle(0, t0 + 21min), 0u);  // changed (closed) since the last look
  EXPECT_EQ(t.expire_idle(0, t0 + 40min), 2u);
  EXPECT_TRUE(hosts_in().empty());

  // Fill every cell, overflow once, let everything expire: the overflow series goes too, and
  // the freed cells take new label sets rather than the overflow.
  const std::size_t n = ConnectionTelemetry::kMaxSeriesPerWorker + 1;
  for (std::size_t i = 0; i < n; ++i) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    std::string host = std::to_string(i);
    host += ".ns.svc";
    c.record().service = service(host);
    c.finish(EndReason::completed);
  }
  EXPECT_EQ(hosts_in().count("overflow"), 1u);
  EXPECT_EQ(t.expire_idle(0, t0 + 41min), 0u);
  EXPECT_EQ(t.expire_idle(0, t0 + 51min), n - 1 + 1);  // every cell and the overflow series
  EXPECT_TRUE(hosts_in().empty());
  for (std::size_t i = 0; i < 3; ++i) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    c.record().service = service("new" + std::to_string(i));
    c.finish(EndReason::completed);
  }
  now = hosts_in();
  EXPECT_EQ(now.size(), 3u);
  EXPECT_EQ(now.count("overflow"), 0u);
  const auto all = t.collect();
  EXPECT_EQ(find(all, "dsproxy_metrics_series_overflow_total").metric.at(0).counter.value, 1.0);
}

// Expiry is per worker but the scrape sums a label set over the workers: a series idle on one
// worker and held on another must not lose the idle worker's share (the exported counter would go
// down: a reset to Prometheus). Once no worker holds it, it leaves the scrape for good.
TEST(ConnectionTelemetryTest, ASeriesExpiredOnOneWorkerKeepsItsShareWhileAnotherHoldsIt) {
  ConnectionTelemetry t(2, {.access_log = AccessLogFormat::off, .metrics = true, .series_expiry = 10min});
  const auto svc = std::make_shared<ServiceInfo>(ServiceInfo{"shared.ns.svc", "shared", "ns"});
  auto totals = [&] {
    std::map<std::string, double> out;
    const auto all = t.collect();
    for (const char* name : {"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                             "istio_tcp_received_bytes_total"})
      for (const auto& m : find(all, name).metric)
        if (labels_of(m)["destination_service"] == "shared.ns.svc") out[name] = m.counter.value;
    return out;
  };
  {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    c.record().service = svc;
    c.mark_opened();
    c.record().bytes_to_upstream = 7;
    c.finish(EndReason::completed);
  }
  auto held = std::make_unique<ConnectionResult>(t.sink(1), Direction::outbound, net::SocketAddress{},
                                                 net::SocketAddress{});
  held->record().service = svc;
  held->mark_opened();
  const auto before = totals();
  ASSERT_EQ(before.at("istio_tcp_connections_opened_total"), 2.0);
  ASSERT_EQ(before.at("istio_tcp_connections_closed_total"), 1.0);

  const auto t0 = ConnectionTelemetry::Clock::now();
  EXPECT_EQ(t.expire_idle(0, t0), 0u);
  EXPECT_EQ(t.expire_idle(1, t0), 0u);
  EXPECT_EQ(t.expire_idle(0, t0 + 10min), 1u);  // idle on worker 0
  EXPECT_EQ(t.expire_idle(1, t0 + 10min), 0u);  // held on worker 1
  EXPECT_EQ(totals(), before) << "worker 0's share went missing: the counters went down";
  EXPECT_EQ(totals(), before);  // and stays (a scrape keeps what is still held)

  held->record().bytes_to_upstream = 3;
  held.reset();  // closes on worker 1
  auto after = totals();
  EXPECT_EQ(after.at("istio_tcp_connections_closed_total"), 2.0);
  EXPECT_EQ(after.at("istio_tcp_received_bytes_total"), 10.0);
  EXPECT_EQ(t.expire_idle(1, t0 + 11min), 0u);
  EXPECT_EQ(t.expire_idle(1, t0 + 21min), 1u);
  EXPECT_TRUE(totals().empty()) << "expired everywhere: the label set leaves the scrape";
  // Back later: a fresh series (what Prometheus reads as a reset after a stale series), not the
  // old totals resurrected.
  {
    ConnectionResult c(t.sink(1), Direction::outbound, {}, {});
    c.record().service = svc;
    c.mark_opened();
    c.finish(EndReason::completed);
  }
  EXPECT_EQ(totals().at("istio_tcp_connections_opened_total"), 1.0);
}

// A label set that went to the overflow series for want of a cell gets a cell of its own once
// expiry frees one (its cache entry pointing to the overflow series is forgotten).
TEST(ConnectionTelemetryTest, OverflowedLabelSetsGetACellOnceOneIsFree) {
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::off, .metrics = true, .series_expiry = 10min});
  auto finish_one = [&](const std::shared_ptr<ServiceInfo>& svc) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    c.record().service = svc;
    c.finish(EndReason::completed);
  };
  for (std::size_t i = 0; i < ConnectionTelemetry::kMaxSeriesPerWorker; ++i) {
    std::string host = std::to_string(i);
    host += ".ns.svc";
    finish_one(std::make_shared<ServiceInfo>(ServiceInfo{host, "s", "ns"}));
  }
  const auto t0 = ConnectionTelemetry::Clock::now();
  t.expire_idle(0, t0);  // every cell stamped
  const auto extra = std::make_shared<ServiceInfo>(ServiceInfo{"extra.ns.svc", "s", "ns"});
  finish_one(extra);  // no free cell: the overflow series (first seen by the next pass)
  EXPECT_EQ(t.expire_idle(0, t0 + 10min), ConnectionTelemetry::kMaxSeriesPerWorker);
  finish_one(extra);
  std::map<std::string, double> closed;
  const auto all = t.collect();
  for (const auto& m : find(all, "istio_tcp_connections_closed_total").metric)
    closed[labels_of(m)["destination_service"]] = m.counter.value;
  EXPECT_EQ(closed["extra.ns.svc"], 1.0) << "still counted in the overflow series";
  EXPECT_EQ(closed["overflow"], 1.0);
}

// Expiry off (0): nothing ever leaves.
TEST(ConnectionTelemetryTest, SeriesExpiryZeroKeepsEverything) {
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::off, .metrics = true, .series_expiry = {}});
  {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    c.finish(EndReason::completed);
  }
  const auto t0 = ConnectionTelemetry::Clock::now();
  t.expire_idle(0, t0);
  EXPECT_EQ(t.expire_idle(0, t0 + std::chrono::hours(24 * 365)), 0u);
  const auto all = t.collect();
  EXPECT_EQ(find(all, "istio_tcp_connections_opened_total").metric.size(), 1u);
}

// The series cache is keyed by the names' addresses: a name freed and another allocated at the
// same address must not inherit the first one's series (the cache pins what it keys by).
TEST(ConnectionTelemetryTest, ANewNameAtAFreedAddressGetsItsOwnSeries) {
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::off, .metrics = true});
  constexpr int kNames = 50;
  for (int i = 0; i < kNames; ++i) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    std::string name = "w";  // (not "w" + to_string(i): GCC 12 warns, wrongly)
    name += std::to_string(i);
    c.record().source_workload = std::make_shared<WorkloadInfo>(WorkloadInfo{name + "-0", "ns", name, name, "v1"});
    c.finish(EndReason::completed);
  }  // each record's workload is freed here: the allocator may hand its address to the next one
  const auto all = t.collect();
  const auto& closed = find(all, "istio_tcp_connections_closed_total");
  std::set<std::string> seen;
  for (const auto& m : closed.metric) {
    EXPECT_EQ(m.counter.value, 1.0) << labels_of(m)["source_workload"];
    seen.insert(labels_of(m)["source_workload"]);
  }
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(kNames));
}

// What HBONE and authz fill in (the transport and the policy decision): the Istio labels and the
// access-log fields they feed.
TEST(ConnectionTelemetryTest, HboneAndPolicyFieldsReachLabelsAndLog) {
  std::string log;
  std::mutex log_mutex;
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::json, .metrics = true}, [&](std::string_view lines) -> bool {
    std::lock_guard lock(log_mutex);
    log += lines;
    return true;
  });
  const auto src = std::make_shared<const std::string>("spiffe://cluster.local/ns/default/sa/sleep");
  const auto dst = std::make_shared<const std::string>("spiffe://cluster.local/ns/dual-stack/sa/tcp-echo");
  for (int i = 0; i < 2; ++i) {  // the second one through the series cache
    ConnectionResult c(t.sink(0), Direction::inbound, {}, {});
    c.record() = sample_record();
    c.record().direction = Direction::inbound;
    c.record().protocol = RequestProtocol::hbone;
    c.record().security = SecurityPolicy::mutual_tls;
    c.record().source_principal = src;
    c.record().destination_principal = dst;
    c.record().policy = "dual-stack/deny-sleep";
    c.finish(EndReason::denied_by_policy);
  }
  const auto all = t.collect();
  const auto& closed = find(all, "istio_tcp_connections_closed_total");
  ASSERT_EQ(closed.metric.size(), 1u);
  auto l = labels_of(closed.metric[0]);
  EXPECT_EQ(closed.metric[0].counter.value, 2.0);
  EXPECT_EQ(l["request_protocol"], "tcp");  // as ztunnel: tunnelled or not, an L4 connection is tcp
  EXPECT_EQ(l["connection_security_policy"], "mutual_tls");
  EXPECT_EQ(l["source_principal"], *src);
  EXPECT_EQ(l["destination_principal"], *dst);
  EXPECT_EQ(l["response_flags"], "DENY");
  EXPECT_EQ(l["reporter"], "destination");
  t.flush();
  const auto line = log.substr(0, log.find('\n'));
  const auto v = boost::json::parse(line).as_object();
  EXPECT_EQ(v.at("src.identity").as_string(), *src);
  EXPECT_EQ(v.at("dst.identity").as_string(), *dst);
  EXPECT_EQ(v.at("protocol").as_string(), "HBONE");
  EXPECT_EQ(v.at("policy").as_string(), "dual-stack/deny-sleep");
  EXPECT_EQ(v.at("error").as_string(), "denied_by_policy");
  const auto text = format_access_log_text(c_record_for_text());
  EXPECT_NE(text.find(" src.identity=spiffe://x/ns/a/sa/b "), std::string::npos) << text;
  EXPECT_NE(text.find(" protocol=HBONE "), std::string::npos) << text;
  EXPECT_NE(text.find(" policy=a/p"), std::string::npos) << text;
}

TEST(AccessLogTest, JsonEscapesWhatNeedsIt) {
  // Every byte that needs it, at every offset of an 8-byte word (the scan takes words).
  for (std::size_t at = 0; at < 20; ++at)
    for (char c : {'"', '\\', '\n', '\x1f', '\x00'}) {
      auto r = sample_record();
      r.policy = std::string(at, 'p') + c + "tail-of-it";
      r.reason = EndReason::denied_by_policy;
      const auto json = format_access_log_json(r);
      boost::json::error_code ec;
      const auto v = boost::json::parse(json, ec);
      ASSERT_FALSE(ec) << json;
      EXPECT_EQ(v.as_object().at("policy").as_string(), r.policy) << json;
    }
  auto r = sample_record();
  r.policy = "a\"b\\c\nd\x01e";
  r.reason = EndReason::denied_by_policy;
  const auto json = format_access_log_json(r);
  const auto v = boost::json::parse(json).as_object();
  EXPECT_EQ(v.at("policy").as_string(), r.policy) << json;
}

// A text line is written with its close time and level, as the process log's lines are.
TEST(ConnectionTelemetryTest, TextLinesCarryTheCloseTime) {
  std::string log;
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::text, .metrics = false, .flush_interval = 1h},
                        [&](std::string_view l) { log += l; return true; });
  {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    const auto start = c.record().start_wall;
    c.record() = sample_record();
    c.record().start_wall = start;
    c.finish(EndReason::completed);
  }
  EXPECT_TRUE(log.empty());  // pending until the writer's interval, 64 KiB, or flush()
  t.flush();
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.back(), '\n');
  EXPECT_EQ(log.find('\n'), log.size() - 1);
  EXPECT_EQ(log[4], '-');
  EXPECT_EQ(log.substr(23, 33), "Z info access connection complete");
}

TEST(ConnectionTelemetryTest, BatchesAreWholeLinesOfAtMostPipeBuf) {
  std::vector<std::size_t> sizes;
  std::size_t lines = 0;
  std::vector<bool> batches_with_long_line;  // and nothing else in that batch
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::json, .metrics = false, .flush_interval = 1h},
                        [&](std::string_view batch) -> bool {
    sizes.push_back(batch.size());
    batches_with_long_line.push_back(batch.size() > 4096 &&
                                     std::count(batch.begin(), batch.end(), '\n') == 1);
    EXPECT_EQ(batch.back(), '\n');
    for (char c : batch) lines += c == '\n';
    return true;
  });
  for (int i = 0; i < 100; ++i) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    c.record() = sample_record();
    if (i == 50) {  // a line longer than a batch goes alone
      c.record().policy = std::string(5000, 'p');
      c.finish(EndReason::denied_by_policy);
    }
  }
  t.flush();
  EXPECT_EQ(lines, 100u);
  EXPECT_GT(sizes.size(), 2u);
  int long_ones = 0;
  for (auto n : sizes) {
    if (n > 4096u) ++long_ones;
    else EXPECT_LE(n, 4096u);
  }
  EXPECT_EQ(long_ones, 1);
  EXPECT_EQ(std::count(batches_with_long_line.begin(), batches_with_long_line.end(), true), 1);
}

// A stderr that blocks (a pipe whose reader is stuck) must never stall a worker: the worker's
// thread never writes, and past its bound it drops lines (counted) instead of waiting.
TEST(ConnectionTelemetryTest, ABlockedOutputNeverBlocksTheDataPath) {
  const auto worker = std::this_thread::get_id();
  std::mutex m;
  std::condition_variable cv;
  bool released = false;
  std::atomic<int> calls_on_worker{0};
  std::atomic<bool> emitting{true};  // the test's thread is a worker until the records are out
  std::atomic<std::size_t> lines_out{0};
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::json, .metrics = false, .flush_interval = 1h},
                        [&](std::string_view batch) -> bool {
    if (std::this_thread::get_id() == worker) {
      if (emitting) ++calls_on_worker;
    } else {
      std::unique_lock lock(m);
      cv.wait_for(lock, 20s, [&] { return released; });  // bounded: a broken test fails, never hangs
    }
    for (char c : batch) lines_out += c == '\n';
    return true;
  });
  constexpr std::size_t kLines = 5000;  // about 2.5 MB: well past the worker's 1 MiB bound
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < kLines; ++i) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    c.record() = sample_record();
  }
  // Not a timing assertion on performance: a data path that waited for the blocked output would
  // take the output's 20 s here.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  emitting = false;
  EXPECT_EQ(calls_on_worker.load(), 0);
  double dropped = 0;
  for (const auto& f : t.collect())
    if (f.name == "dsproxy_access_log_dropped_total") dropped = f.metric.at(0).counter.value;
  EXPECT_GT(dropped, 0.0);
  {
    std::lock_guard lock(m);
    released = true;
  }
  cv.notify_all();
  t.flush();  // not a worker: flush() may write on the caller's thread
  EXPECT_EQ(lines_out.load() + static_cast<std::size_t>(dropped), kLines);
}

// An output that does not take a batch (stderr closed, or stuck past the writer's wait): its
// lines, and those of the rest of that pass, are counted as dropped, and the output is not asked
// again in that pass (a stuck stderr costs the writer one wait per pass, not one per batch).
TEST(ConnectionTelemetryTest, LinesTheOutputDidNotTakeAreCountedAsDropped) {
  int calls = 0;
  bool failing = true;
  std::size_t written = 0;
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::json, .metrics = false, .flush_interval = 1h},
                        [&](std::string_view batch) -> bool {
    ++calls;
    if (failing) return false;
    for (char c : batch) written += c == '\n';
    return true;
  });
  const auto dropped = [&] {
    for (const auto& f : t.collect())
      if (f.name == "dsproxy_access_log_dropped_total") return f.metric.at(0).counter.value;
    return -1.0;
  };
  constexpr int kLines = 40;  // about 20 KB: several batches
  for (int i = 0; i < kLines; ++i) {
    ConnectionResult c(t.sink(0), Direction::outbound, {}, {});
    c.record() = sample_record();
  }
  t.flush();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(dropped(), kLines);
  failing = false;  // the next pass tries again
  { ConnectionResult c(t.sink(0), Direction::outbound, {}, {}); c.record() = sample_record(); }
  t.flush();
  EXPECT_EQ(written, 1u);
  EXPECT_EQ(dropped(), kLines);
}

// The writer thread writes on its own, without anyone calling flush().
TEST(ConnectionTelemetryTest, LinesAreWrittenWithinTheFlushInterval) {
  std::mutex m;
  std::string log;
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::json, .metrics = false, .flush_interval = 20ms},
                        [&](std::string_view l) -> bool {
    std::lock_guard lock(m);
    log += l;
    return true;
  });
  { ConnectionResult c(t.sink(0), Direction::outbound, {}, {}); c.record() = sample_record(); }
  bool written = false;
  for (int i = 0; i < 500 && !written; ++i) {  // up to 5 s
    std::this_thread::sleep_for(10ms);
    std::lock_guard lock(m);
    written = !log.empty();
  }
  EXPECT_TRUE(written);
}

// At exit every pending line is written: the access log is the record of every connection.
TEST(ConnectionTelemetryTest, DestructionWritesEveryPendingLine) {
  std::size_t lines = 0;
  {
    ConnectionTelemetry t(2, {.access_log = AccessLogFormat::text, .metrics = false, .flush_interval = 1h},
                          [&](std::string_view l) { for (char c : l) lines += c == '\n'; return true; });
    for (int i = 0; i < 150; ++i) {
      ConnectionResult c(t.sink(i % 2), Direction::outbound, {}, {});
      c.record() = sample_record();
    }
  }
  EXPECT_EQ(lines, 150u);
}

TEST(ConnectionTelemetryTest, BothOffMeansNoSink) {
  ConnectionTelemetry t(2, {.access_log = AccessLogFormat::off, .metrics = false});
  EXPECT_EQ(t.sink(0), nullptr);
  EXPECT_EQ(t.sink(1), nullptr);
}

TEST(MetricsExporterTest, RendersPrometheusTextWithBuildInfoAndOurFamilies) {
  ConnectionTelemetry t(1, {.access_log = AccessLogFormat::off, .metrics = true});
  { ConnectionResult c(t.sink(0), Direction::inbound, {}, {}); c.finish(EndReason::completed); }
  ProxyStats stats;
  ProxyStats::add(stats.family_fallbacks, 3);
  admin::MetricsExporter exporter("1.2.3");
  exporter.add([&] { return t.collect(); });
  exporter.add([&] { return admin::proxy_stats_families(stats); });
  exporter.add([] { return admin::config_families(4, 1); });
  const auto text = exporter.render();
  EXPECT_NE(text.find("dsproxy_build_info{version=\"1.2.3\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE istio_tcp_connections_closed_total counter"), std::string::npos) << text;
  EXPECT_NE(text.find("reporter=\"destination\""), std::string::npos) << text;
  EXPECT_NE(text.find("dsproxy_family_fallbacks_total 3"), std::string::npos) << text;
  EXPECT_NE(text.find("dsproxy_config_reload_failures_total 1"), std::string::npos) << text;
}

}  // namespace connection_telemetry_test
}  // namespace dsproxy::proxy
