#pragma once
// When to start, abandon and cancel upstream connect attempts: Happy Eyeballs (RFC 8305) across
// the families of one backend, and retries across backends, as a pure state machine.
//
// It owns no sockets and reads no clock: the caller feeds it the time and the outcome of each
// attempt and carries out the actions it returns. That keeps every timing rule testable with a
// fake clock, and the asio glue (upstream_connector) trivial.
//
// Rules:
//  * A backend's preferred address is tried first; its second address (the other family) starts
//    after `attempt_delay` (RFC 8305's Connection Attempt Delay, 250 ms by default), or at once
//    when the first attempt fails. The first attempt to connect wins; the others are cancelled.
//  * A backend whose attempts all failed, or that ran out of its share of the time, is given up
//    and the next backend is asked for, up to `max_backends` in all.
//  * All of it within `connect_timeout`; each backend gets an equal share of what is left when it
//    starts, so a black-holed first backend cannot eat the whole budget.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "net/ip_address.hpp"

namespace dsproxy::proxy {

struct ConnectSchedulerOptions {
  std::chrono::milliseconds attempt_delay{250};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  int max_backends = 3;
};

struct BackendTargets {
  std::vector<net::SocketAddress> addresses;  // 1 or 2, preferred first
  int tag = -1;                               // the caller's backend id, echoed in attempts
};

class ConnectScheduler {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  enum class ActionKind {
    start,    // open a socket and connect to attempts()[attempt].address
    cancel,   // lost the race: close it, it is not the endpoint's fault
    abandon,  // timed out: close it and count it as a failure of that endpoint
    succeed,  // attempts()[attempt] is the upstream; the scheduler is finished
    fail,     // nothing connected; the scheduler is finished
  };
  struct Action {
    ActionKind kind;
    int attempt = -1;
  };

  enum class AttemptState { running, connected, failed, cancelled, abandoned };
  struct Attempt {
    net::SocketAddress address;
    int backend = 0;  // 0 for the first backend tried, 1 for the first retry, ...
    int tag = -1;
    bool second_family = false;  // the Happy Eyeballs partner, not the preferred address
    AttemptState state = AttemptState::running;
  };

  // `next_backend` returns the next backend to try, or nullopt when there is none left.
  ConnectScheduler(ConnectSchedulerOptions options, std::function<std::optional<BackendTargets>()> next_backend);

  std::vector<Action> start(TimePoint now);
  std::vector<Action> on_result(int attempt, bool connected, TimePoint now);
  // Call when now >= next_deadline() (extra calls are harmless).
  std::vector<Action> on_timer(TimePoint now);
  // `attempt` failed because the node itself is out of something every attempt needs
  // (descriptors, memory): another address or backend would fail the same way, so none is
  // started. The attempt is failed, any other still running is cancelled, and the scheduler fails.
  std::vector<Action> give_up(int attempt);

  TimePoint next_deadline() const;
  bool finished() const { return finished_; }
  bool timed_out() const { return timed_out_; }
  int backends_tried() const { return backends_tried_; }
  const std::vector<Attempt>& attempts() const { return attempts_; }

 private:
  void begin_backend(TimePoint now, std::vector<Action>& out);
  void start_attempt(const net::SocketAddress& address, bool second, std::vector<Action>& out);
  void end_backend(TimePoint now, AttemptState running_becomes, std::vector<Action>& out);
  void finish_failed(std::vector<Action>& out);
  bool backend_has_running() const;

  ConnectSchedulerOptions options_;
  std::function<std::optional<BackendTargets>()> next_backend_;
  std::vector<Attempt> attempts_;
  TimePoint overall_deadline_{};
  TimePoint backend_deadline_{};
  std::optional<TimePoint> second_due_;
  std::optional<net::SocketAddress> second_address_;
  int backends_tried_ = 0;
  int current_tag_ = -1;
  bool finished_ = false;
  bool timed_out_ = false;
};

}  // namespace dsproxy::proxy
