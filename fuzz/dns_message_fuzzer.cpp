// libFuzzer target for everything in the DNS proxy that reads network input: queries from pods
// (parse_query, the cluster answers, FORMERR), answers from upstream (parse_message, the cache,
// adapt_response), and the handler that ties them together. Build and run: fuzz/run_fuzz.sh dns_message.
//
// Besides "no crash, no sanitizer report", it checks that every message dsproxy builds parses
// back, so a malformed answer of our own is a finding too.

#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "snapshot/snapshot_store.hpp"
#include "resolver/cluster_dns.hpp"
#include "resolver/dns_cache.hpp"
#include "resolver/dns_handler.hpp"
#include "resolver/dns_message.hpp"

using namespace dsproxy;
using namespace dsproxy::resolver;

namespace {

net::IpAddress ip(const char* text) { return *net::IpAddress::parse(text); }

// A small cluster with every kind of Service the table knows.
std::shared_ptr<const ClusterDns> make_table() {
  config::ClusterObjects objects;
  config::Service ds;
  ds.name = "tcp-echo";
  ds.ns = "dual-stack";
  ds.cluster_ips = {ip("fd00:10:96::f9fc"), ip("10.96.106.11")};
  ds.ip_families = {net::Family::v6, net::Family::v4};
  objects.services.push_back(ds);
  config::Service v4 = ds;
  v4.ns = "ipv4";
  v4.cluster_ips = {ip("10.96.104.229")};
  v4.ip_families = {net::Family::v4};
  objects.services.push_back(v4);
  config::Service headless = ds;
  headless.name = "db";
  headless.headless = true;
  headless.cluster_ips.clear();
  headless.selector = config::Labels{{"app", "db"}};
  objects.services.push_back(headless);
  config::Service external;
  external.name = "search";
  external.ns = "default";
  external.type = "ExternalName";
  external.external_name = "search.example.com";
  objects.services.push_back(external);
  config::Pod pod;
  pod.name = "db-0";
  pod.ns = "dual-stack";
  pod.labels = {{"app", "db"}};
  pod.ready = true;
  pod.pod_ips = {ip("10.244.0.40"), ip("fd00:10:244::28")};
  objects.pods.push_back(pod);
  return ClusterDns::build(objects, {});
}

void must_parse(const Bytes& built) {
  if (built.empty()) return;
  if (!parse_message(built).info) std::abort();  // we built something we cannot read back
}

// Answers every forwarded query with the fuzz input itself: upstream bytes are input too.
class EchoUpstream final : public Upstream {
 public:
  Bytes answer;
  void send(Bytes, Done done) override { done({true, answer, {}}); }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // the handler logs every upstream failure
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto table = make_table();
  static snapshot::SnapshotStore store;
  const ByteView in(data, size);

  // 1. As a query from a pod.
  const ParsedQuery q = parse_query(in);
  if (q.status == QueryStatus::ok) {
    const ResponseSpec spec = table->answer(q.query.question);
    must_parse(build_response(q.query, in, spec, 512));
    must_parse(build_response(q.query, in, spec));
    (void)table->authoritative_for(q.query.question.name.key());
    (void)cache_key(q.query);
  } else if (q.status != QueryStatus::drop) {
    must_parse(build_error(in, q.status == QueryStatus::formerr ? Rcode::FormErr : Rcode::NotImp));
  }

  // 2. As an answer from upstream, through the cache, for a fixed question.
  const ParsedMessage m = parse_message(in);
  if (m.info) {
    static const Bytes query = build_query(7, *Name::from_text("www.example.com"), rrtype::A, true);
    static const ParsedQuery pq = parse_query(query);
    (void)adapt_response(in, *m.info, query, pq.query, 17, 512);
    std::chrono::steady_clock::time_point now{};
    DnsCache cache({4, std::chrono::seconds(60), std::chrono::seconds(10)}, [&now] { return now; });
    cache.store("k", Bytes(in.begin(), in.end()));
    now += std::chrono::seconds(5);
    (void)cache.lookup("k", pq.query, query, 512);
  }

  // 3. Through the whole handler, over UDP and TCP.
  EchoUpstream upstream;
  upstream.answer.assign(in.begin(), in.end());
  DnsHandler handler(store, {}, upstream);
  for (Transport t : {Transport::udp, Transport::tcp})
    handler.handle(in, t, [](Bytes answer) {
      if (answer.size() < kHeaderSize) std::abort();  // every answer has at least a header
    });
  return 0;
}
