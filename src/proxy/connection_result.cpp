#include "proxy/connection_result.hpp"

#include <utility>

namespace dsproxy::proxy {

std::string_view to_string(EndReason reason) {
  switch (reason) {
    case EndReason::completed: return "completed";
    case EndReason::client_reset: return "client_reset";
    case EndReason::upstream_reset: return "upstream_reset";
    case EndReason::idle_timeout: return "idle_timeout";
    case EndReason::rejected_no_endpoint_for_family: return "rejected_no_endpoint_for_family";
    case EndReason::rejected_unknown_service_port: return "rejected_unknown_service_port";
    case EndReason::rejected_loop: return "rejected_loop";
    case EndReason::rejected_forbidden_destination: return "rejected_forbidden_destination";
    case EndReason::connect_failed: return "connect_failed";
    case EndReason::connect_timeout: return "connect_timeout";
    case EndReason::local_error: return "local_error";
    case EndReason::client_gone: return "client_gone";
    case EndReason::denied_by_policy: return "denied_by_policy";
    case EndReason::rejected_overload: return "rejected_overload";
    case EndReason::fault: return "fault";
    case EndReason::rejected_source_identity: return "rejected_source_identity";
    case EndReason::shutdown: return "shutdown";
  }
  return "unknown";
}

std::string_view response_flags(EndReason reason) {
  switch (reason) {
    case EndReason::rejected_no_endpoint_for_family:
    case EndReason::rejected_unknown_service_port:
    case EndReason::connect_failed:
    case EndReason::connect_timeout:
    case EndReason::local_error: return "CONNECT";
    case EndReason::rejected_loop:
    case EndReason::rejected_forbidden_destination:
    case EndReason::denied_by_policy:
    case EndReason::rejected_source_identity: return "DENY";
    case EndReason::rejected_overload: return "UO";  // Envoy's upstream overflow
    default: return "-";
  }
}

std::string_view to_string(RequestProtocol protocol) {
  return protocol == RequestProtocol::hbone ? "HBONE" : "tcp";
}

std::string_view to_string(SecurityPolicy policy) {
  return policy == SecurityPolicy::mutual_tls ? "mutual_tls" : "unknown";
}

EndReason reason_for(RejectReason reject) {
  switch (reject) {
    case RejectReason::no_endpoint_for_family: return EndReason::rejected_no_endpoint_for_family;
    case RejectReason::unknown_service_port: return EndReason::rejected_unknown_service_port;
    case RejectReason::forbidden_destination: return EndReason::rejected_forbidden_destination;
    default: return EndReason::rejected_loop;
  }
}

ConnectionResult::ConnectionResult(ConnectionSink* sink, Direction direction, const net::SocketAddress& source,
                                   const net::SocketAddress& destination)
    : sink_(sink) {
  if (!sink_) return;
  record_.direction = direction;
  record_.start = std::chrono::steady_clock::now();
  record_.start_wall = std::chrono::system_clock::now();
  record_.source = source;
  record_.destination = destination;
}

ConnectionResult::ConnectionResult(ConnectionResult&& other) noexcept
    : sink_(std::exchange(other.sink_, nullptr)),
      record_(std::move(other.record_)),
      opened_(other.opened_),
      finished_(other.finished_) {}

void ConnectionResult::mark_opened() {
  if (!sink_ || opened_) return;
  opened_ = true;
  sink_->opened(record_);
}

void ConnectionResult::finish(EndReason reason) {
  if (finished_) return;
  finished_ = true;
  record_.reason = reason;
}

ConnectionResult::~ConnectionResult() {
  if (!sink_) return;
  if (!finished_) record_.reason = EndReason::shutdown;
  record_.duration = std::chrono::steady_clock::now() - record_.start;
  // Never throw out of a destructor: a sink failing (allocation while formatting) loses one line.
  try {
    mark_opened();
    sink_->closed(record_);
  } catch (...) {
  }
}

}  // namespace dsproxy::proxy
