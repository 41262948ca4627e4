#pragma once
// The upstream of the DNS proxy: c-ares, driven by an asio io_context.
//
// c-ares tells us which of its sockets it wants read or written (ARES_OPT_SOCK_STATE_CB); each
// such socket is watched with an asio descriptor wait on the io_context, and readiness is handed
// back with ares_process_fd; c-ares's own timeouts run on a steady_timer. So there is no thread
// and no select loop of c-ares's own, and everything happens on the io_context's thread.
//
// Queries are sent raw (ares_send): the client's own question, EDNS included, under a random ID
// of ours (c-ares 1.18 would keep the client's). c-ares retries other servers and timeouts, and re-sends over TCP an answer that came back
// truncated over UDP. Every socket it opens gets SO_MARK `mark` before it connects, so the
// capture rules never take the proxy's own queries.
//
// Only src/resolver/io sources and tests include this; it names no asio or c-ares type.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "resolver/dns_handler.hpp"

namespace boost::asio {
class io_context;
}

namespace dsproxy::resolver {

struct AresOptions {
  // "10.0.0.2", "10.0.0.2:5353", "fd00::2", "[fd00::2]:5353". Empty: the nameservers of
  // `resolv_conf`.
  std::vector<std::string> servers;
  std::string resolv_conf = "/etc/resolv.conf";
  std::uint32_t mark = 0;  // SO_MARK on every c-ares socket; 0 = none
  std::chrono::milliseconds timeout{2000};  // first try; c-ares doubles it on later rounds
  int tries = 2;
};

class AresUpstream final : public Upstream {
 public:
  // Throws std::runtime_error when c-ares cannot be set up (bad server list, unreadable file).
  AresUpstream(boost::asio::io_context& io, AresOptions options);
  ~AresUpstream() override;
  AresUpstream(const AresUpstream&) = delete;
  AresUpstream& operator=(const AresUpstream&) = delete;

  void send(Bytes query, Done done) override;
  // Fails every query in flight (their Done gets !ok) and stops watching sockets. Idempotent;
  // the destructor does it too.
  void shutdown();
  // The servers c-ares uses, as "ip:port", for logs.
  std::vector<std::string> servers() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dsproxy::resolver
