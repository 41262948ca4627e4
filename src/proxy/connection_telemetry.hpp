#pragma once
// What dsproxy tells about each connection: one access-log line and the Istio TCP metrics, both
// written from the connection's ConnectionResult when it closes.
//
// Data path cost, per connection, on the worker that owns it and without any lock shared with
// another worker:
//  * metrics: one lookup of the connection's label set in the worker's own hash map and a few
//    plain stores into counters only this worker writes. prometheus-cpp's own Family::Add takes a
//    mutex for every lookup and its Counter is one atomic cell shared by all workers, so it is
//    used only at scrape time: a Collectable (collect()) walks every worker's series and sums
//    them. A worker's series live in kMaxSeriesPerWorker cells (std::atomic<std::shared_ptr>),
//    which only that worker stores into (a new label set, or an expiry) and a scrape loads: a
//    scrape that holds a series the worker has just expired keeps it alive until it is done, so
//    no reclamation scheme is needed. The atomic shared_ptr is not lock-free (libstdc++ 12
//    guards it with a spin bit in the control-block pointer), but only a new label set, an
//    expiry and a scrape take that bit, never the counting of a connection: the worker keeps
//    its own raw copy of every cell and counts through it.
//    The label set of a connection is found through a cache keyed by the identities of the shared
//    names the record points to (workload, Service, principals: pointers, pinned by the cache so
//    they cannot be reused) plus the direction, protocol and reason: a hash of a few words, no
//    string built or compared. Only a miss builds the 23 label values and looks them up by text.
//  * access log: the line is written straight into a stack buffer (our own formatting and JSON
//    escaping, no allocation) and appended to the worker's own pending buffer under the worker's
//    own mutex, which only the log writer contends for, for the time of a swap. The data path
//    never writes: a dedicated writer thread takes the pending lines every Options::flush_interval
//    (1 s, as Envoy flushes its access logs), or as soon as a worker has 64 KiB pending, and
//    writes them in batches of whole lines of at most PIPE_BUF bytes, so each write(2) is atomic
//    on a pipe (a container's stderr): never interleaved mid-line with another writer's lines or
//    the process log. A stderr that blocks (a full pipe whose reader is stuck) holds only the
//    writer thread, and that for at most a second per pass: what it could not write is counted
//    as dropped (dsproxy_access_log_dropped_total), and a worker with 1 MiB pending drops further
//    lines and counts them instead of waiting or growing without bound (a worker holds at most
//    2 MiB: its pending lines and the batch being written). At exit the destructor writes
//    everything still pending (the record of every connection, including those ended by the
//    drain), waiting at most a second per worker for a stuck stderr.
//
// Cardinality is bounded: labels name workloads (a Deployment, StatefulSet, ...: see
// describe_pod), Services and namespaces from the snapshot, never pods or addresses; anything
// not in the snapshot is "unknown". Past kMaxSeriesPerWorker label sets on one worker, further
// ones are counted in a single overflow series (every workload and Service label "overflow") and
// in dsproxy_metrics_series_overflow_total. Series that no open connection holds and that have
// not changed for Options::series_expiry are dropped (expire_idle), which frees their cells (and
// sends the label sets waiting in the overflow series back to a cell of their own). Expiry is per
// worker, but a scrape sums a label set over the workers: the totals of a series one worker
// expired are kept aside (under a mutex only expiry and scrapes take) and still added in while
// another worker holds that label set, so an exported counter never goes down; the label set
// leaves the scrape once no worker holds it.

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <prometheus/metric_family.h>
#include <spdlog/fmt/fmt.h>

#include "proxy/connection_result.hpp"

namespace dsproxy::proxy {

enum class AccessLogFormat { off, text, json };
std::optional<AccessLogFormat> parse_access_log_format(std::string_view text);

// One access-log line (without the trailing newline). ztunnel's field names where they exist:
// src.addr, src.workload (the pod), src.namespace, dst.addr (what the client dialled),
// dst.service, dst.workload (the endpoint's pod), dst.namespace, direction, bytes_sent,
// bytes_recv (from the point of view of this node's pod: outbound, the client's; inbound, the
// server's, as ztunnel logs them), duration, error; and dsproxy's: endpoint, family (of the
// endpoint), fallback, happy_eyeballs_other_family, retries, reason.
// HBONE and authz add src.identity / dst.identity (the principals), protocol (HBONE only) and
// policy (a refusal by policy).
std::string format_access_log_text(const ConnectionRecord& record);
// The buffer the data path formats a line into: on the stack, large enough for any usual line.
using AccessLogLine = fmt::basic_memory_buffer<char, 2048>;
// The text line as written: "<close time RFC 3339> info access <format_access_log_text>".
void append_access_log_text(const ConnectionRecord& record, AccessLogLine& out);
void append_access_log_json(const ConnectionRecord& record, AccessLogLine& out);
// SocketAddress::to_string()'s text ("10.0.0.1:80", "[fd00::1]:80") without inet_ntop's sprintf
// calls, into `out`; the view points into it.
using AddressText = std::array<char, 64>;
std::string_view format_address(const net::SocketAddress& address, AddressText& out);
std::string format_access_log_json(const ConnectionRecord& record);

class ConnectionTelemetry {
 public:
  static constexpr std::size_t kMaxSeriesPerWorker = 4096;
  using Clock = std::chrono::steady_clock;
  struct Options {
    AccessLogFormat access_log = AccessLogFormat::text;
    bool metrics = true;
    // A label set that no open connection holds and whose counters have not changed for this
    // long leaves the scrape and frees its place (0: never). Prometheus marks a series that
    // disappears from a scrape stale; if it comes back its counters start again from 0, which
    // rate() and increase() read as a counter reset.
    std::chrono::milliseconds series_expiry{std::chrono::minutes(10)};
    // How long an access-log line may wait in memory before the writer thread writes it.
    std::chrono::milliseconds flush_interval{std::chrono::seconds(1)};
  };
  // Where batches of access-log lines go: whole lines, each ending in '\n', at most PIPE_BUF
  // bytes unless one line alone is longer. Called from the writer thread and from flush()'s
  // caller, one call at a time, never from a worker. It may block (only the writer waits).
  // Returns false when the lines were not written (they are counted as dropped).
  using Output = std::function<bool(std::string_view lines)>;
  // `output`: empty = stderr.
  ConnectionTelemetry(int workers, Options options, Output output = {});
  ~ConnectionTelemetry();
  ConnectionTelemetry(const ConnectionTelemetry&) = delete;
  ConnectionTelemetry& operator=(const ConnectionTelemetry&) = delete;

  // Worker i's sink (null when both metrics and the access log are off: the data path then
  // builds no record at all).
  ConnectionSink* sink(int worker);
  // Any thread (the scrape): the istio_tcp_* families and dsproxy's outcomes by reason.
  std::vector<prometheus::MetricFamily> collect() const;
  // On worker `worker`'s thread (the daemon posts it every few seconds): drops that worker's
  // series idle for Options::series_expiry (see there); returns how many.
  std::size_t expire_idle(int worker, Clock::time_point now = Clock::now());
  // Any thread but a worker's: writes the access-log lines pending now, and returns once they are
  // written (the writer thread does this on its own; tests, and the destructor at exit).
  void flush();

  class WorkerSink;
  struct Retired;

 private:
  // A worker with enough pending lines: the writer thread goes now rather than at its interval.
  void wake_writer();
  void run_writer();

  Options options_;
  Output output_;
  std::unique_ptr<Retired> retired_;
  std::vector<std::unique_ptr<WorkerSink>> workers_;
  std::mutex write_mutex_;  // one writer of batches at a time: the lines of a worker stay in order
  std::mutex wake_mutex_;
  std::condition_variable wake_cv_;
  bool wake_ = false, stop_ = false;  // under wake_mutex_
  std::thread writer_;                // only when the access log is on
};

}  // namespace dsproxy::proxy
