// The scale benchmark of issue 10 for the snapshot side: how long the first full view of a large
// cluster takes, what it costs in memory, and how long one EndpointSlice change takes to become
// the snapshot the data path reads. Prints numbers; asserts nothing (bench/scale.sh runs it).
//
//   snapshot_scale events [--services N] [--endpoints N] [--events N] [--all-pods]
//       objects handed to a SnapshotBuilder one by one (what the API watch does after its LIST),
//       then N single-slice events, each followed by build + publish + endpoint-state sync
//   snapshot_scale file [--input FILE | --services N --endpoints N --dual-stack-percent P --all-pods]
//       a cluster file (bench/tools/gen_cluster.py's, or the same cluster as above written as
//       JSON): decode, replace_all, build; then a reload of the file with one endpoint changed
//       (what the file source does on every poll that sees a change)
//
// Each mode runs in its own process so that RSS is the mode's own. RSS is read from
// /proc/self/status after malloc_trim(0) (freed heap given back, as a long-running daemon's
// allocator eventually does); VmHWM is the peak, decode's transient garbage included.

#include <malloc.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "config/k8s_decoder.hpp"
#include "proxy/endpoint_states.hpp"
#include "scale_cluster.hpp"
#include "snapshot/snapshot_builder.hpp"
#include "snapshot/snapshot_store.hpp"

namespace {

using namespace dsproxy;
using Clock = std::chrono::steady_clock;

double ms(std::chrono::nanoseconds d) { return std::chrono::duration<double, std::milli>(d).count(); }

// This thread's CPU time: what the work itself costs, apart from time the scheduler gave to other
// processes (on a shared machine wall-clock percentiles show 4 ms scheduler ticks).
std::chrono::nanoseconds cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

std::string memory() {
  malloc_trim(0);
  std::ifstream status("/proc/self/status");
  std::string line, rss = "?", hwm = "?";
  while (std::getline(status, line)) {
    auto value = [&] {
      auto v = line.substr(line.find(':') + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    };
    if (line.rfind("VmRSS:", 0) == 0) rss = value();
    if (line.rfind("VmHWM:", 0) == 0) hwm = value();
  }
  return "RSS " + rss + " (peak " + hwm + ")";
}

struct Args {
  std::string mode;
  bench::ClusterShape shape;
  int events = 1000;
  std::string input;  // file mode: decode this file instead of a generated one
};

// The control thread's work for one change: build, publish, and let the state index cover it.
struct Pipeline {
  explicit Pipeline(const snapshot::SnapshotBuilder::Options& options) : builder(options) {}
  void publish() {
    auto next = builder.build();
    store.publish(next);
    states.sync(next);
  }
  snapshot::SnapshotBuilder builder;
  snapshot::SnapshotStore store;
  proxy::EndpointStates states;
};

void print_latencies(const char* what, std::vector<std::chrono::nanoseconds> d) {
  std::sort(d.begin(), d.end());
  auto at = [&](double q) { return ms(d[std::min(d.size() - 1, static_cast<std::size_t>(q * d.size()))]); };
  std::printf("%s: %zu events, p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", what, d.size(), at(0.5), at(0.99),
              ms(d.back()));
}

void describe(const snapshot::ClusterSnapshot& s, std::size_t pods) {
  std::size_t endpoints = 0;
  for (const snapshot::ServiceCluster& c : s.clusters()) endpoints += c.endpoints.size();
  std::printf("cluster: %zu Services, %zu clusters, %zu endpoints, %zu Pod objects kept, %zu node pods\n",
              s.service_count(), s.cluster_count(), endpoints, pods, s.node_pods().size());
}

int run_events(const Args& a) {
  const snapshot::SnapshotBuilder::Options options{.node_name = a.shape.node};
  auto objects = bench::make_cluster(a.shape);
  bench::SliceEvents events(objects, 42);
  std::printf("%s\n", ("after generating the objects: " + memory()).c_str());

  Pipeline p(options);
  const auto start = Clock::now();
  // As a reflector's sink receives a LIST: object by object, then one build for the synced set.
  for (auto& n : objects.nodes) p.builder.upsert(std::move(n));
  for (auto& s : objects.services) p.builder.upsert(std::move(s));
  for (auto& s : objects.endpoint_slices) p.builder.upsert(std::move(s));
  for (auto& pod : objects.pods) p.builder.upsert(std::move(pod));
  p.publish();
  const auto synced = Clock::now() - start;
  objects = {};  // the source's own copy is gone once handed over
  std::printf("initial sync (upsert every object, build, publish, state sync): %.1f ms\n", ms(synced));
  describe(*p.store.current(), p.builder.pods());
  std::printf("after sync: %s\n", memory().c_str());

  std::vector<std::chrono::nanoseconds> cpu;
  std::chrono::nanoseconds cpu_start{};
  const auto latencies = bench::feed_slice_events(
      events, a.events,
      [&](dsproxy::config::EndpointSlice s) {
        cpu_start = cpu_now();
        p.builder.upsert(std::move(s));
      },
      [&] {
        p.publish();
        cpu.push_back(cpu_now() - cpu_start);
      });
  print_latencies("one EndpointSlice event -> snapshot live (wall clock)", latencies);
  print_latencies("one EndpointSlice event -> snapshot live (CPU time) ", cpu);
  std::printf("after events: %s; endpoint states tracked: %zu\n", memory().c_str(), p.states.tracked_addresses());
  return 0;
}

// ------------------------------------------------------------------ the file source

void json_string(std::string& out, const std::string& s) {
  out += '"';
  out += s;  // generated names and addresses need no escaping
  out += '"';
}

std::string to_json(const config::ClusterObjects& o) {
  std::string out = R"({"apiVersion":"v1","kind":"List","items":[)";
  bool first = true;
  auto item = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  auto labels = [&](const config::Labels& l) {
    out += '{';
    bool f = true;
    for (const auto& [k, v] : l) {
      if (!f) out += ',';
      f = false;
      json_string(out, k);
      out += ':';
      json_string(out, v);
    }
    out += '}';
  };
  for (const auto& n : o.nodes) {
    item();
    out += R"({"apiVersion":"v1","kind":"Node","metadata":{"name":)";
    json_string(out, n.name);
    out += R"(,"labels":)";
    labels(n.labels);
    out += "}}";
  }
  for (const auto& s : o.services) {
    item();
    out += R"({"apiVersion":"v1","kind":"Service","metadata":{"name":)";
    json_string(out, s.name);
    out += R"(,"namespace":)";
    json_string(out, s.ns);
    out += R"(,"labels":)";
    labels(s.labels);
    out += R"(},"spec":{"selector":)";
    labels(*s.selector);
    out += R"(,"clusterIP":)";
    json_string(out, s.cluster_ips[0].to_string());
    out += R"(,"clusterIPs":[)";
    for (std::size_t i = 0; i < s.cluster_ips.size(); ++i) {
      if (i) out += ',';
      json_string(out, s.cluster_ips[i].to_string());
    }
    out += R"(],"ipFamilies":[)";
    for (std::size_t i = 0; i < s.ip_families.size(); ++i) {
      if (i) out += ',';
      out += s.ip_families[i] == net::Family::v4 ? "\"IPv4\"" : "\"IPv6\"";
    }
    out += R"(],"ipFamilyPolicy":)";
    json_string(out, std::string(config::to_string(s.ip_family_policy)));
    out += R"(,"ports":[{"name":"http","port":80,"targetPort":8080,"protocol":"TCP"}]}})";
  }
  for (const auto& s : o.endpoint_slices) {
    item();
    out += R"({"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":)";
    json_string(out, s.name);
    out += R"(,"namespace":)";
    json_string(out, s.ns);
    out += R"(,"labels":{"kubernetes.io/service-name":)";
    json_string(out, s.service_name);
    out += R"(}},"addressType":)";
    json_string(out, std::string(config::to_string(s.address_type)));
    out += R"(,"ports":[{"name":"http","port":8080,"protocol":"TCP"}],"endpoints":[)";
    for (std::size_t i = 0; i < s.endpoints.size(); ++i) {
      const auto& e = s.endpoints[i];
      if (i) out += ',';
      out += R"({"addresses":[)";
      json_string(out, e.addresses[0].to_string());
      out += R"(],"conditions":{"ready":)";
      out += e.ready ? "true" : "false";
      out += R"(},"nodeName":)";
      json_string(out, e.node_name);
      out += R"(,"zone":)";
      json_string(out, e.zone);
      out += R"(,"targetRef":{"kind":"Pod","name":)";
      json_string(out, e.target_pod);
      out += R"(,"namespace":)";
      json_string(out, s.ns);
      out += "}}";
    }
    out += "]}";
  }
  for (const auto& p : o.pods) {
    item();
    out += R"({"apiVersion":"v1","kind":"Pod","metadata":{"name":)";
    json_string(out, p.name);
    out += R"(,"namespace":)";
    json_string(out, p.ns);
    out += R"(,"labels":)";
    labels(p.labels);
    out += R"(},"spec":{"nodeName":)";
    json_string(out, p.node_name);
    out += R"(,"containers":[{"name":"c","ports":[{"name":"http","containerPort":8080}]}]},"status":{"podIPs":[)";
    for (std::size_t i = 0; i < p.pod_ips.size(); ++i) {
      if (i) out += ',';
      out += R"({"ip":)";
      json_string(out, p.pod_ips[i].to_string());
      out += '}';
    }
    out += R"(],"conditions":[{"type":"Ready","status":"True"}]}})";
  }
  out += "]}\n";
  return out;
}

int run_file(const Args& a) {
  std::string text;
  if (!a.input.empty()) {
    std::ifstream in(a.input, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", a.input.c_str());
      return 1;
    }
    std::ostringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
    std::printf("file: %s, %.1f MB\n", a.input.c_str(), static_cast<double>(text.size()) / 1e6);
  } else {
    auto objects = bench::make_cluster(a.shape);
    text = to_json(objects);
    std::printf("file: %.1f MB of generated JSON (%d Services, %d endpoints)\n",
                static_cast<double>(text.size()) / 1e6, a.shape.services, a.shape.endpoints);
  }
  // The file is larger than what dsproxy's default decode limits admit (16 MiB, 2 million nodes):
  // measured here with room, as the decoder's own limits are the decoder's business.
  config::DecodeLimits limits{.max_bytes = 1u << 30, .max_nodes = 200'000'000};
  std::printf("before decoding: %s\n", memory().c_str());

  Pipeline p({.node_name = a.shape.node});
  auto start = Clock::now();
  auto objects = config::decode_objects(text, "synthetic.json", limits);
  const auto decoded = Clock::now() - start;
  p.builder.replace_all(std::move(objects));
  p.publish();
  const auto loaded = Clock::now() - start;
  std::printf("initial load: decode %.1f ms, total with build and publish %.1f ms\n", ms(decoded), ms(loaded));
  describe(*p.store.current(), p.builder.pods());
  std::printf("after load: %s\n", memory().c_str());

  // A reload of the same file with one endpoint flipped: the file source re-reads everything,
  // the builder recomputes one Service.
  {
    start = Clock::now();
    auto again = config::decode_objects(text, "synthetic.json", limits);
    const auto decoded_again = Clock::now() - start;
    if (!again.endpoint_slices.empty() && !again.endpoint_slices[0].endpoints.empty())
      again.endpoint_slices[0].endpoints[0].ready = !again.endpoint_slices[0].endpoints[0].ready;
    p.builder.replace_all(std::move(again));
    p.publish();
    const auto reloaded = Clock::now() - start;
    std::printf("reload (one endpoint changed): decode %.1f ms, total %.1f ms, %zu Service(s) recomputed\n",
                ms(decoded_again), ms(reloaded), p.builder.last_build().services_derived);
  }
  text.clear();
  text.shrink_to_fit();
  std::printf("after reload: %s\n", memory().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s events|file [--services N] [--endpoints N] [--events N] "
                         "[--dual-stack-percent P] [--all-pods] [--input FILE]\n", argv[0]);
    return 2;
  }
  a.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    auto number = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (arg == "--services") a.shape.services = number();
    else if (arg == "--endpoints") a.shape.endpoints = number();
    else if (arg == "--events") a.events = number();
    else if (arg == "--dual-stack-percent") a.shape.dual_stack_percent = number();
    else if (arg == "--all-pods") a.shape.all_pods = true;
    else if (arg == "--input" && i + 1 < argc) a.input = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);
  if (a.mode == "events") return run_events(a);
  if (a.mode == "file") return run_file(a);
  std::fprintf(stderr, "unknown mode %s\n", a.mode.c_str());
  return 2;
}
