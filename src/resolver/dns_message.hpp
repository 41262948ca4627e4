#pragma once
// DNS messages (RFC 1035, EDNS(0) from RFC 6891): parsing what clients and upstream servers send,
// and building the answers dsproxy gives itself.
//
// Our own code, not a library's: c-ares 1.18 (Debian 12) parses answers into hostent/addrinfo
// structures but cannot build a response message, and it cannot parse a query at all; the
// other candidates (ldns, libknot) are large C libraries for a few hundred lines of need. This
// parser reads untrusted network input, so it is written to be total: every read is bounds
// checked, compression pointers must point backwards (so no loop is possible) and their number
// is capped, names are limited to 255 octets and labels to 63, and every failure is a value,
// never an exception or a crash. It is fuzzed (fuzz/dns_message_fuzzer.cpp).
//
// No asio here: the model, the tests and the fuzzer use it without the network stack.

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "net/ip_address.hpp"

namespace dsproxy::resolver {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

namespace rrtype {
constexpr std::uint16_t A = 1;
constexpr std::uint16_t NS = 2;
constexpr std::uint16_t CNAME = 5;
constexpr std::uint16_t SOA = 6;
constexpr std::uint16_t PTR = 12;
constexpr std::uint16_t TXT = 16;
constexpr std::uint16_t AAAA = 28;
constexpr std::uint16_t SRV = 33;
constexpr std::uint16_t OPT = 41;
constexpr std::uint16_t ANY = 255;
}  // namespace rrtype

constexpr std::uint16_t kClassIN = 1;
constexpr std::size_t kHeaderSize = 12;
constexpr std::size_t kMaxNameLength = 255;  // wire octets, root label included
constexpr std::size_t kMaxLabelLength = 63;
constexpr std::uint16_t kClassicUdpSize = 512;
// What dsproxy advertises and accepts at most over UDP: the DNS flag day 2020 value, which fits
// any path MTU without fragmentation.
constexpr std::uint16_t kEdnsUdpSize = 1232;

enum class Rcode : std::uint8_t { NoError = 0, FormErr = 1, ServFail = 2, NxDomain = 3, NotImp = 4, Refused = 5 };
std::string_view to_string(Rcode r);

// A domain name as its labels (exact octets, case kept). The root name has no labels.
struct Name {
  std::vector<std::string> labels;

  // Presentation form without the trailing dot ("" for the root); '.', '\\' and octets outside
  // printable ASCII are escaped (\. \\ \DDD), so distinct names never print alike.
  std::string to_text() const;
  // to_text() with ASCII letters lowered: DNS names compare case-insensitively, and this is
  // the form every lookup and cache key uses.
  std::string key() const;
  // Parses presentation form ("tcp-echo.dual-stack.svc.cluster.local", trailing dot optional).
  // No escapes are understood; empty labels and over-long names/labels are rejected.
  static std::optional<Name> from_text(std::string_view text);
  // Number of wire octets, including the root label's terminating zero.
  std::size_t wire_length() const;

  bool operator==(const Name&) const = default;
};

// Lowers ASCII letters only (DNS case-insensitivity, RFC 4343).
std::string ascii_lower(std::string_view s);
// True when `name_key` is `zone_key` or a name below it (both from Name::key()).
bool in_zone(std::string_view name_key, std::string_view zone_key);

struct Header {
  std::uint16_t id = 0;
  std::uint16_t flags = 0;
  std::uint16_t qdcount = 0;
  std::uint16_t ancount = 0;
  std::uint16_t nscount = 0;
  std::uint16_t arcount = 0;

  bool qr() const { return flags & 0x8000; }
  std::uint8_t opcode() const { return (flags >> 11) & 0xf; }
  bool aa() const { return flags & 0x0400; }
  bool tc() const { return flags & 0x0200; }
  bool rd() const { return flags & 0x0100; }
  bool ra() const { return flags & 0x0080; }
  bool cd() const { return flags & 0x0010; }
  std::uint8_t rcode() const { return flags & 0xf; }
};

// Reads the fixed header; nullopt when fewer than 12 octets.
std::optional<Header> read_header(ByteView wire);

struct Question {
  Name name;
  std::uint16_t type = 0;
  std::uint16_t klass = 0;
};

struct Query {
  Header header;
  Question question;
  std::size_t question_end = 0;  // offset just past the question section in the raw query
  bool edns = false;
  std::uint16_t udp_size = kClassicUdpSize;  // the client's limit for a UDP answer (>= 512)
  std::uint8_t edns_version = 0;
  bool dnssec_ok = false;
};

// What to do with a message received on the DNS listener.
enum class QueryStatus {
  ok,        // a well-formed standard query for one question
  drop,      // not worth an answer: shorter than a header, or a response (QR set)
  formerr,   // answer FORMERR: a header we can echo, but the rest is malformed
  notimp,    // answer NOTIMP: an opcode other than QUERY
};

struct ParsedQuery {
  QueryStatus status = QueryStatus::drop;
  Query query;         // complete only with status ok; header valid unless drop
  std::string error;   // why, for logs and tests (empty when ok)
};

ParsedQuery parse_query(ByteView wire);

// Resource record data dsproxy writes itself.
struct SoaData {
  Name mname;
  Name rname;
  std::uint32_t serial = 1;
  std::uint32_t refresh = 7200;
  std::uint32_t retry = 1800;
  std::uint32_t expire = 86400;
  std::uint32_t minimum = 30;
};
using RData = std::variant<net::IpAddress, Name, SoaData>;  // A/AAAA, CNAME/PTR, SOA

struct Record {
  Name name;
  std::uint16_t type = 0;
  std::uint32_t ttl = 0;
  RData data;
};

// A response to `query` (whose raw bytes are `raw`: the question is copied verbatim, so the
// client's letter case comes back as sent). AA set when `authoritative`, RD copied, RA set. With
// EDNS in the query an OPT record advertising kEdnsUdpSize is added. If the message would not
// fit `max_size` octets, every record is dropped and TC set, so the client retries over TCP.
struct ResponseSpec {
  Rcode rcode = Rcode::NoError;
  bool authoritative = false;
  std::vector<Record> answers;
  std::vector<Record> authority;
};
Bytes build_response(const Query& query, ByteView raw, const ResponseSpec& spec, std::size_t max_size = 65535);

// An error answer (FORMERR, NOTIMP, SERVFAIL, REFUSED) for a message of which only the header
// (and, when `question_end` > 12, the question) is usable. Empty when `raw` has no header.
Bytes build_error(ByteView raw, Rcode rcode, std::size_t question_end = 0);

// The parts of a complete message dsproxy needs from an upstream answer: validated end to end.
struct MessageInfo {
  Header header;
  std::size_t question_end = 0;
  // Offsets of the 32-bit TTL field of every record except OPT, for ageing cached answers.
  std::vector<std::size_t> ttl_offsets;
  // Smallest TTL among the answer records; nullopt when there are none.
  std::optional<std::uint32_t> min_answer_ttl;
  // min(SOA TTL, SOA MINIMUM) of an SOA in the authority section (RFC 2308 negative TTL).
  std::optional<std::uint32_t> negative_ttl;
  Question question;  // the first question, if any (qdcount 0 leaves it empty)
  // A and AAAA data of the answer section whose owner is any name (CNAME chains included).
  std::vector<net::IpAddress> addresses;
  // CNAME targets in the answer section, in order.
  std::vector<Name> cnames;
  // Record types per section, in order (OPT included in additional).
  std::vector<std::uint16_t> answer_types;
  std::vector<std::uint16_t> authority_types;
};
struct ParsedMessage {
  std::optional<MessageInfo> info;
  std::string error;
};
ParsedMessage parse_message(ByteView wire);

// A copy of `response` with the ID and question section of `query_raw` (the same question up to
// letter case, the caller checks), every TTL at `ttl_offsets` reduced by `age_s` (not below 0),
// and truncated to header + question with TC set if longer than `max_size`.
Bytes adapt_response(ByteView response, const MessageInfo& info, ByteView query_raw, const Query& query,
                     std::uint32_t age_s, std::size_t max_size);

// A standard query (RD set) for `name`/`type`, optionally with an EDNS OPT record.
Bytes build_query(std::uint16_t id, const Name& name, std::uint16_t type, bool edns = false);

}  // namespace dsproxy::resolver
