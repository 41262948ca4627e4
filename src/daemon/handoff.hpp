#pragma once
// Who owns the node's capture rules when two dsproxies run in one network namespace (a rolling
// update with surge starts the new pod before the old one stops), and how the old one learns
// that a successor is serving.
//
// The rules are shared, not per instance: both instances render identical chains and sets
// (DSPROXY_*), so there is nothing to merge; what matters is that exactly one instance writes
// them at a time, and that the one leaving does not delete what its successor now relies on.
// Ownership is a name: an abstract unix socket "@dsproxy-<chain prefix>-handoff", bound by the
// owner and listening. Why an abstract socket and not a lock file under /run:
//   - its scope is the network namespace, exactly the scope of the rules it guards (two test
//     "nodes" on one host never see each other's; two hostNetwork pods on one node always do);
//   - the kernel releases it when the process dies, however it dies (SIGKILL, OOM): no stale
//     lock, no PID file to second-guess;
//   - it needs no volume: the pod's root filesystem stays read-only.
//
// Protocol (lines over the stream socket; the successor connects, the owner accepts one at a time):
//   successor: "hello <pid>"   owner answers "hello <pid>"; until the successor takes over or goes
//                              away, the owner's readiness says 503 (a kubelet probe on the shared
//                              readiness port may reach either process and must not call the new
//                              pod ready early);
//   successor: "takeover"      sent once the successor's first snapshot is published and its
//                              listeners are in the SO_REUSEPORT groups. The owner stops writing
//                              rules (its control plane drops them without removing anything),
//                              closes the name and its admin/readiness listeners, answers
//                              "released" and is superseded: at exit it removes no rule. The
//                              successor binds the name, installs the rules (an atomic replace of
//                              identical content: capture never stops) and becomes the owner.
// A successor whose owner dies (EOF) or does not answer in time binds the name and installs
// anyway; an owner whose successor goes away before "takeover" carries on as before.
// Both ends check the other's user (SO_PEERCRED): the owner refuses a successor of another
// user, and a successor refuses a name held by another user (an abstract name has no
// permissions: anyone in the network namespace may bind it first) and acts as owner, logging
// the holder's uid and pid.

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace dsproxy::daemon {

class Handoff {
 public:
  struct Callbacks {
    // Owner: a successor said hello (true) or left before taking over (false).
    std::function<void(bool pending)> successor_pending;
    // Owner: the successor asks for the rules. Stop writing them, then call `released` (on the
    // io_context), which answers and makes this instance superseded.
    std::function<void(std::function<void()> released)> takeover_requested;
  };
  enum class Role { owner, successor };

  // `name` without the leading NUL, e.g. "dsproxy-DSPROXY-handoff". Everything runs on `io`.
  Handoff(boost::asio::io_context& io, std::string name, Callbacks callbacks);
  ~Handoff();
  Handoff(const Handoff&) = delete;
  Handoff& operator=(const Handoff&) = delete;

  // At start, before anything is installed, synchronously (bounded, about 2 s at worst): binds
  // the name (owner) or connects to the instance holding it and says hello (successor).
  Role acquire();
  // Successor: asks the owner to let go, waits up to `timeout` for "released", then binds the
  // name and becomes the owner. `done(released)` runs on the io_context either way.
  void take_over(std::chrono::milliseconds timeout, std::function<void(bool released)> done);

  // At exit, for an instance that is not the plain owner (superseded, or a successor whose
  // takeover was cut short): true when no live instance holds the name (it is ours now), i.e.
  // nobody else relies on the rules and the last one out removes them. A successor that died
  // after taking over would otherwise leave rules that divert to nobody.
  bool claim_if_unowned();

  Role role() const { return role_; }
  // acquire() found the name held by a process of another user (refused, logged).
  bool foreign_holder() const { return foreign_holder_; }
  bool superseded() const { return superseded_; }
  // Closes the name and every connection (shutdown).
  void close();

 private:
  bool bind_name();
  void accept_next();
  void read_from_successor(std::shared_ptr<boost::asio::local::stream_protocol::socket> peer,
                           std::shared_ptr<boost::asio::streambuf> buffer = nullptr);
  void finish_take_over(bool released);

  boost::asio::io_context& io_;
  std::string address_;  // with the leading NUL: an abstract socket
  Callbacks callbacks_;
  Role role_ = Role::owner;
  bool superseded_ = false;
  bool foreign_holder_ = false;
  std::optional<boost::asio::local::stream_protocol::acceptor> acceptor_;
  std::shared_ptr<boost::asio::local::stream_protocol::socket> successor_;  // owner: the one being served
  std::optional<boost::asio::local::stream_protocol::socket> owner_;        // successor: our link to the owner
  boost::asio::streambuf owner_buffer_;
  boost::asio::steady_timer timer_;
  std::function<void(bool)> take_over_done_;
};

}  // namespace dsproxy::daemon
