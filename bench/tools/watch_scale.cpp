// watch_scale: issue 10's scale figures for a cluster fed through a source, with the daemon's
// own control plane (ControlPlane + KubernetesSource or FileSource + SnapshotStore; no redirect
// rules, no data path). Not a test: bench/watch_scale.sh runs it and prints the table.
//
//   watch_scale --source kubernetes --kubeconfig K --control-port P --objects FILE [--node N]
//               [--events 1000] [--budget-s 240] [--seed 1]
//   watch_scale --source file --objects FILE [--node N] [--events 10] [--budget-s 120] [--poll-ms 1000]
//
// kubernetes: the API server is the fake one (tests/tools/fake_apiserver) in another process,
// loaded with FILE, so its memory is not in this process's RSS. Each event flips the ready
// condition of one endpoint of a random EndpointSlice through the fake's control port.
// file: the source reads FILE itself; each event rewrites FILE (tmp + rename) with one endpoint
// flipped.
//
// Measured: start → the control plane's synced() (the first snapshot with everything is
// published); VmRSS and VmHWM right then (before this tool reads FILE for its own use); per event,
// the time from the control call returning (kubernetes) or the rename (file) until the
// SnapshotStore holds a snapshot in which the endpoint has the new readiness. The measuring
// thread polls the store's generation every 20 µs. Prints one `RESULT key=value ...` line.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon/control_plane.hpp"
#include "redirect/command_runner.hpp"
#include "snapshot/snapshot_store.hpp"
#include "sources/file_source.hpp"
#include "sources/kubernetes/api_server_config.hpp"
#include "sources/kubernetes/kubernetes_source.hpp"

using namespace dsproxy;
using Clock = std::chrono::steady_clock;
namespace json = boost::json;
namespace http = boost::beast::http;

namespace {

struct Args {
  std::string source;
  std::string kubeconfig;
  std::uint16_t control_port = 0;
  std::string objects;
  std::string node = "node-0";
  int events = -1;
  double budget_s = -1;
  unsigned seed = 1;
  int poll_ms = 1000;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "watch_scale: %s\n", why);
  std::exit(2);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) usage(("missing value for " + k).c_str());
    std::string v = argv[++i];
    if (k == "--source") a.source = v;
    else if (k == "--kubeconfig") a.kubeconfig = v;
    else if (k == "--control-port") a.control_port = static_cast<std::uint16_t>(std::stoi(v));
    else if (k == "--objects") a.objects = v;
    else if (k == "--node") a.node = v;
    else if (k == "--events") a.events = std::stoi(v);
    else if (k == "--budget-s") a.budget_s = std::stod(v);
    else if (k == "--seed") a.seed = static_cast<unsigned>(std::stoul(v));
    else if (k == "--poll-ms") a.poll_ms = std::stoi(v);
    else usage(("unknown option " + k).c_str());
  }
  if (a.source != "kubernetes" && a.source != "file") usage("--source kubernetes|file");
  if (a.objects.empty()) usage("--objects FILE is required");
  if (a.source == "kubernetes" && (a.kubeconfig.empty() || a.control_port == 0))
    usage("--source kubernetes needs --kubeconfig and --control-port");
  if (a.events < 0) a.events = a.source == "kubernetes" ? 1000 : 10;
  if (a.budget_s < 0) a.budget_s = a.source == "kubernetes" ? 240 : 120;
  return a;
}

// kB from /proc/self/status.
long status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) return std::strtol(line.c_str() + prefix.size(), nullptr, 10);
  return -1;
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// What one event changes, and how to see it in a snapshot.
struct Target {
  json::object* slice = nullptr;  // in the tool's own copy of the cluster
  std::size_t endpoint = 0;
  net::SocketAddress vip;  // the Service's ClusterIP of the slice's family, port 80
  net::IpAddress address;  // the endpoint's address
  bool want_ready = false;
};

bool visible(const snapshot::ClusterSnapshot& snap, const Target& t) {
  const auto* cluster = snap.find_cluster(t.vip);
  if (!cluster) return false;
  bool ready = false;
  for (const auto& e : cluster->endpoints)
    if (e.address.ip == t.address && e.ready) ready = true;
  return ready == t.want_ready;
}

// The tool's own copy of the cluster: every Service's ClusterIPs and every IP slice, for making
// events. Read after the RSS figures were taken.
struct Cluster {
  json::value doc;
  std::map<std::string, std::vector<net::IpAddress>> cluster_ips;  // "ns/name"
  std::vector<json::object*> slices;
};

Cluster read_cluster(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  Cluster c;
  c.doc = json::parse(text.str());
  auto& items = c.doc.as_object().at("items").as_array();
  for (auto& item : items) {
    auto& o = item.as_object();
    const auto kind = o.at("kind").as_string();
    const auto& meta = o.at("metadata").as_object();
    const std::string key =
        std::string(meta.at("namespace").as_string()) + "/" + std::string(meta.at("name").as_string());
    if (kind == "Service") {
      auto& ips = c.cluster_ips[key];
      for (const auto& ip : o.at("spec").as_object().at("clusterIPs").as_array())
        ips.push_back(*net::IpAddress::parse(ip.as_string()));
    } else if (kind == "EndpointSlice") {
      if (o.at("endpoints").as_array().empty()) continue;
      c.slices.push_back(&o);
    }
  }
  return c;
}

std::optional<Target> pick(Cluster& c, std::mt19937& rng) {
  json::object& slice = *c.slices[std::uniform_int_distribution<std::size_t>(0, c.slices.size() - 1)(rng)];
  auto& endpoints = slice.at("endpoints").as_array();
  Target t;
  t.slice = &slice;
  t.endpoint = std::uniform_int_distribution<std::size_t>(0, endpoints.size() - 1)(rng);
  const auto& meta = slice.at("metadata").as_object();
  const std::string service = std::string(meta.at("namespace").as_string()) + "/" +
                              std::string(meta.at("labels").as_object().at("kubernetes.io/service-name").as_string());
  const bool v6 = slice.at("addressType").as_string() == "IPv6";
  auto ips = c.cluster_ips.find(service);
  if (ips == c.cluster_ips.end()) return std::nullopt;
  for (const auto& ip : ips->second)
    if (!ip.is_v4() == v6) t.vip = net::SocketAddress{ip, 80};
  if (t.vip.port == 0) return std::nullopt;
  auto& endpoint = endpoints[t.endpoint].as_object();
  t.address = *net::IpAddress::parse(endpoint.at("addresses").as_array().at(0).as_string());
  auto& ready = endpoint["conditions"].as_object()["ready"];
  const bool was = ready.is_bool() && ready.as_bool();
  t.want_ready = !was;
  ready = t.want_ready;
  return t;
}

// A kept-alive plain-HTTP connection to the fake server's control port.
class ControlClient {
 public:
  explicit ControlClient(std::uint16_t port) : port_(port) {}
  void upsert(const std::string& resource, const std::string& body) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      try {
        if (!socket_.is_open())
          socket_.connect({boost::asio::ip::make_address("127.0.0.1"), port_});
        http::request<http::string_body> req{http::verb::post, "/control/upsert?resource=" + resource, 11};
        req.set(http::field::host, "127.0.0.1");
        req.set(http::field::content_type, "application/json");
        req.keep_alive(true);
        req.body() = body;
        req.prepare_payload();
        http::write(socket_, req);
        boost::beast::flat_buffer buffer;
        http::response<http::string_body> res;
        http::read(socket_, buffer, res);
        if (res.result() != http::status::ok)
          throw std::runtime_error("control upsert: HTTP " + std::to_string(res.result_int()) + " " + res.body());
        if (!res.keep_alive()) socket_.close();
        return;
      } catch (const boost::system::system_error&) {
        boost::system::error_code ignored;
        socket_.close(ignored);
        if (attempt == 1) throw;
      }
    }
  }

 private:
  std::uint16_t port_;
  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_{io_};
};

void write_file(const std::string& path, const json::value& doc) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << json::serialize(doc);
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
}

std::string pct(std::vector<double> v, double p) {
  if (v.empty()) return "-";
  std::sort(v.begin(), v.end());
  std::size_t rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<std::size_t>(rank, 1, v.size());
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v[rank - 1]);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  spdlog::set_level(spdlog::level::warn);

  snapshot::SnapshotStore store;
  redirect::ProcessRunner runner;  // never runs anything: redirect is off
  daemon::ControlPlaneOptions options;
  options.snapshot.node_name = args.node;
  options.redirect = false;

  const auto t0 = Clock::now();
  std::optional<daemon::ControlPlane> plane;
  plane.emplace(options, store, runner, daemon::ControlPlane::Callbacks{});
  if (args.source == "kubernetes") {
    sources::kubernetes::KubernetesSourceOptions k;
    k.server = sources::kubernetes::kubeconfig_config(args.kubeconfig);
    k.node_name = args.node;
    plane->add_source(std::make_unique<sources::kubernetes::KubernetesSource>(plane->io(), std::move(k), *plane));
  } else {
    plane->add_source(std::make_unique<sources::FileSource>(
        plane->io(), sources::FileSourceOptions{args.objects, std::chrono::milliseconds(args.poll_ms)}, *plane));
  }
  plane->start();
  const auto sync_deadline = t0 + std::chrono::seconds(300);
  while (!plane->synced()) {
    if (Clock::now() > sync_deadline) {
      std::fprintf(stderr, "watch_scale: not synced after 300 s\n");
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  const double sync_ms = ms_between(t0, Clock::now());
  const long rss_kb = status_kb("VmRSS"), hwm_kb = status_kb("VmHWM");
  auto first = store.current();
  std::fprintf(stderr, "watch_scale: %s synced in %.0f ms: %zu service ports, %zu local pods; RSS %ld kB, HWM %ld kB\n",
               args.source.c_str(), sync_ms, first->clusters().size(), first->node_pods().size(), rss_kb, hwm_kb);
  const std::size_t cluster_ports = first->clusters().size(), local_pods = first->node_pods().size();
  first.reset();

  // From here on the tool's own copy of the cluster is in memory too: no more RSS figures.
  Cluster cluster = read_cluster(args.objects);
  std::mt19937 rng(args.seed);
  std::optional<ControlClient> control;
  if (args.source == "kubernetes") control.emplace(args.control_port);

  std::vector<double> lat;
  int timeouts = 0;
  const auto budget_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(args.budget_s));
  for (int i = 0; i < args.events && Clock::now() < budget_end; ++i) {
    auto target = pick(cluster, rng);
    if (!target) continue;
    Clock::time_point sent;
    if (control) {
      const std::string body = json::serialize(*target->slice);
      control->upsert("endpointslices", body);
      sent = Clock::now();
    } else {
      write_file(args.objects, cluster.doc);
      if (std::rename((args.objects + ".tmp").c_str(), args.objects.c_str()) != 0)
        throw std::runtime_error("rename failed");
      sent = Clock::now();
    }
    std::uint64_t seen = 0;
    bool ok = false;
    const auto give_up = sent + std::chrono::seconds(60);
    while (Clock::now() < give_up) {
      const std::uint64_t g = store.generation();
      if (g != seen) {
        seen = g;
        auto snap = store.current();
        if (visible(*snap, *target)) {
          lat.push_back(ms_between(sent, Clock::now()));
          ok = true;
          break;
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    if (!ok) {
      ++timeouts;
      std::fprintf(stderr, "watch_scale: event %d not visible after 60 s\n", i);
    }
  }

  plane->stop();
  std::printf(
      "RESULT source=%s service_ports=%zu local_pods=%zu sync_ms=%.0f rss_mb=%.1f hwm_mb=%.1f events=%zu "
      "timeouts=%d p50_ms=%s p90_ms=%s p99_ms=%s max_ms=%s builds=%llu\n",
      args.source.c_str(), cluster_ports, local_pods, sync_ms, rss_kb / 1024.0, hwm_kb / 1024.0, lat.size(), timeouts,
      pct(lat, 50).c_str(), pct(lat, 90).c_str(), pct(lat, 99).c_str(), pct(lat, 100).c_str(),
      static_cast<unsigned long long>(plane->builds()));
  std::fflush(stdout);
  // The cluster copy and the plane's state are large; the process exits without tearing them down.
  std::_Exit(timeouts == 0 && !lat.empty() ? 0 : 1);
}
