// The DNS handler without I/O: cluster answers from the snapshot store, forwarding through a
// hand-driven upstream, in-flight coalescing, the TTL cache on a fake clock, SERVFAIL, FORMERR.

#include <gtest/gtest.h>

#include <list>

#include "config/k8s_decoder.hpp"
#include "resolver/dns_handler.hpp"

namespace dsproxy::resolver {
namespace resolver_handler_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

Name name(const char* text) { return Name::from_text(text).value(); }
net::IpAddress ip(const char* text) { return net::IpAddress::parse(text).value(); }

class FakeUpstream final : public Upstream {
 public:
  void send(Bytes query, Done done) override { pending.push_back({std::move(query), std::move(done)}); }

  // Answers the oldest pending query with `records` (A/AAAA of the question name), `rcode` and
  // an SOA with `negative_ttl` when there is no answer.
  void answer(std::vector<net::IpAddress> addresses, std::uint32_t ttl, Rcode rcode = Rcode::NoError,
              std::uint32_t negative_ttl = 10) {
    ASSERT_FALSE(pending.empty());
    auto [query, done] = std::move(pending.front());
    pending.erase(pending.begin());
    const auto parsed = parse_query(query);
    ASSERT_EQ(parsed.status, QueryStatus::ok);
    ResponseSpec spec;
    spec.rcode = rcode;
    for (const auto& a : addresses)
      spec.answers.push_back(Record{parsed.query.question.name, a.is_v4() ? rrtype::A : rrtype::AAAA, ttl, a});
    if (addresses.empty())
      spec.authority.push_back(Record{name("example"), rrtype::SOA, 300,
                                      SoaData{name("ns.example"), name("h.example"), 1, 1, 1, 1, negative_ttl}});
    Bytes response = build_response(parsed.query, query, spec);
    response[0] ^= 0xff;  // upstream IDs are c-ares's, never the client's
    done({true, std::move(response), {}});
  }
  void fail(std::string why) {
    auto [query, done] = std::move(pending.front());
    pending.erase(pending.begin());
    done({false, {}, std::move(why)});
  }

  std::vector<std::pair<Bytes, Done>> pending;
};

struct Answer {
  int rcode = -1;
  std::uint16_t id = 0;
  std::vector<net::IpAddress> addresses;
  std::optional<std::uint32_t> ttl;
  bool tc = false;
  std::string question;
  std::vector<std::uint16_t> authority;
};

class ResolverHandler : public ::testing::Test {
 protected:
  ResolverHandler() {
    store.publish(snapshot::ClusterSnapshot::build(
        config::load_objects_file(std::string(DSPROXY_TEST_DATA_DIR) + "/resolver/cluster.yaml"), {"kind-worker"}));
  }

  DnsHandler& handler() {
    if (!handler_) handler_.emplace(store, options, upstream, [this] { return now; });
    return *handler_;
  }

  // Sends a query and collects the answer(s) the handler gives for it.
  std::vector<Answer>& ask(const char* qname, std::uint16_t type, std::uint16_t id = 1,
                           Transport transport = Transport::udp, bool edns = false) {
    answers.emplace_back();
    auto& out = answers.back();
    handler().handle(build_query(id, name(qname), type, edns), transport, [&out](Bytes b) {
      Answer a;
      auto parsed = parse_message(b);
      ASSERT_TRUE(parsed.info) << parsed.error;
      a.rcode = parsed.info->header.rcode();
      a.id = parsed.info->header.id;
      a.addresses = parsed.info->addresses;
      a.ttl = parsed.info->min_answer_ttl;
      a.tc = parsed.info->header.tc();
      a.question = parsed.info->question.name.to_text();
      a.authority = parsed.info->authority_types;
      out.push_back(a);
    });
    return out;
  }

  snapshot::SnapshotStore store;
  DnsHandlerOptions options;
  FakeUpstream upstream;
  std::chrono::steady_clock::time_point now{std::chrono::hours(1000)};
  std::optional<DnsHandler> handler_;
  std::list<std::vector<Answer>> answers;
};

TEST_F(ResolverHandler, ClusterNamesAreAnsweredWithoutUpstream) {
  auto& a = ask("tcp-echo.ipv4.svc.cluster.local", rrtype::A, 42);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].rcode, 0);
  EXPECT_EQ(a[0].id, 42);
  EXPECT_EQ(a[0].addresses, std::vector<net::IpAddress>{ip("10.96.104.229")});
  EXPECT_EQ(a[0].ttl, 30u);
  auto& none = ask("tcp-echo.ipv4.svc.cluster.local", rrtype::AAAA);
  ASSERT_EQ(none.size(), 1u);
  EXPECT_EQ(none[0].rcode, 0);
  EXPECT_TRUE(none[0].addresses.empty());
  EXPECT_EQ(none[0].authority, std::vector<std::uint16_t>{rrtype::SOA});
  auto& nx = ask("nope.default.svc.cluster.local", rrtype::A);
  ASSERT_EQ(nx.size(), 1u);
  EXPECT_EQ(nx[0].rcode, 3);
  EXPECT_TRUE(upstream.pending.empty());
  EXPECT_EQ(handler().stats().answered_cluster.load(), 3u);
  EXPECT_EQ(handler().stats().cluster_nxdomain.load(), 1u);
}

TEST_F(ResolverHandler, ANewSnapshotIsSeenAtOnce) {
  ASSERT_EQ(ask("tcp-echo.ipv4.svc.cluster.local", rrtype::A)[0].addresses.size(), 1u);
  store.publish(snapshot::ClusterSnapshot::build(config::ClusterObjects{}, {"kind-worker"}));
  EXPECT_EQ(ask("tcp-echo.ipv4.svc.cluster.local", rrtype::A)[0].rcode, 3);
}

TEST_F(ResolverHandler, DuplicatesInFlightShareOneUpstreamQuery) {
  auto& first = ask("www.example.com", rrtype::A, 100);
  auto& second = ask("WWW.example.com", rrtype::A, 200);
  auto& other_type = ask("www.example.com", rrtype::AAAA, 300);
  EXPECT_EQ(upstream.pending.size(), 2u);  // A once, AAAA once
  EXPECT_EQ(handler().in_flight(), 2u);
  upstream.answer({ip("192.0.2.1")}, 120);
  ASSERT_EQ(first.size(), 1u);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(first[0].id, 100);
  EXPECT_EQ(second[0].id, 200);
  EXPECT_EQ(second[0].question, "WWW.example.com");  // the asker's own spelling
  EXPECT_EQ(first[0].addresses, std::vector<net::IpAddress>{ip("192.0.2.1")});
  EXPECT_TRUE(other_type.empty());
  upstream.answer({ip("2001:db8::1")}, 120);
  ASSERT_EQ(other_type.size(), 1u);
  EXPECT_EQ(handler().stats().forwarded.load(), 2u);
  EXPECT_EQ(handler().stats().coalesced.load(), 1u);
}

TEST_F(ResolverHandler, TooManyQuestionsInFlightAreServfailedAtOnce) {
  options.max_inflight = 2;
  options.max_waiters_per_question = 2;
  ask("a.example.com", rrtype::A);
  ask("b.example.com", rrtype::A);
  auto& third_name = ask("c.example.com", rrtype::A);
  ASSERT_EQ(third_name.size(), 1u) << "answered at once, not queued";
  EXPECT_EQ(third_name[0].rcode, 2);  // SERVFAIL
  ask("a.example.com", rrtype::A, 7);  // joins the first: 2 waiters
  auto& third_waiter = ask("a.example.com", rrtype::A, 8);
  ASSERT_EQ(third_waiter.size(), 1u);
  EXPECT_EQ(third_waiter[0].rcode, 2);
  EXPECT_EQ(upstream.pending.size(), 2u);
  EXPECT_EQ(handler().stats().overloaded.load(), 2u);
}

TEST_F(ResolverHandler, AnswersAreCachedForTheirTtlAndAged) {
  ask("www.example.com", rrtype::A);
  upstream.answer({ip("192.0.2.1")}, 60);
  now += 25s;
  auto& hit = ask("www.example.com", rrtype::A, 7);
  ASSERT_EQ(hit.size(), 1u);
  EXPECT_TRUE(upstream.pending.empty());
  EXPECT_EQ(hit[0].id, 7);
  EXPECT_EQ(hit[0].ttl, 35u);
  EXPECT_EQ(handler().stats().cache_hits.load(), 1u);
  now += 35s;  // expired exactly at 60 s
  ask("www.example.com", rrtype::A);
  EXPECT_EQ(upstream.pending.size(), 1u);
}

TEST_F(ResolverHandler, NegativeAnswersAreCachedByTheirSoa) {
  ask("nope.example.com", rrtype::A);
  upstream.answer({}, 0, Rcode::NxDomain, 10);
  now += 9s;
  EXPECT_EQ(ask("nope.example.com", rrtype::A)[0].rcode, 3);
  EXPECT_TRUE(upstream.pending.empty());
  now += 1s;
  ask("nope.example.com", rrtype::A);
  EXPECT_EQ(upstream.pending.size(), 1u);
}

TEST_F(ResolverHandler, ZeroTtlIsNotCached) {
  ask("zero.example.com", rrtype::A);
  upstream.answer({ip("192.0.2.9")}, 0);
  ask("zero.example.com", rrtype::A);
  EXPECT_EQ(upstream.pending.size(), 1u);
}

TEST_F(ResolverHandler, CacheCapsTtlAndEntries) {
  options.cache.max_ttl = 10s;
  options.cache.max_entries = 2;
  for (const char* n : {"a.example", "b.example", "c.example"}) {
    ask(n, rrtype::A);
    upstream.answer({ip("192.0.2.1")}, 1000);
  }
  EXPECT_EQ(handler().cache().size(), 2u);
  now += 10s;
  ask("c.example", rrtype::A);
  EXPECT_EQ(upstream.pending.size(), 1u);
}

TEST_F(ResolverHandler, UpstreamFailureIsServfailForEveryWaiterAndNotCached) {
  auto& a = ask("down.example", rrtype::A, 1);
  auto& b = ask("down.example", rrtype::A, 2);
  upstream.fail("timeout");
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0].rcode, 2);
  EXPECT_EQ(b[0].rcode, 2);
  EXPECT_EQ(b[0].id, 2);
  EXPECT_EQ(b[0].question, "down.example");
  EXPECT_EQ(handler().stats().upstream_failures.load(), 2u);
  ask("down.example", rrtype::A);
  EXPECT_EQ(upstream.pending.size(), 1u);
  EXPECT_EQ(handler().in_flight(), 1u);
}

TEST_F(ResolverHandler, BigUpstreamAnswersAreTruncatedForUdpOnly) {
  std::vector<net::IpAddress> many;
  for (int i = 0; i < 40; ++i) many.push_back(net::IpAddress::v4({192, 0, 2, static_cast<std::uint8_t>(i)}));
  auto& udp = ask("big.example", rrtype::A, 1, Transport::udp);
  upstream.answer(many, 60);
  ASSERT_EQ(udp.size(), 1u);
  EXPECT_TRUE(udp[0].tc);
  EXPECT_TRUE(udp[0].addresses.empty());
  auto& tcp = ask("big.example", rrtype::A, 2, Transport::tcp);  // from the cache, whole
  ASSERT_EQ(tcp.size(), 1u);
  EXPECT_FALSE(tcp[0].tc);
  EXPECT_EQ(tcp[0].addresses.size(), 40u);
  auto& edns = ask("big.example", rrtype::A, 3, Transport::udp, true);  // 1232 octets fit
  ASSERT_EQ(edns.size(), 1u);
  EXPECT_FALSE(edns[0].tc);
}

TEST_F(ResolverHandler, MalformedQueriesGetFormerrOrNothing) {
  std::vector<Bytes> replies;
  auto collect = [&](Bytes b) { replies.push_back(std::move(b)); };
  handler().handle(Bytes{1, 2, 3}, Transport::udp, collect);
  EXPECT_TRUE(replies.empty());
  Bytes two_questions = build_query(5, name("a.example"), rrtype::A);
  two_questions[5] = 2;
  handler().handle(two_questions, Transport::udp, collect);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(read_header(replies[0])->rcode(), 1);
  EXPECT_EQ(read_header(replies[0])->id, 5);
  Bytes response = build_query(6, name("a.example"), rrtype::A);
  response[2] |= 0x80;  // QR: a response must never be answered (reflection loops)
  handler().handle(response, Transport::udp, collect);
  EXPECT_EQ(replies.size(), 1u);
  EXPECT_EQ(handler().stats().formerr.load(), 1u);
  EXPECT_EQ(handler().stats().dropped.load(), 2u);
  EXPECT_TRUE(upstream.pending.empty());
}

}  // namespace resolver_handler_test
}  // namespace dsproxy::resolver
