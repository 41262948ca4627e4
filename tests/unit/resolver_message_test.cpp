// DNS message parsing and building: well-formed round trips, and malformed packets of every kind
// answered FORMERR or dropped, never a crash.

#include <gtest/gtest.h>

#include <random>

#include "resolver/dns_message.hpp"

namespace dsproxy::resolver {
namespace resolver_message_test {  // named: unity builds put several test files in one translation unit

Name name(const char* text) { return Name::from_text(text).value(); }
net::IpAddress ip(const char* text) { return net::IpAddress::parse(text).value(); }

TEST(ResolverMessage, NameTextAndKey) {
  EXPECT_EQ(name("Tcp-Echo.Dual-Stack.svc.cluster.local.").to_text(), "Tcp-Echo.Dual-Stack.svc.cluster.local");
  EXPECT_EQ(name("Tcp-Echo.Dual-Stack").key(), "tcp-echo.dual-stack");
  EXPECT_EQ(name("").labels.size(), 0u);
  EXPECT_FALSE(Name::from_text("a..b"));
  EXPECT_FALSE(Name::from_text(std::string(64, 'a')));
  EXPECT_TRUE(Name::from_text(std::string(63, 'a')));
  std::string long_name;
  for (int i = 0; i < 64; ++i) long_name += "abc.";
  EXPECT_FALSE(Name::from_text(long_name));  // 256 octets
  Name odd;
  odd.labels = {"a.b", std::string("\x01\\", 2)};
  EXPECT_EQ(odd.to_text(), "a\\.b.\\001\\\\");
}

TEST(ResolverMessage, InZoneNeedsALabelBoundary) {
  EXPECT_TRUE(in_zone("cluster.local", "cluster.local"));
  EXPECT_TRUE(in_zone("a.svc.cluster.local", "cluster.local"));
  EXPECT_FALSE(in_zone("xcluster.local", "cluster.local"));
  EXPECT_FALSE(in_zone("local", "cluster.local"));
  EXPECT_FALSE(in_zone("a\\.cluster.local", "cluster.local"));
  EXPECT_TRUE(in_zone("a\\\\.cluster.local", "cluster.local"));
}

TEST(ResolverMessage, ParsesAQueryWithEdns) {
  const Bytes q = build_query(0xbeef, name("tcp-echo.ipv4.svc.cluster.local"), rrtype::AAAA, true);
  const auto parsed = parse_query(q);
  ASSERT_EQ(parsed.status, QueryStatus::ok) << parsed.error;
  EXPECT_EQ(parsed.query.header.id, 0xbeef);
  EXPECT_TRUE(parsed.query.header.rd());
  EXPECT_EQ(parsed.query.question.name.to_text(), "tcp-echo.ipv4.svc.cluster.local");
  EXPECT_EQ(parsed.query.question.type, rrtype::AAAA);
  EXPECT_EQ(parsed.query.question.klass, kClassIN);
  EXPECT_TRUE(parsed.query.edns);
  EXPECT_EQ(parsed.query.udp_size, kEdnsUdpSize);
  EXPECT_EQ(parsed.query.question_end, 12u + 33u + 4u);
}

TEST(ResolverMessage, BuildsAnAnswerWithCompressionAndKeepsTheQuestionCase) {
  const Bytes q = build_query(7, name("TCP-echo.dual-stack.svc.cluster.local"), rrtype::ANY);
  const auto parsed = parse_query(q);
  ASSERT_EQ(parsed.status, QueryStatus::ok);
  ResponseSpec spec;
  spec.authoritative = true;
  spec.answers.push_back(Record{parsed.query.question.name, rrtype::A, 30, ip("10.96.106.11")});
  spec.answers.push_back(Record{parsed.query.question.name, rrtype::AAAA, 30, ip("fd00:10:96::f9fc")});
  spec.answers.push_back(Record{parsed.query.question.name, rrtype::CNAME, 30, name("other.svc.cluster.local")});
  const Bytes r = build_response(parsed.query, q, spec);
  const auto info = parse_message(r);
  ASSERT_TRUE(info.info) << info.error;
  EXPECT_EQ(info.info->header.id, 7);
  EXPECT_TRUE(info.info->header.qr());
  EXPECT_TRUE(info.info->header.aa());
  EXPECT_TRUE(info.info->header.ra());
  EXPECT_EQ(info.info->header.rcode(), 0);
  EXPECT_EQ(info.info->question.name.to_text(), "TCP-echo.dual-stack.svc.cluster.local");
  EXPECT_EQ(info.info->addresses, (std::vector<net::IpAddress>{ip("10.96.106.11"), ip("fd00:10:96::f9fc")}));
  ASSERT_EQ(info.info->cnames.size(), 1u);
  EXPECT_EQ(info.info->cnames[0].to_text(), "other.svc.cluster.local");
  EXPECT_EQ(info.info->min_answer_ttl, 30u);
  // Owners are pointers to the question (2 octets each), the CNAME target shares svc.cluster.local.
  EXPECT_EQ(r.size(), q.size() + (2 + 10 + 4) + (2 + 10 + 16) + (2 + 10 + 6 + 2));
}

TEST(ResolverMessage, TooBigForTheClientMeansTruncated) {
  const Bytes q = build_query(9, name("many.example"), rrtype::A);
  const auto parsed = parse_query(q);
  ResponseSpec spec;
  for (int i = 0; i < 40; ++i)
    spec.answers.push_back(
        Record{parsed.query.question.name, rrtype::A, 30, net::IpAddress::v4({10, 0, 0, static_cast<std::uint8_t>(i)})});
  const Bytes full = build_response(parsed.query, q, spec);
  EXPECT_GT(full.size(), 512u);
  const Bytes cut = build_response(parsed.query, q, spec, 512);
  const auto info = parse_message(cut);
  ASSERT_TRUE(info.info);
  EXPECT_TRUE(info.info->header.tc());
  EXPECT_EQ(info.info->header.ancount, 0);
  EXPECT_EQ(cut.size(), q.size());
}

TEST(ResolverMessage, NegativeTtlFromTheSoa) {
  const Bytes q = build_query(1, name("nope.cluster.local"), rrtype::A);
  const auto parsed = parse_query(q);
  ResponseSpec spec;
  spec.rcode = Rcode::NxDomain;
  SoaData soa{name("ns.dns.cluster.local"), name("hostmaster.cluster.local"), 1, 7200, 1800, 86400, 5};
  spec.authority.push_back(Record{name("cluster.local"), rrtype::SOA, 30, soa});
  const auto info = parse_message(build_response(parsed.query, q, spec));
  ASSERT_TRUE(info.info) << info.error;
  EXPECT_EQ(info.info->header.rcode(), 3);
  EXPECT_EQ(info.info->negative_ttl, 5u);
  EXPECT_EQ(info.info->authority_types, std::vector<std::uint16_t>{rrtype::SOA});
}

TEST(ResolverMessage, AdaptResponseRewritesIdCaseAndAgesTtls) {
  const Bytes q1 = build_query(1, name("www.example.com"), rrtype::A);
  const auto p1 = parse_query(q1);
  ResponseSpec spec;
  spec.answers.push_back(Record{p1.query.question.name, rrtype::A, 100, ip("192.0.2.1")});
  const Bytes r = build_response(p1.query, q1, spec);
  const auto info = parse_message(r).info.value();
  const Bytes q2 = build_query(2, name("WWW.Example.COM"), rrtype::A);
  const auto p2 = parse_query(q2);
  const Bytes adapted = adapt_response(r, info, q2, p2.query, 40, 512);
  const auto info2 = parse_message(adapted).info.value();
  EXPECT_EQ(info2.header.id, 2);
  EXPECT_EQ(info2.question.name.to_text(), "WWW.Example.COM");
  EXPECT_EQ(info2.min_answer_ttl, 60u);
  EXPECT_EQ(parse_message(adapt_response(r, info, q2, p2.query, 1000, 512)).info->min_answer_ttl, 0u);
}

// ---- malformed input ----------------------------------------------------------------------

Bytes header(std::uint16_t flags, std::uint16_t qd, std::uint16_t an = 0, std::uint16_t ns = 0, std::uint16_t ar = 0) {
  return {0x12, 0x34, static_cast<std::uint8_t>(flags >> 8), static_cast<std::uint8_t>(flags),
          0, static_cast<std::uint8_t>(qd), 0, static_cast<std::uint8_t>(an), 0, static_cast<std::uint8_t>(ns),
          0, static_cast<std::uint8_t>(ar)};
}
Bytes cat(Bytes a, std::initializer_list<std::uint8_t> b) {
  a.insert(a.end(), b);
  return a;
}

struct Malformed {
  const char* what;
  Bytes wire;
  QueryStatus expected;
};

TEST(ResolverMessage, MalformedQueriesAreFormerrOrDropped) {
  const std::vector<Malformed> cases = {
      {"empty", {}, QueryStatus::drop},
      {"11 octets", Bytes(11, 0), QueryStatus::drop},
      {"a response", cat(header(0x8100, 1), {0, 0, 1, 0, 1}), QueryStatus::drop},
      {"no question", header(0x0100, 0), QueryStatus::formerr},
      {"two questions", cat(header(0x0100, 2), {0, 0, 1, 0, 1, 0, 0, 1, 0, 1}), QueryStatus::formerr},
      {"answers in a query", cat(header(0x0100, 1, 1), {0, 0, 1, 0, 1}), QueryStatus::formerr},
      {"opcode STATUS", cat(header(0x1100, 1), {0, 0, 1, 0, 1}), QueryStatus::notimp},
      {"name past the end", cat(header(0x0100, 1), {5, 'a', 'b'}), QueryStatus::formerr},
      {"no root label", cat(header(0x0100, 1), {1, 'a'}), QueryStatus::formerr},
      {"missing type", cat(header(0x0100, 1), {1, 'a', 0, 0}), QueryStatus::formerr},
      {"pointer in the question", cat(header(0x0100, 1), {0xc0, 0x0c, 0, 1, 0, 1}), QueryStatus::formerr},
      {"pointer to itself", cat(header(0x0100, 1), {0xc0, 12, 0, 1, 0, 1}), QueryStatus::formerr},
      {"reserved label type", cat(header(0x0100, 1), {0x40, 0, 0, 1, 0, 1}), QueryStatus::formerr},
      {"label of 64", [] {
         Bytes b = header(0x0100, 1);
         b.push_back(64);
         b.insert(b.end(), 64, 'a');
         return cat(b, {0, 0, 1, 0, 1});
       }(), QueryStatus::formerr},
      {"name of 256", [] {
         Bytes b = header(0x0100, 1);
         for (int i = 0; i < 4; ++i) {
           b.push_back(63);
           b.insert(b.end(), 63, 'a');
         }
         b.push_back(0);
         return cat(b, {0, 1, 0, 1});
       }(), QueryStatus::formerr},
      {"OPT past the end", cat(header(0x0100, 1, 0, 0, 1), {0, 0, 1, 0, 1, 0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 9}),
       QueryStatus::formerr},
      {"two OPTs", cat(header(0x0100, 1, 0, 0, 2), {0, 0, 1, 0, 1, 0, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 41, 2, 0,
                                                    0, 0, 0, 0, 0, 0}),
       QueryStatus::formerr},
      {"OPT not at the root", cat(header(0x0100, 1, 0, 0, 1), {0, 0, 1, 0, 1, 1, 'a', 0, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0}),
       QueryStatus::formerr},
      {"additional pointer loop", cat(header(0x0100, 1, 0, 0, 1), {0, 0, 1, 0, 1, 0xc0, 17, 0, 41}),
       QueryStatus::formerr},
  };
  for (const auto& c : cases) {
    const auto parsed = parse_query(c.wire);
    EXPECT_EQ(parsed.status, c.expected) << c.what << ": " << parsed.error;
    EXPECT_EQ(parsed.status == QueryStatus::ok, parsed.error.empty()) << c.what;
    if (c.expected == QueryStatus::formerr || c.expected == QueryStatus::notimp) {
      const Bytes err = build_error(c.wire, c.expected == QueryStatus::formerr ? Rcode::FormErr : Rcode::NotImp);
      const auto h = read_header(err).value();
      EXPECT_EQ(h.id, 0x1234) << c.what;
      EXPECT_TRUE(h.qr()) << c.what;
      EXPECT_EQ(h.rcode(), c.expected == QueryStatus::formerr ? 1 : 4) << c.what;
      EXPECT_EQ(h.qdcount + h.ancount + h.nscount + h.arcount, 0) << c.what;
    }
  }
}

TEST(ResolverMessage, MalformedResponsesAreRejected) {
  // Upstream answers: a compression loop, a forward pointer, rdata past the end, a bad SOA.
  const Bytes q = build_query(1, name("a.example"), rrtype::A);
  Bytes loop = cat(header(0x8180, 1, 1), {1, 'a', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1});
  const std::size_t at = loop.size();
  loop = cat(loop, {0xc0, static_cast<std::uint8_t>(at), 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 1, 2, 3, 4});
  EXPECT_FALSE(parse_message(loop).info);
  Bytes forward = cat(header(0x8180, 1, 1), {1, 'a', 0, 0, 1, 0, 1, 0xc0, 40, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 1, 2, 3, 4});
  EXPECT_FALSE(parse_message(forward).info);
  Bytes past = cat(header(0x8180, 1, 1), {1, 'a', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 9, 1, 2, 3, 4});
  EXPECT_FALSE(parse_message(past).info);
  Bytes soa = cat(header(0x8183, 1, 0, 1), {1, 'a', 0, 0, 1, 0, 1, 0xc0, 12, 0, 6, 0, 1, 0, 0, 0, 30, 0, 3, 0, 0, 0});
  EXPECT_FALSE(parse_message(soa).info);
  Bytes good = cat(header(0x8180, 1, 1), {1, 'a', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 1, 2, 3, 4});
  ASSERT_TRUE(parse_message(good).info);
  EXPECT_EQ(parse_message(good).info->addresses, std::vector<net::IpAddress>{ip("1.2.3.4")});
}

// A quick in-process stand-in for the fuzzer (fuzz/run_fuzz.sh dns_message is the real pass):
// random messages and byte mutations of a good query. Not crashing is checked only by a
// sanitizer build; without one, this test holds the parsers to what their contracts promise
// for every input, and counts the outcomes so it cannot pass by never reaching a parser.
TEST(ResolverMessage, RandomBytesKeepTheParsersContracts) {
  std::mt19937 rng(4);
  const Bytes seed = build_query(1, name("tcp-echo.dual-stack.svc.cluster.local"), rrtype::A, true);
  int queries_ok = 0, queries_refused = 0, messages_ok = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes b;
    if (i % 2) {
      b.resize(rng() % 80);
      for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    } else {
      b = seed;
      for (int m = 0; m < 3; ++m) b[rng() % b.size()] = static_cast<std::uint8_t>(rng());
    }
    SCOPED_TRACE("input " + std::to_string(i));
    const auto header = read_header(b);
    ASSERT_EQ(header.has_value(), b.size() >= kHeaderSize);

    // parse_query: drop exactly for no header or a response; any other failure says why.
    const auto q = parse_query(b);
    ASSERT_EQ(q.status == QueryStatus::drop, !header || header->qr());
    ASSERT_EQ(q.error.empty(), q.status == QueryStatus::ok) << q.error;
    if (header && !header->qr()) ASSERT_EQ(q.status == QueryStatus::notimp, header->opcode() != 0);
    if (q.status == QueryStatus::ok) {
      ++queries_ok;
      ASSERT_EQ(header->qdcount, 1);
      ASSERT_LE(q.query.question_end, b.size());
      ASSERT_EQ(q.query.question_end, kHeaderSize + q.query.question.name.wire_length() + 4);
      ASSERT_LE(q.query.question.name.wire_length(), kMaxNameLength);
      for (const auto& l : q.query.question.name.labels) ASSERT_TRUE(!l.empty() && l.size() <= kMaxLabelLength);
      ASSERT_GE(q.query.udp_size, kClassicUdpSize);
      // Our answer to it is a well-formed response to the same question, within the size asked.
      const Bytes r = build_response(q.query, b, ResponseSpec{}, 512);
      ASSERT_LE(r.size(), 512u);
      const auto rm = parse_message(r);
      ASSERT_TRUE(rm.info) << rm.error;
      EXPECT_TRUE(rm.info->header.qr());
      EXPECT_EQ(rm.info->header.id, header->id);
      EXPECT_EQ(rm.info->question.name, q.query.question.name);
      EXPECT_EQ(rm.info->question.type, q.query.question.type);
    } else if (q.status != QueryStatus::drop) {
      ++queries_refused;
    }

    // parse_message: everything it reports lies inside the message and matches its header.
    const auto m = parse_message(b);
    ASSERT_EQ(m.info.has_value(), m.error.empty()) << m.error;
    if (m.info) {
      ++messages_ok;
      ASSERT_TRUE(header);
      EXPECT_EQ(m.info->header.id, header->id);
      EXPECT_EQ(m.info->header.flags, header->flags);
      ASSERT_LE(m.info->question_end, b.size());
      ASSERT_EQ(m.info->answer_types.size(), header->ancount);
      ASSERT_EQ(m.info->authority_types.size(), header->nscount);
      for (std::size_t at : m.info->ttl_offsets) ASSERT_LE(at + 4, b.size());
      if (q.status == QueryStatus::ok) {
        // Adapting it to the query keeps the query's ID and never exceeds the size asked.
        const Bytes adapted = adapt_response(b, *m.info, b, q.query, 1, 512);
        ASSERT_GE(adapted.size(), kHeaderSize);
        EXPECT_LE(adapted.size(), 512u);
        EXPECT_EQ(read_header(adapted)->id, q.query.header.id);
      }
    }

    // build_error: nothing without a header, else a response with the same ID and the rcode.
    const Bytes e = build_error(b, Rcode::FormErr);
    if (!header) {
      ASSERT_TRUE(e.empty());
    } else {
      const auto eh = read_header(e);
      ASSERT_TRUE(eh);
      EXPECT_EQ(eh->id, header->id);
      EXPECT_TRUE(eh->qr());
      EXPECT_EQ(eh->rcode(), static_cast<std::uint8_t>(Rcode::FormErr));
      EXPECT_TRUE(parse_message(e).info) << parse_message(e).error;
    }
  }
  // Mutations of a good query must reach every branch, or this test checks nothing.
  EXPECT_GT(queries_ok, 1000);
  EXPECT_GT(queries_refused, 1000);
  EXPECT_GT(messages_ok, 1000);
}

}  // namespace resolver_message_test
}  // namespace dsproxy::resolver
