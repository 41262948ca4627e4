#include "proxy/connection_telemetry.hpp"

#include <spdlog/fmt/fmt.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>

#include <boost/json/monotonic_resource.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <map>

namespace dsproxy::proxy {

std::optional<AccessLogFormat> parse_access_log_format(std::string_view text) {
  if (text == "off") return AccessLogFormat::off;
  if (text == "text") return AccessLogFormat::text;
  if (text == "json") return AccessLogFormat::json;
  return std::nullopt;
}

namespace {

// stderr, in batches: a write(2) per line costs the worker a syscall per connection (measured:
// the largest part of the access log's cost). Lines are appended under spdlog's sink mutex and
// written when the next one would not fit in PIPE_BUF bytes, so each write holds whole lines and
// is atomic on a pipe (a container's stderr): never interleaved mid-line with the process log.
// What is left is written by flush(), which the daemon calls every second (Envoy flushes its
// access logs on the same period) and at exit.
class BufferedStderrSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  static constexpr std::size_t kBatch = 4096;  // PIPE_BUF on Linux
  ~BufferedStderrSink() override {
    std::lock_guard lock(mutex_);
    write_out();
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    if (buffer_.size() + line.size() > kBatch) write_out();
    buffer_.append(line.data(), line.size());
    if (buffer_.size() >= kBatch) write_out();
  }
  void flush_() override { write_out(); }

 private:
  void write_out() {
    std::size_t done = 0;
    while (done < buffer_.size()) {
      const ssize_t n = ::write(STDERR_FILENO, buffer_.data() + done, buffer_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // stderr gone: the lines are lost, the connection is not affected
      done += static_cast<std::size_t>(n);
    }
    buffer_.clear();
  }
  std::string buffer_;
};

// Istio's label for "we do not know": ztunnel's DefaultedUnknown.
constexpr std::string_view kUnknown = "unknown";
// Istio's default cluster ID (istiod's --clusterID, "Kubernetes" unless set): the only cluster
// dsproxy knows about.
constexpr std::string_view kClusterId = "Kubernetes";

}  // namespace

// glibc's inet_ntop formats every IPv4 octet and IPv6 group with sprintf: about 2,000
// instructions an address, three addresses a line, a quarter of what a JSON line cost
// (callgrind). The same text, written directly.
std::string_view format_address(const net::SocketAddress& a, AddressText& out) {
  char* p = out.data();
  const auto& b = a.ip.bytes();
  auto decimal = [&p](unsigned v) {
    char digits[5];
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v);
    while (n) *p++ = digits[--n];
  };
  if (a.ip.is_v4()) {
    for (int i = 0; i < 4; ++i) {
      if (i) *p++ = '.';
      decimal(b[static_cast<std::size_t>(i)]);
    }
  } else {
    std::uint16_t g[8];
    for (int i = 0; i < 8; ++i)
      g[i] = static_cast<std::uint16_t>(b[static_cast<std::size_t>(2 * i)] << 8 | b[static_cast<std::size_t>(2 * i + 1)]);
    // inet_ntop writes an embedded IPv4 address when the first 96 bits are zero (or a mapped
    // prefix); those rare forms are left to it.
    if (g[0] == 0 && g[1] == 0 && g[2] == 0 && g[3] == 0 && g[4] == 0 && (g[5] == 0 || g[5] == 0xffff)) {
      const std::string text = a.to_string();
      const std::size_t n = std::min(text.size(), out.size());
      std::copy_n(text.data(), n, out.data());
      return {out.data(), n};
    }
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
  }
  *p++ = ':';
  decimal(a.port);
  return {out.data(), static_cast<std::size_t>(p - out.data())};
}

namespace {

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

// RFC 3339 in UTC with milliseconds. The date and time of day are formatted once per second per
// thread: gmtime_r and the formatting showed up in the per-connection profile.
std::string end_time(const ConnectionRecord& r) {
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
  return fmt::format("{}.{:03}Z", std::string_view(cached, 19), static_cast<int>(ms % 1000));
}

}  // namespace

std::string format_access_log_text(const ConnectionRecord& r) {
  fmt::memory_buffer out;
  auto it = std::back_inserter(out);
  AddressText text;
  fmt::format_to(it, "connection complete src.addr={}", format_address(r.source, text));
  if (r.source_workload)
    fmt::format_to(it, " src.workload={} src.namespace={}", r.source_workload->pod, r.source_workload->ns);
  fmt::format_to(it, " dst.addr={}", format_address(r.destination, text));
  if (r.service) fmt::format_to(it, " dst.service={}", r.service->hostname);
  if (r.destination_workload)
    fmt::format_to(it, " dst.workload={} dst.namespace={}", r.destination_workload->pod, r.destination_workload->ns);
  fmt::format_to(it, " direction={}", to_string(r.direction));
  if (r.endpoint)
    fmt::format_to(it, " endpoint={} family={} fallback={} happy_eyeballs_other_family={}", format_address(*r.endpoint, text),
                   family_name(r.endpoint->ip), r.fell_back, r.second_family_won);
  fmt::format_to(it, " retries={} bytes_sent={} bytes_recv={} duration={}ms reason={}", r.retries, bytes_sent(r),
                 bytes_recv(r), duration_ms(r), to_string(r.reason));
  if (r.reason != EndReason::completed) fmt::format_to(it, " error={}", to_string(r.reason));
  return fmt::to_string(out);
}

std::string format_access_log_json(const ConnectionRecord& r) {
  // Built in a stack buffer (no allocation per field), sized for every field at once (no rehash).
  unsigned char arena[4096];
  boost::json::monotonic_resource memory(arena, sizeof arena);
  boost::json::object o(&memory);
  o.reserve(20);
  o["timestamp"] = end_time(r);
  o["message"] = "connection complete";
  AddressText text;
  o["src.addr"] = format_address(r.source, text);
  if (r.source_workload) {
    o["src.workload"] = r.source_workload->pod;
    o["src.namespace"] = r.source_workload->ns;
  }
  o["dst.addr"] = format_address(r.destination, text);
  if (r.service) o["dst.service"] = r.service->hostname;
  if (r.destination_workload) {
    o["dst.workload"] = r.destination_workload->pod;
    o["dst.namespace"] = r.destination_workload->ns;
  }
  o["direction"] = to_string(r.direction);
  if (r.endpoint) {
    o["endpoint"] = format_address(*r.endpoint, text);
    o["family"] = family_name(r.endpoint->ip);
    o["fallback"] = r.fell_back;
    o["happy_eyeballs_other_family"] = r.second_family_won;
  }
  o["retries"] = r.retries;
  o["bytes_sent"] = bytes_sent(r);
  o["bytes_recv"] = bytes_recv(r);
  o["duration"] = fmt::format("{}ms", duration_ms(r));
  o["reason"] = to_string(r.reason);
  if (r.reason != EndReason::completed) o["error"] = to_string(r.reason);
  return boost::json::serialize(o);
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
  // No mTLS: no identity was proven, so both principals stay "unknown" (ztunnel sets the source's
  // only from a verified handshake) and the security policy is "unknown", not "mutual_tls".
  return LabelValues{
      std::string(r.direction == Direction::outbound ? "source" : "destination"),
      v(src ? &src->workload : nullptr),
      v(src ? &src->app : nullptr),
      v(src ? &src->version : nullptr),
      v(src ? &src->ns : nullptr),
      std::string(kUnknown),
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
      std::string(kUnknown),
      v(dst ? &dst->app : nullptr),
      v(dst ? &dst->version : nullptr),
      std::string(dst ? kClusterId : kUnknown),
      "tcp",
      std::string(response_flags(r.reason)),
      std::string(kUnknown),
  };
}

// Single writer (the owning worker), any number of readers (scrapes): a plain load and store
// instead of a locked read-modify-write.
void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace

class ConnectionTelemetry::WorkerSink final : public ConnectionSink {
 public:
  struct Series {
    LabelValues labels;
    std::atomic<std::uint64_t> opened{0}, closed{0}, sent{0}, received{0};
    Series* next = nullptr;
  };

  WorkerSink(const Options& options, spdlog::logger* logger) : options_(options), logger_(logger) {
    overflow_.labels.fill("overflow");
  }
  ~WorkerSink() override {
    for (Series* s = head_.load(std::memory_order_acquire); s;) {
      Series* next = s->next;
      if (s != &overflow_) delete s;
      s = next;
    }
  }

  void opened(ConnectionRecord& r) override {
    if (!options_.metrics) return;
    Series* s = series_for(r);
    r.sink_slot = s;
    bump(s->opened);
  }

  void closed(const ConnectionRecord& r) override {
    bump(reasons_[static_cast<std::size_t>(r.reason)]);
    if (options_.metrics) {
      auto* s = static_cast<Series*>(r.sink_slot);
      if (!s) s = series_for(r);
      bump(s->closed);
      // Istio's meaning: received = bytes of the request direction (client to server), sent = of
      // the response, whoever reports.
      if (r.bytes_to_upstream) bump(s->received, r.bytes_to_upstream);
      if (r.bytes_to_downstream) bump(s->sent, r.bytes_to_downstream);
    }
    if (options_.access_log == AccessLogFormat::text)
      logger_->info(format_access_log_text(r));
    else if (options_.access_log == AccessLogFormat::json)
      logger_->info(format_access_log_json(r));
  }

  const Series* head() const { return head_.load(std::memory_order_acquire); }
  std::uint64_t reason_count(std::size_t i) const { return reasons_[i].load(std::memory_order_relaxed); }
  std::uint64_t overflowed() const { return overflowed_.load(std::memory_order_relaxed); }

 private:
  Series* series_for(const ConnectionRecord& r) {
    LabelValues labels = label_values(r);
    key_.clear();
    for (const auto& l : labels) {
      key_ += l;
      key_ += '\x1f';  // not in any label value Kubernetes allows
    }
    if (auto it = index_.find(key_); it != index_.end()) return it->second;
    if (index_.size() >= kMaxSeriesPerWorker) {
      bump(overflowed_);
      if (!overflow_published_) {
        overflow_published_ = true;
        publish(&overflow_);
      }
      return &overflow_;
    }
    auto* s = new Series;
    s->labels = std::move(labels);
    index_.emplace(key_, s);
    publish(s);
    return s;
  }
  // The series is complete before the release store makes it visible to scrapes.
  void publish(Series* s) {
    s->next = head_.load(std::memory_order_relaxed);
    head_.store(s, std::memory_order_release);
  }

  Options options_;
  spdlog::logger* logger_;
  std::string key_;  // reused: no allocation once it has grown
  std::unordered_map<std::string, Series*> index_;  // this worker's only
  std::atomic<Series*> head_{nullptr};
  Series overflow_;
  bool overflow_published_ = false;
  std::atomic<std::uint64_t> overflowed_{0};
  std::array<std::atomic<std::uint64_t>, kEndReasonCount> reasons_{};
};

ConnectionTelemetry::ConnectionTelemetry(int workers, Options options, std::shared_ptr<spdlog::logger> access_logger)
    : options_(options), access_logger_(std::move(access_logger)) {
  if (!access_logger_) {
    // A logger of its own, so its pattern does not change the process log's: the JSON lines are
    // bare objects. Its sink takes its mutex per line; the process logger has another.
    access_logger_ = std::make_shared<spdlog::logger>("access", std::make_shared<BufferedStderrSink>());
    access_logger_->set_pattern(options_.access_log == AccessLogFormat::json ? "%v"
                                                                              : "%Y-%m-%dT%H:%M:%S.%eZ %l access %v",
                                spdlog::pattern_time_type::utc);
    access_logger_->set_level(spdlog::level::info);
  }
  for (int i = 0; i < std::max(1, workers); ++i)
    workers_.push_back(std::make_unique<WorkerSink>(options_, access_logger_.get()));
}

ConnectionTelemetry::~ConnectionTelemetry() { flush(); }

void ConnectionTelemetry::flush() { access_logger_->flush(); }

ConnectionSink* ConnectionTelemetry::sink(int worker) {
  if (!options_.metrics && options_.access_log == AccessLogFormat::off) return nullptr;
  return workers_.at(static_cast<std::size_t>(worker)).get();
}

std::vector<prometheus::MetricFamily> ConnectionTelemetry::collect() const {
  struct Sums {
    std::uint64_t opened = 0, closed = 0, sent = 0, received = 0;
  };
  std::map<LabelValues, Sums> sums;  // the same label set on several workers is one series
  std::array<std::uint64_t, kEndReasonCount> reasons{};
  std::uint64_t overflowed = 0;
  for (const auto& w : workers_) {
    for (const auto* s = w->head(); s; s = s->next) {
      auto& x = sums[s->labels];
      x.opened += s->opened.load(std::memory_order_relaxed);
      x.closed += s->closed.load(std::memory_order_relaxed);
      x.sent += s->sent.load(std::memory_order_relaxed);
      x.received += s->received.load(std::memory_order_relaxed);
    }
    for (std::size_t i = 0; i < kEndReasonCount; ++i) reasons[i] += w->reason_count(i);
    overflowed += w->overflowed();
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
