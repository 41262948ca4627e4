#pragma once
// Fast refusal of ClusterIP:ports that have nowhere to go.
//
// A captured SYN to a VIP:port whose Service has no servable endpoint (or to a port the Service
// does not have) would otherwise be accepted by the proxy and then reset: the client sees a
// connection that opened and died. With these rules the kernel answers the SYN itself with a
// TCP reset, so the client's connect() fails at once with "connection refused", as it would
// against a host with nothing listening. The rules follow every config reload: a VIP:port
// opens again as soon as an endpoint appears.
//
// Shape (filter table, per family; captured packets reach INPUT because TPROXY delivers them
// locally):
//   INPUT -p tcp --syn -> DSPROXY_REFUSE            only new connections pay for the lookup
//   DSPROXY_REFUSE -d <vip> -p tcp --dport <open port> -j RETURN     per servable port
//   DSPROXY_REFUSE -d <vip> -p tcp -j REJECT --reject-with tcp-reset per VIP

#include <cstdint>
#include <string>
#include <vector>

#include "net/ip_address.hpp"
#include "redirect/command_runner.hpp"
#include "redirect/redirect_options.hpp"

namespace dsproxy::redirect {

struct VipOpenPorts {
  net::IpAddress vip;
  std::vector<std::uint16_t> open_ports;  // every other TCP port of the VIP is refused
  bool operator==(const VipOpenPorts&) const = default;
};

std::string refuse_chain_name(const RedirectOptions& options);
// iptables-restore --noflush input that (re)creates the chain for one family's VIPs.
std::string render_refusals(net::Family family, const std::vector<VipOpenPorts>& vips, const RedirectOptions& options);
// Shell lines for `dsproxy redirect print`.
std::string render_refusals_script(const std::vector<VipOpenPorts>& vips, const RedirectOptions& options);

class VipRefusals {
 public:
  VipRefusals(RedirectOptions options, CommandRunner& runner) : options_(std::move(options)), runner_(runner) {}

  // Replaces the chain atomically per family and makes sure INPUT jumps to it. Idempotent;
  // throws RedirectError naming the failing command.
  void apply(const std::vector<VipOpenPorts>& vips);
  // Removes the jumps and the chain; best effort, reports every failure at the end.
  void uninstall();

 private:
  RedirectOptions options_;
  CommandRunner& runner_;
  std::vector<VipOpenPorts> applied_;
  bool installed_ = false;
};

}  // namespace dsproxy::redirect
