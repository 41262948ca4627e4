#pragma once
// What dsproxy tells about each connection: one access-log line and the Istio TCP metrics, both
// written from the connection's ConnectionResult when it closes.
//
// Data path cost, per connection, on the worker that owns it and without any lock of ours:
//  * metrics: one lookup of the connection's label set in the worker's own hash map and a few
//    plain stores into counters only this worker writes. prometheus-cpp's own Family::Add takes a
//    mutex for every lookup and its Counter is one atomic cell shared by all workers, so it is
//    used only at scrape time: a Collectable (collect()) walks every worker's series and sums
//    them. A worker publishes a new label set by pushing it onto a list whose head is atomic; a
//    series is never removed, so a scrape can walk the lists while workers add to them.
//  * access log: the line is formatted on the worker and handed to spdlog; the only lock is the
//    access logger's sink mutex (spdlog's own), once per line. The sink batches lines into
//    writes of up to 4 KiB; flush() writes what is left (the daemon: every second).
//
// Cardinality is bounded: labels name workloads (a Deployment, StatefulSet, ...: see
// describe_pod), Services and namespaces from the snapshot, never pods or addresses; anything
// not in the snapshot is "unknown". Past kMaxSeriesPerWorker label sets on one worker, further
// ones are counted in a single overflow series (every workload and Service label "overflow") and
// in dsproxy_metrics_series_overflow_total.

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <prometheus/metric_family.h>

#include "proxy/connection_result.hpp"

namespace spdlog {
class logger;
}

namespace dsproxy::proxy {

enum class AccessLogFormat { off, text, json };
std::optional<AccessLogFormat> parse_access_log_format(std::string_view text);

// One access-log line (without the trailing newline). ztunnel's field names where they exist:
// src.addr, src.workload (the pod), src.namespace, dst.addr (what the client dialled),
// dst.service, dst.workload (the endpoint's pod), dst.namespace, direction, bytes_sent,
// bytes_recv (from the point of view of this node's pod: outbound, the client's; inbound, the
// server's, as ztunnel logs them), duration, error; and dsproxy's: endpoint, family (of the
// endpoint), fallback, happy_eyeballs_other_family, retries, reason.
std::string format_access_log_text(const ConnectionRecord& record);
// SocketAddress::to_string()'s text ("10.0.0.1:80", "[fd00::1]:80") without inet_ntop's sprintf
// calls, into `out`; the view points into it.
using AddressText = std::array<char, 64>;
std::string_view format_address(const net::SocketAddress& address, AddressText& out);
std::string format_access_log_json(const ConnectionRecord& record);

class ConnectionTelemetry {
 public:
  static constexpr std::size_t kMaxSeriesPerWorker = 4096;
  struct Options {
    AccessLogFormat access_log = AccessLogFormat::text;
    bool metrics = true;
  };
  // `access_logger`: where lines go (null: a logger of its own on stderr).
  ConnectionTelemetry(int workers, Options options, std::shared_ptr<spdlog::logger> access_logger = nullptr);
  ~ConnectionTelemetry();
  ConnectionTelemetry(const ConnectionTelemetry&) = delete;
  ConnectionTelemetry& operator=(const ConnectionTelemetry&) = delete;

  // Worker i's sink (null when both metrics and the access log are off: the data path then
  // builds no record at all).
  ConnectionSink* sink(int worker);
  // Any thread (the scrape): the istio_tcp_* families and dsproxy's outcomes by reason.
  std::vector<prometheus::MetricFamily> collect() const;
  // Any thread: writes the access-log lines still buffered (call every second or so, and at exit).
  void flush();

  class WorkerSink;

 private:
  Options options_;
  std::shared_ptr<spdlog::logger> access_logger_;
  std::vector<std::unique_ptr<WorkerSink>> workers_;
};

}  // namespace dsproxy::proxy
