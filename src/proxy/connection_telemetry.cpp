#include "proxy/connection_telemetry.hpp"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

namespace dsproxy::proxy {

std::optional<AccessLogFormat> parse_access_log_format(std::string_view text) {
  if (text == "off") return AccessLogFormat::off;
  if (text == "text") return AccessLogFormat::text;
  if (text == "json") return AccessLogFormat::json;
  return std::nullopt;
}

namespace {

// PIPE_BUF on Linux: a write(2) of at most this many bytes to a pipe is atomic.
constexpr std::size_t kBatch = 4096;
// A worker with this much pending wakes the writer before its interval (about 110 json lines:
// one futex wake per 110 connections at most).
constexpr std::size_t kWakeAt = 64 * 1024;
// A worker's bound while the writer cannot write (a stuck pipe): past it, lines are dropped.
constexpr std::size_t kMaxPending = 1024 * 1024;

// How long the writer waits for a stderr that takes nothing before it counts the rest of its
// pass as dropped: bounds the exit (the destructor's last flush) when the log reader is stuck.
constexpr int kStuckOutputMs = 1000;

bool write_stderr(std::string_view lines) {
  std::size_t done = 0;
  while (done < lines.size()) {
    // Wait for room first, with a bound: a blocking write(2) to a pipe whose reader is stuck
    // would never return. POLLOUT on a pipe means at least PIPE_BUF bytes free, so a batch
    // (at most PIPE_BUF) then goes in whole; a non-blocking stderr (EAGAIN) waits here too.
    pollfd pfd{STDERR_FILENO, POLLOUT, 0};
    const int ready = ::poll(&pfd, 1, kStuckOutputMs);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    const ssize_t n = ::write(STDERR_FILENO, lines.data() + done, lines.size() - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;  // stderr gone: counted as dropped, the connections are not affected
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// Istio's label for "we do not know": ztunnel's DefaultedUnknown.
constexpr std::string_view kUnknown = "unknown";
// Istio's default cluster ID (istiod's --clusterID, "Kubernetes" unless set): the only cluster
// dsproxy knows about.
constexpr std::string_view kClusterId = "Kubernetes";

}  // namespace

namespace {

void write_decimal(char*& p, unsigned v) {
  char digits[10];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) *p++ = digits[--n];
}

// The address part of format_address ("10.0.0.1", "[fd00::1]") at `p`; returns its end, or
// nullptr for the rare IPv6 forms left to inet_ntop (see there).
char* write_ip(const net::IpAddress& ip, char* p) {
  const auto& b = ip.bytes();
  if (ip.is_v4()) {
    for (int i = 0; i < 4; ++i) {
      if (i) *p++ = '.';
      write_decimal(p, b[static_cast<std::size_t>(i)]);
    }
    return p;
  }
  std::uint16_t g[8];
  for (int i = 0; i < 8; ++i)
    g[i] = static_cast<std::uint16_t>(b[static_cast<std::size_t>(2 * i)] << 8 | b[static_cast<std::size_t>(2 * i + 1)]);
  // inet_ntop writes an embedded IPv4 address when the first 96 bits are zero (or a mapped
  // prefix); those rare forms are left to it.
  if (g[0] == 0 && g[1] == 0 && g[2] == 0 && g[3] == 0 && g[4] == 0 && (g[5] == 0 || g[5] == 0xffff)) return nullptr;
  // RFC 5952: the longest run of two or more zero groups (the first of equal ones) becomes "::".
  int best = -1, best_len = 0;
  for (int i = 0; i < 8;) {
    if (g[i] != 0) {
      ++i;
      continue;
    }
    int j = i;
    while (j < 8 && g[j] == 0) ++j;
    if (j - i > best_len && j - i >= 2) {
      best = i;
      best_len = j - i;
    }
    i = j;
  }
  *p++ = '[';
  for (int i = 0; i < 8; ++i) {
    if (i == best) {
      *p++ = ':';
      *p++ = ':';
      i += best_len - 1;
      continue;
    }
    if (i && i != best + best_len) *p++ = ':';
    static constexpr char kHex[] = "0123456789abcdef";
    bool started = false;
    for (int shift = 12; shift >= 0; shift -= 4) {
      const unsigned nibble = (g[i] >> shift) & 0xf;
      if (nibble || started || shift == 0) {
        *p++ = kHex[nibble];
        started = true;
      }
    }
  }
  *p++ = ']';
  return p;
}

}  // namespace

// glibc's inet_ntop formats every IPv4 octet and IPv6 group with sprintf: about 2,000
// instructions an address, three addresses a line, a quarter of what a JSON line cost
// (callgrind). The same text, written directly.
std::string_view format_address(const net::SocketAddress& a, AddressText& out) {
  char* p = write_ip(a.ip, out.data());
  if (!p) {
    const std::string text = a.to_string();
    const std::size_t n = std::min(text.size(), out.size());
    std::copy_n(text.data(), n, out.data());
    return {out.data(), n};
  }
  *p++ = ':';
  write_decimal(p, a.port);
  return {out.data(), static_cast<std::size_t>(p - out.data())};
}

namespace {

// The text of the addresses a worker logs over and over (its pods, the ClusterIPs, the
// endpoints), per thread: a line has three, and an IPv6 one costs about 350 instructions to
// write out, a lookup here a few dozen. Two-way set associative on a hash of the address (the
// most recent of a set first), 256 entries: a collision only rewrites an entry.
class IpTextCache {
 public:
  // The text of `ip` as write_ip writes it, or an empty view for the forms it leaves to inet_ntop.
  std::string_view text(const net::IpAddress& ip) {
    // All four words: a node's pods and its ClusterIPs share their first ones, and often their
    // last (fd00:10:244::a, fd00:10:96::a).
    std::uint32_t w[4];
    std::memcpy(w, ip.bytes().data(), sizeof w);
    std::uint64_t h = (std::uint64_t{w[0]} ^ std::uint64_t{w[1]} << 32) * 0x9e3779b97f4a7c15ull;
    h = (h ^ h >> 29 ^ w[2] ^ std::uint64_t{w[3]} << 32) * 0xbf58476d1ce4e5b9ull;
    Entry* set = &entries_[2 * static_cast<std::size_t>(h >> (64 - kSetBits))];
    if (set[0].size && set[0].ip == ip) return {set[0].text, set[0].size};
    if (set[1].size && set[1].ip == ip) {
      std::swap(set[0], set[1]);
      return {set[0].text, set[0].size};
    }
    Entry fresh;
    char* end = write_ip(ip, fresh.text);
    if (!end) return {};
    fresh.ip = ip;
    fresh.size = static_cast<std::uint8_t>(end - fresh.text);
    set[1] = set[0];
    set[0] = fresh;
    return {set[0].text, set[0].size};
  }

 private:
  static constexpr int kSetBits = 7;
  struct Entry {
    net::IpAddress ip;
    std::uint8_t size = 0;  // 0: empty
    char text[46];          // "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]" is 41
  };
  std::array<Entry, std::size_t{2} << kSetBits> entries_{};
};

std::string_view family_name(const net::IpAddress& ip) { return ip.is_v4() ? "IPv4" : "IPv6"; }

std::int64_t duration_ms(const ConnectionRecord& r) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(r.duration).count();
}

// Bytes as ztunnel logs them: sent/received by this node's pod of the connection (the client,
// outbound; the server, inbound).
std::uint64_t bytes_sent(const ConnectionRecord& r) {
  return r.direction == Direction::outbound ? r.bytes_to_upstream : r.bytes_to_downstream;
}
std::uint64_t bytes_recv(const ConnectionRecord& r) {
  return r.direction == Direction::outbound ? r.bytes_to_downstream : r.bytes_to_upstream;
}

// Writes one line into an AccessLogLine through a plain pointer: the line's bound is reserved
// once (so no append checks capacity), and each piece is a memcpy or a few stores. fmt's buffer
// appends cost about as much as the rest of the line together (callgrind).
class LineWriter {
 public:
  // `names`: the total length of the strings from the cluster (names, principals, policy), which
  // JSON escaping may grow up to sixfold; everything else fits in kFixed.
  LineWriter(AccessLogLine& out, std::size_t names) : out_(out), start_(out.size()) {
    out_.resize(start_ + kFixed + 6 * names);
    p_ = out_.data() + start_;
  }
  ~LineWriter() { out_.resize(static_cast<std::size_t>(p_ - out_.data())); }
  LineWriter(const LineWriter&) = delete;
  LineWriter& operator=(const LineWriter&) = delete;

  void raw(std::string_view s) {
    std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
  }
  void ch(char c) { *p_++ = c; }
  void number(std::uint64_t n) {
    char digits[20];
    int i = 0;
    do {
      digits[i++] = static_cast<char>('0' + n % 10);
      n /= 10;
    } while (n);
    while (i) *p_++ = digits[--i];
  }
  void boolean(bool b) { raw(b ? std::string_view("true") : std::string_view("false")); }
  void address(const net::SocketAddress& a) {
    thread_local IpTextCache cache;
    const std::string_view ip = cache.text(a.ip);
    if (ip.empty()) {
      AddressText text;
      raw(format_address(a, text));
      return;
    }
    raw(ip);
    ch(':');
    number(a.port);
  }
  // A JSON string's contents. Kubernetes names and SPIFFE URIs need no escaping, but nothing
  // here relies on it: quotes, backslashes and control characters are escaped (other bytes pass
  // as they are: the names are UTF-8).
  void json_escaped(std::string_view s) {
    if (!needs_escape(s)) {
      raw(s);
      return;
    }
    std::size_t start = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c >= 0x20 && c != '"' && c != '\\') continue;
      raw(s.substr(start, i - start));
      start = i + 1;
      ch('\\');
      switch (c) {
        case '"': ch('"'); break;
        case '\\': ch('\\'); break;
        case '\n': ch('n'); break;
        case '\r': ch('r'); break;
        case '\t': ch('t'); break;
        default: {
          static constexpr char kHex[] = "0123456789abcdef";
          raw("u00");
          ch(kHex[c >> 4]);
          ch(kHex[c & 0xf]);
        }
      }
    }
    raw(s.substr(start));
  }
  // Eight bytes at a time (a byte-wise test cost more than the rest of the line): whether any
  // byte is a control character, '"' or '\\'.
  static bool needs_escape(std::string_view s) {
    constexpr std::uint64_t kOnes = 0x0101010101010101ull, kHigh = 0x8080808080808080ull;
    auto any_zero = [](std::uint64_t x) { return (x - kOnes) & ~x & kHigh; };
    std::size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      std::uint64_t x;
      std::memcpy(&x, s.data() + i, 8);
      if (((x - 0x20 * kOnes) & ~x & kHigh) | any_zero(x ^ ('"' * kOnes)) | any_zero(x ^ ('\\' * kOnes)))
        return true;
    }
    for (; i < s.size(); ++i) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c < 0x20 || c == '"' || c == '\\') return true;
    }
    return false;
  }
  // RFC 3339 in UTC with milliseconds, of the close. The date and time of day are formatted once
  // per second per thread: gmtime_r and the formatting showed up in the per-connection profile.
  void end_time(const ConnectionRecord& r) {
    thread_local std::int64_t cached_second = -1;
    thread_local char cached[24];  // "YYYY-MM-DDTHH:MM:SS"
    const auto end = r.start_wall + std::chrono::duration_cast<std::chrono::system_clock::duration>(r.duration);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(end.time_since_epoch()).count();
    const std::int64_t second = ms / 1000;
    if (second != cached_second) {
      const std::time_t secs = static_cast<std::time_t>(second);
      std::tm tm{};
      gmtime_r(&secs, &tm);
      fmt::format_to_n(cached, sizeof cached - 1, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
      cached[19] = '\0';
      cached_second = second;
    }
    const int milli = static_cast<int>(ms % 1000);
    raw({cached, 19});
    ch('.');
    ch(static_cast<char>('0' + milli / 100));
    ch(static_cast<char>('0' + milli / 10 % 10));
    ch(static_cast<char>('0' + milli % 10));
    ch('Z');
  }

  // JSON: ,"key":"value" / ,"key":number / ,"key":bool (the keys are ours: no escaping).
  void field(std::string_view key, std::string_view value) {
    key_of(key);
    ch('"');
    json_escaped(value);
    ch('"');
  }
  void field(std::string_view key, std::uint64_t value) {
    key_of(key);
    number(value);
  }
  void field(std::string_view key, bool value) {
    key_of(key);
    boolean(value);
  }
  // One of our own words (enum names): nothing to escape.
  void word(std::string_view key, std::string_view value) {
    key_of(key);
    ch('"');
    raw(value);
    ch('"');
  }
  void address_field(std::string_view key, const net::SocketAddress& a) {
    key_of(key);
    ch('"');
    address(a);
    ch('"');
  }

 private:
  // Every key, address, number and word of ours in one line, with room to spare (about 900).
  static constexpr std::size_t kFixed = 1536;
  void key_of(std::string_view key) {
    ch(',');
    ch('"');
    raw(key);
    ch('"');
    ch(':');
  }
  AccessLogLine& out_;
  std::size_t start_;
  char* p_ = nullptr;
};

std::size_t names_length(const ConnectionRecord& r) {
  std::size_t n = r.policy.size();
  if (r.source_workload) n += r.source_workload->pod.size() + r.source_workload->ns.size();
  if (r.destination_workload) n += r.destination_workload->pod.size() + r.destination_workload->ns.size();
  if (r.service) n += r.service->hostname.size();
  if (r.source_principal) n += r.source_principal->size();
  if (r.destination_principal) n += r.destination_principal->size();
  return n;
}

// "key=value" pairs, no escaping: every value is a Kubernetes name, an address, a number or one of
// our words, none of which holds a space.
void text_body(const ConnectionRecord& r, LineWriter& w) {
  w.raw("connection complete src.addr=");
  w.address(r.source);
  if (r.source_workload) {
    w.raw(" src.workload=");
    w.raw(r.source_workload->pod);
    w.raw(" src.namespace=");
    w.raw(r.source_workload->ns);
  }
  if (r.source_principal) {
    w.raw(" src.identity=");
    w.raw(*r.source_principal);
  }
  w.raw(" dst.addr=");
  w.address(r.destination);
  if (r.service) {
    w.raw(" dst.service=");
    w.raw(r.service->hostname);
  }
  if (r.destination_workload) {
    w.raw(" dst.workload=");
    w.raw(r.destination_workload->pod);
    w.raw(" dst.namespace=");
    w.raw(r.destination_workload->ns);
  }
  if (r.destination_principal) {
    w.raw(" dst.identity=");
    w.raw(*r.destination_principal);
  }
  w.raw(" direction=");
  w.raw(to_string(r.direction));
  if (r.protocol != RequestProtocol::tcp) {
    w.raw(" protocol=");
    w.raw(to_string(r.protocol));
  }
  if (r.endpoint) {
    w.raw(" endpoint=");
    w.address(*r.endpoint);
    w.raw(" family=");
    w.raw(family_name(r.endpoint->ip));
    w.raw(" fallback=");
    w.boolean(r.fell_back);
    w.raw(" happy_eyeballs_other_family=");
    w.boolean(r.second_family_won);
  }
  w.raw(" retries=");
  w.number(r.retries);
  w.raw(" bytes_sent=");
  w.number(bytes_sent(r));
  w.raw(" bytes_recv=");
  w.number(bytes_recv(r));
  w.raw(" duration=");
  w.number(static_cast<std::uint64_t>(std::max<std::int64_t>(0, duration_ms(r))));
  w.raw("ms reason=");
  w.raw(to_string(r.reason));
  if (r.reason != EndReason::completed) {
    w.raw(" error=");
    w.raw(to_string(r.reason));
  }
  if (!r.policy.empty()) {
    w.raw(" policy=");
    w.raw(r.policy);
  }
}

}  // namespace

std::string format_access_log_text(const ConnectionRecord& r) {
  AccessLogLine out;
  {
    LineWriter w(out, names_length(r));
    text_body(r, w);
  }
  return fmt::to_string(out);
}

void append_access_log_text(const ConnectionRecord& r, AccessLogLine& out) {
  LineWriter w(out, names_length(r));
  w.end_time(r);
  w.raw(" info access ");
  text_body(r, w);
}

// Field by field into the line (no JSON object built, no allocation): a fixed order, each key once.
void append_access_log_json(const ConnectionRecord& r, AccessLogLine& out) {
  LineWriter w(out, names_length(r));
  w.raw("{\"timestamp\":\"");
  w.end_time(r);
  w.raw("\",\"message\":\"connection complete\"");
  w.address_field("src.addr", r.source);
  if (r.source_workload) {
    w.field("src.workload", r.source_workload->pod);
    w.field("src.namespace", r.source_workload->ns);
  }
  if (r.source_principal) w.field("src.identity", *r.source_principal);
  w.address_field("dst.addr", r.destination);
  if (r.service) w.field("dst.service", r.service->hostname);
  if (r.destination_workload) {
    w.field("dst.workload", r.destination_workload->pod);
    w.field("dst.namespace", r.destination_workload->ns);
  }
  if (r.destination_principal) w.field("dst.identity", *r.destination_principal);
  w.word("direction", to_string(r.direction));
  if (r.protocol != RequestProtocol::tcp) w.word("protocol", to_string(r.protocol));
  if (r.endpoint) {
    w.address_field("endpoint", *r.endpoint);
    w.word("family", family_name(r.endpoint->ip));
    w.field("fallback", r.fell_back);
    w.field("happy_eyeballs_other_family", r.second_family_won);
  }
  w.field("retries", std::uint64_t{r.retries});
  w.field("bytes_sent", bytes_sent(r));
  w.field("bytes_recv", bytes_recv(r));
  w.raw(",\"duration\":\"");
  w.number(static_cast<std::uint64_t>(std::max<std::int64_t>(0, duration_ms(r))));
  w.raw("ms\"");
  w.word("reason", to_string(r.reason));
  if (r.reason != EndReason::completed) w.word("error", to_string(r.reason));
  if (!r.policy.empty()) w.field("policy", std::string_view(r.policy));
  w.ch('}');
}

std::string format_access_log_json(const ConnectionRecord& r) {
  AccessLogLine out;
  append_access_log_json(r, out);
  return fmt::to_string(out);
}


namespace {

// The Istio TCP label names, in ztunnel's order; the values below follow the same order.
constexpr std::array<std::string_view, 23> kLabelNames = {
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
};
using LabelValues = std::array<std::string, kLabelNames.size()>;

LabelValues label_values(const ConnectionRecord& r) {
  auto v = [](const std::string* s) { return s && !s->empty() ? *s : std::string(kUnknown); };
  const WorkloadInfo* src = r.source_workload.get();
  const WorkloadInfo* dst = r.destination_workload.get();
  const ServiceInfo* svc = r.service.get();
  // Principals only from a verified handshake (HBONE), as ztunnel sets them; plain TCP proves
  // none, so they stay "unknown", and so does the security policy.
  auto principal = [](const std::shared_ptr<const std::string>& p) {
    return p && !p->empty() ? *p : std::string(kUnknown);
  };
  return LabelValues{
      std::string(r.direction == Direction::outbound ? "source" : "destination"),
      v(src ? &src->workload : nullptr),
      v(src ? &src->app : nullptr),
      v(src ? &src->version : nullptr),
      v(src ? &src->ns : nullptr),
      principal(r.source_principal),
      v(src ? &src->app : nullptr),
      v(src ? &src->version : nullptr),
      std::string(src ? kClusterId : kUnknown),
      v(svc ? &svc->hostname : nullptr),
      v(svc ? &svc->ns : nullptr),
      v(svc ? &svc->name : nullptr),
      v(dst ? &dst->workload : nullptr),
      v(dst ? &dst->app : nullptr),
      v(dst ? &dst->version : nullptr),
      v(dst ? &dst->ns : nullptr),
      principal(r.destination_principal),
      v(dst ? &dst->app : nullptr),
      v(dst ? &dst->version : nullptr),
      std::string(dst ? kClusterId : kUnknown),
      // ztunnel's request_protocol is "tcp" for every L4 connection, tunnelled or not (its
      // RequestProtocol has only tcp and http): Kiali and the Istio dashboards key on it. The
      // access log's protocol field tells HBONE apart.
      std::string("tcp"),
      std::string(response_flags(r.reason)),
      std::string(to_string(r.security)),
  };
}

// Single writer (the owning worker), any number of readers (scrapes): a plain load and store
// instead of a locked read-modify-write.
void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// What a record's label set is a function of, by identity: the shared names it points to and the
// few enums. Two records with equal keys have equal label values (the names are immutable).
struct SeriesKey {
  const void* source = nullptr;
  const void* destination = nullptr;
  const void* service = nullptr;
  const void* source_principal = nullptr;
  const void* destination_principal = nullptr;
  std::uint32_t small = 0;  // direction, reason, protocol, security policy
  bool operator==(const SeriesKey&) const = default;
};

struct SeriesKeyHash {
  std::size_t operator()(const SeriesKey& k) const {
    // Pointers differ in their low bits only by alignment; a multiply-xorshift mixes each in.
    std::uint64_t h = k.small;
    for (const void* p : {k.source, k.destination, k.service, k.source_principal, k.destination_principal}) {
      h ^= reinterpret_cast<std::uintptr_t>(p);
      h *= 0x9e3779b97f4a7c15ull;
      h ^= h >> 29;
    }
    return static_cast<std::size_t>(h);
  }
};

SeriesKey series_key(const ConnectionRecord& r) {
  return SeriesKey{r.source_workload.get(),
                   r.destination_workload.get(),
                   r.service.get(),
                   r.source_principal.get(),
                   r.destination_principal.get(),
                   static_cast<std::uint32_t>(r.direction) | static_cast<std::uint32_t>(r.reason) << 8 |
                       static_cast<std::uint32_t>(r.protocol) << 16 | static_cast<std::uint32_t>(r.security) << 24};
}

// One worker's access-log lines, waiting for the writer thread, already cut into batches of whole
// lines of at most kBatch bytes (the worker knows where its lines end; the writer would have to
// search for them).
class AccessLogBatch {
 public:
  AccessLogBatch() {
    // The whole bound up front, so that a worker never reallocates (and copies up to 1 MiB, or
    // throws bad_alloc in a destructor) while the writer lags; untouched pages cost nothing.
    pending_.reserve(kMaxPending);
    taken_.reserve(kMaxPending);
    cuts_.reserve(kMaxPending / kBatch * 2);
    taken_cuts_.reserve(kMaxPending / kBatch * 2);
  }
  // The worker: one whole line, with its '\n'. Returns whether the writer should be woken (the
  // first time since the writer's last visit that kWakeAt bytes are pending). Never waits for a
  // write: with kMaxPending bytes pending (the writer is stuck on a full pipe), the line is
  // dropped and counted.
  bool append(std::string_view line) {
    std::lock_guard lock(mutex_);
    const std::size_t size = pending_.size();
    if (size + line.size() > kMaxPending) {
      bump(dropped_);
      return false;
    }
    // A batch ends before a line that would not fit in it (a longer line is a batch alone).
    const std::size_t batch_start = cuts_.empty() ? 0 : cuts_.back();
    if (size > batch_start && size - batch_start + line.size() > kBatch) cuts_.push_back(size);
    pending_.append(line);
    if (pending_.size() < kWakeAt || woken_) return false;
    woken_ = true;
    return true;
  }
  // The writer (one at a time: the telemetry's write mutex): writes what is pending, batch by
  // batch, after swapping it out so that the worker's lock is held for the swap only. All four
  // buffers keep their capacity: no allocation. A batch the output could not take, and every
  // batch after it in this pass (the output is stuck: do not wait again for each), is counted
  // as dropped, line by line.
  void write_to(const ConnectionTelemetry::Output& out) {
    taken_.clear();
    taken_cuts_.clear();
    {
      std::lock_guard lock(mutex_);
      pending_.swap(taken_);
      cuts_.swap(taken_cuts_);
      woken_ = false;
    }
    const std::string_view all = taken_;
    bool stuck = false;
    const auto write = [&](std::string_view batch) {
      if (!stuck && out(batch)) return;
      stuck = true;
      lost_.fetch_add(static_cast<std::uint64_t>(std::count(batch.begin(), batch.end(), '\n')),
                      std::memory_order_relaxed);
    };
    std::size_t start = 0;
    for (const std::size_t cut : taken_cuts_) {
      write(all.substr(start, cut - start));
      start = cut;
    }
    if (start < all.size()) write(all.substr(start));
  }
  std::uint64_t dropped() const {
    return dropped_.load(std::memory_order_relaxed) + lost_.load(std::memory_order_relaxed);
  }

 private:
  std::mutex mutex_;
  std::string pending_;             // under mutex_
  std::vector<std::size_t> cuts_;   // under mutex_: where each batch but the last ends
  bool woken_ = false;              // under mutex_
  std::string taken_;               // the writer's only
  std::vector<std::size_t> taken_cuts_;
  std::atomic<std::uint64_t> dropped_{0};  // the worker's only: no room left
  std::atomic<std::uint64_t> lost_{0};     // the writer's only: the output did not take them
};

}  // namespace

// The totals of series that a worker expired while another worker still held the same label set:
// collect() adds them in, so the exported sum never goes down (a Prometheus counter that drops
// reads as a reset), until no worker holds the label set any more and it leaves the scrape.
// Locked only by an expiry pass and a scrape, never by a connection.
struct ConnectionTelemetry::Retired {
  struct Sums {
    std::uint64_t opened = 0, closed = 0, sent = 0, received = 0;
  };
  std::mutex mutex;
  std::map<LabelValues, Sums> sums;
};

class ConnectionTelemetry::WorkerSink final : public ConnectionSink {
 public:
  struct Series {
    LabelValues labels;
    std::atomic<std::uint64_t> opened{0}, closed{0}, sent{0}, received{0};
    // The owning worker's only (scrapes never read them).
    std::int64_t holders = 0;  // connections whose record points here (opened, not yet closed)
    std::uint64_t seen_opened = 0, seen_closed = 0;  // the counters at the last expire_idle()
    Clock::time_point last_change{};
    std::size_t slot = 0;
    std::string index_key;
    bool expiring = false;
  };
  // Past this many cached keys the cache starts over (what it pins is then released): the
  // series stay, so a new key costs one lookup by label text again.
  static constexpr std::size_t kMaxCachedKeys = 4 * kMaxSeriesPerWorker;

  WorkerSink(const Options& options, ConnectionTelemetry* owner, Retired* retired)
      : options_(options), owner_(owner), retired_(retired) {
    free_.reserve(kMaxSeriesPerWorker);
    for (std::size_t i = kMaxSeriesPerWorker; i > 0; --i) free_.push_back(i - 1);
  }

  void opened(ConnectionRecord& r) override {
    if (!options_.metrics) return;
    Series* s = series_for(r);
    r.sink_slot = s;
    ++s->holders;
    bump(s->opened);
  }

  void closed(const ConnectionRecord& r) override {
    bump(reasons_[static_cast<std::size_t>(r.reason)]);
    if (options_.metrics) {
      auto* s = static_cast<Series*>(r.sink_slot);
      if (s) --s->holders;
      else s = series_for(r);
      bump(s->closed);
      // Istio's meaning: received = bytes of the request direction (client to server), sent = of
      // the response, whoever reports.
      if (r.bytes_to_upstream) bump(s->received, r.bytes_to_upstream);
      if (r.bytes_to_downstream) bump(s->sent, r.bytes_to_downstream);
    }
    if (options_.access_log == AccessLogFormat::off) return;
    AccessLogLine line;
    if (options_.access_log == AccessLogFormat::text) append_access_log_text(r, line);
    else append_access_log_json(r, line);
    line.push_back('\n');
    if (log_.append({line.data(), line.size()})) owner_->wake_writer();
  }

  // The worker's thread. A series changed since the last call is stamped `now`; one that no
  // connection holds and that has not changed for `expiry` is dropped: its slot (and, for the
  // overflow series, its place) is free for the next label set, and it leaves the scrape.
  std::size_t expire_idle(Clock::time_point now, Clock::duration expiry) {
    // Judged first and marked, then the cache forgets them (one pass, whatever their number),
    // then the cells let go: a series is freed only once nothing of ours points to it.
    auto judge = [&](Series* s) -> bool {
      if (!s) return false;
      const auto o = s->opened.load(std::memory_order_relaxed), c = s->closed.load(std::memory_order_relaxed);
      if (o != s->seen_opened || c != s->seen_closed || s->last_change == Clock::time_point{}) {
        s->seen_opened = o;
        s->seen_closed = c;
        s->last_change = now;
        return false;
      }
      s->expiring = s->holders == 0 && now - s->last_change >= expiry;
      return s->expiring;
    };
    std::vector<std::size_t> cells;
    for (std::size_t i = 0; i < live_.size(); ++i)
      if (judge(live_[i])) cells.push_back(i);
    const bool overflow = judge(overflow_live_);
    if (cells.empty() && !overflow) return 0;
    // A freed cell is room for a label set that went to the overflow series for want of one: its
    // cache entries are forgotten too, so its next connection finds (or takes) a cell of its own.
    Series* const overflowed_to = cells.empty() ? nullptr : overflow_live_;
    std::erase_if(cache_, [overflowed_to](const auto& entry) {
      return entry.second.series->expiring || (overflowed_to && entry.second.series == overflowed_to);
    });
    // Under the scrape's lock: a scrape sees an expired series either in its cell or among the
    // retired totals, never in both and never in neither.
    std::lock_guard lock(retired_->mutex);
    auto retire = [this](const Series& s) {
      auto& x = retired_->sums[s.labels];
      x.opened += s.opened.load(std::memory_order_relaxed);
      x.closed += s.closed.load(std::memory_order_relaxed);
      x.sent += s.sent.load(std::memory_order_relaxed);
      x.received += s.received.load(std::memory_order_relaxed);
    };
    for (std::size_t i : cells) {
      retire(*live_[i]);
      index_.erase(live_[i]->index_key);
      live_[i] = nullptr;
      free_.push_back(i);
      // A scrape that loaded it keeps it alive (shared_ptr) until it is done with it.
      slots_[i].store(nullptr, std::memory_order_release);
    }
    if (overflow) {
      retire(*overflow_live_);
      overflow_live_ = nullptr;
      overflow_.store(nullptr, std::memory_order_release);
    }
    return cells.size() + (overflow ? 1 : 0);
  }

  AccessLogBatch& log() { return log_; }
  std::uint64_t log_dropped() const { return log_.dropped(); }
  // Any thread (a scrape): each live series, kept alive while `f` runs.
  template <typename F>
  void for_each_series(F&& f) const {
    for (const auto& cell : slots_)
      if (auto s = cell.load(std::memory_order_acquire)) f(*s);
    if (auto s = overflow_.load(std::memory_order_acquire)) f(*s);
  }
  std::uint64_t reason_count(std::size_t i) const { return reasons_[i].load(std::memory_order_relaxed); }
  std::uint64_t overflowed() const { return overflowed_.load(std::memory_order_relaxed); }

 private:
  // What the cache keeps: the series, and the names its key points to, so that no other name can
  // be allocated at one of those addresses while the key is cached.
  struct Cached {
    Series* series;
    std::shared_ptr<const WorkloadInfo> source, destination;
    std::shared_ptr<const ServiceInfo> service;
    std::shared_ptr<const std::string> source_principal, destination_principal;
  };

  Series* series_for(const ConnectionRecord& r) {
    const SeriesKey key = series_key(r);
    if (auto it = cache_.find(key); it != cache_.end()) return it->second.series;
    if (cache_.size() >= kMaxCachedKeys) cache_.clear();
    Series* s = series_by_labels(r);
    cache_.emplace(key, Cached{s, r.source_workload, r.destination_workload, r.service, r.source_principal,
                               r.destination_principal});
    return s;
  }

  Series* series_by_labels(const ConnectionRecord& r) {
    LabelValues labels = label_values(r);
    key_.clear();
    for (const auto& l : labels) {
      key_ += l;
      key_ += '\x1f';  // not in any label value Kubernetes allows
    }
    if (auto it = index_.find(key_); it != index_.end()) return it->second;
    if (free_.empty()) {
      bump(overflowed_);
      if (!overflow_live_) {
        auto s = std::make_shared<Series>();
        s->labels.fill("overflow");
        overflow_live_ = s.get();
        overflow_.store(std::move(s), std::memory_order_release);
      }
      return overflow_live_;
    }
    auto s = std::make_shared<Series>();
    Series* raw = s.get();
    s->labels = std::move(labels);
    s->slot = free_.back();
    free_.pop_back();
    s->index_key = key_;
    index_.emplace(key_, s.get());
    live_[s->slot] = s.get();
    // Complete before the release store makes it visible to scrapes. A new label set is rare
    // (the cache answers the rest); the atomic shared_ptr's internal lock bit is contended only
    // by a scrape reading this very cell at that moment.
    slots_[raw->slot].store(std::move(s), std::memory_order_release);
    return raw;
  }

  Options options_;
  ConnectionTelemetry* owner_;
  AccessLogBatch log_;
  Retired* retired_;
  std::string key_;  // reused: no allocation once it has grown
  std::unordered_map<SeriesKey, Cached, SeriesKeyHash> cache_;  // this worker's only
  std::unordered_map<std::string, Series*> index_;               // this worker's only
  std::vector<std::size_t> free_;                                 // this worker's only: free slots
  std::array<Series*, kMaxSeriesPerWorker> live_{};               // this worker's only: the cells' content
  Series* overflow_live_ = nullptr;
  // What scrapes read. A cell owns its series; an expired one is released when the last scrape
  // holding it lets go.
  std::array<std::atomic<std::shared_ptr<Series>>, kMaxSeriesPerWorker> slots_;
  std::atomic<std::shared_ptr<Series>> overflow_;
  std::atomic<std::uint64_t> overflowed_{0};
  std::array<std::atomic<std::uint64_t>, kEndReasonCount> reasons_{};
};

ConnectionTelemetry::ConnectionTelemetry(int workers, Options options, Output output)
    : options_(options), output_(output ? std::move(output) : Output(write_stderr)), retired_(std::make_unique<Retired>()) {
  for (int i = 0; i < std::max(1, workers); ++i)
    workers_.push_back(std::make_unique<WorkerSink>(options_, this, retired_.get()));
  if (options_.access_log != AccessLogFormat::off) {
    writer_ = std::thread([this] { run_writer(); });
    // Named, so that a writer stuck on stderr is easy to tell in top -H or a stack dump.
    pthread_setname_np(writer_.native_handle(), "dsproxy-alog");
  }
}

ConnectionTelemetry::~ConnectionTelemetry() {
  if (writer_.joinable()) {
    {
      std::lock_guard lock(wake_mutex_);
      stop_ = true;
    }
    wake_cv_.notify_one();
    writer_.join();
  }
  // Every record emitted so far (the workers are gone: the drain's last ones included).
  flush();
}

void ConnectionTelemetry::wake_writer() {
  {
    std::lock_guard lock(wake_mutex_);
    wake_ = true;
  }
  wake_cv_.notify_one();
}

void ConnectionTelemetry::run_writer() {
  std::unique_lock lock(wake_mutex_);
  while (!stop_) {
    wake_cv_.wait_for(lock, options_.flush_interval, [this] { return wake_ || stop_; });
    wake_ = false;
    lock.unlock();
    flush();
    lock.lock();
  }
}

std::size_t ConnectionTelemetry::expire_idle(int worker, Clock::time_point now) {
  if (!options_.metrics || options_.series_expiry.count() <= 0) return 0;
  return workers_.at(static_cast<std::size_t>(worker))->expire_idle(now, options_.series_expiry);
}

void ConnectionTelemetry::flush() {
  std::lock_guard lock(write_mutex_);
  for (auto& w : workers_) w->log().write_to(output_);
}

ConnectionSink* ConnectionTelemetry::sink(int worker) {
  if (!options_.metrics && options_.access_log == AccessLogFormat::off) return nullptr;
  return workers_.at(static_cast<std::size_t>(worker)).get();
}

std::vector<prometheus::MetricFamily> ConnectionTelemetry::collect() const {
  using Sums = Retired::Sums;
  std::map<LabelValues, Sums> sums;  // the same label set on several workers is one series
  std::array<std::uint64_t, kEndReasonCount> reasons{};
  std::uint64_t overflowed = 0;
  // Held for the walk, so that no expiry moves a series from its cell to the retired totals
  // in the middle of it (see Retired).
  std::lock_guard lock(retired_->mutex);
  for (const auto& w : workers_) {
    w->for_each_series([&sums](const WorkerSink::Series& s) {
      auto& x = sums[s.labels];
      x.opened += s.opened.load(std::memory_order_relaxed);
      x.closed += s.closed.load(std::memory_order_relaxed);
      x.sent += s.sent.load(std::memory_order_relaxed);
      x.received += s.received.load(std::memory_order_relaxed);
    });
    for (std::size_t i = 0; i < kEndReasonCount; ++i) reasons[i] += w->reason_count(i);
    overflowed += w->overflowed();
  }
  // Retired totals count while some worker still holds their label set; once none does, the
  // series leaves the scrape (it expired everywhere) and its retired totals are dropped.
  for (auto it = retired_->sums.begin(); it != retired_->sums.end();) {
    auto held = sums.find(it->first);
    if (held == sums.end()) {
      it = retired_->sums.erase(it);
      continue;
    }
    held->second.opened += it->second.opened;
    held->second.closed += it->second.closed;
    held->second.sent += it->second.sent;
    held->second.received += it->second.received;
    ++it;
  }
  auto family = [](std::string name, std::string help) {
    prometheus::MetricFamily f;
    f.name = std::move(name);
    f.help = std::move(help);
    f.type = prometheus::MetricType::Counter;
    return f;
  };
  std::vector<prometheus::MetricFamily> out;
  if (options_.metrics) {
    auto opened = family("istio_tcp_connections_opened_total", "The total number of TCP connections opened");
    auto closed = family("istio_tcp_connections_closed_total", "The total number of TCP connections closed");
    auto received = family("istio_tcp_received_bytes_total",
                           "The size of total bytes received during request in case of a TCP connection");
    auto sent = family("istio_tcp_sent_bytes_total",
                       "The size of total bytes sent during response in case of a TCP connection");
    for (const auto& [labels, x] : sums) {
      prometheus::ClientMetric m;
      for (std::size_t i = 0; i < labels.size(); ++i) m.label.push_back({std::string(kLabelNames[i]), labels[i]});
      auto add = [&m](prometheus::MetricFamily& f, std::uint64_t v) {
        f.metric.push_back(m);
        f.metric.back().counter.value = static_cast<double>(v);
      };
      add(opened, x.opened);
      add(closed, x.closed);
      add(received, x.received);
      add(sent, x.sent);
    }
    out.push_back(std::move(opened));
    out.push_back(std::move(closed));
    out.push_back(std::move(received));
    out.push_back(std::move(sent));
    auto over = family("dsproxy_metrics_series_overflow_total",
                       "Connections counted in the overflow series because a worker had too many label sets");
    over.metric.emplace_back().counter.value = static_cast<double>(overflowed);
    out.push_back(std::move(over));
  }
  if (options_.access_log != AccessLogFormat::off) {
    auto dropped = family("dsproxy_access_log_dropped_total",
                          "Access-log lines dropped because the log output did not keep up (a blocked stderr)");
    double n = 0;
    for (const auto& w : workers_) n += static_cast<double>(w->log_dropped());
    dropped.metric.emplace_back().counter.value = n;
    out.push_back(std::move(dropped));
  }
  auto by_reason = family("dsproxy_connections_total", "Connections ended, by why they ended");
  for (std::size_t i = 0; i < kEndReasonCount; ++i) {
    auto& m = by_reason.metric.emplace_back();
    m.label.push_back({"reason", std::string(to_string(static_cast<EndReason>(i)))});
    m.counter.value = static_cast<double>(reasons[i]);
  }
  out.push_back(std::move(by_reason));
  return out;
}

}  // namespace dsproxy::proxy
