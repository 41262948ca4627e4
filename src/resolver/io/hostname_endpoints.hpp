#pragma once
// Hostname endpoints in the running process: a HostnameTable driven by its own c-ares channel
// on the control io_context, ticking once a second for re-resolution. `changed` is posted to the
// io_context whenever resolved addresses change; `run` then rebuilds its snapshot with
// augment()ed objects. Names no asio or c-ares type.

#include <functional>
#include <memory>

#include "config/k8s_objects.hpp"
#include "resolver/io/ares_upstream.hpp"

namespace boost::asio {
class io_context;
}

namespace dsproxy::resolver {

class HostnameEndpoints {
 public:
  // Throws std::runtime_error when c-ares cannot be set up (no nameserver).
  HostnameEndpoints(boost::asio::io_context& io, AresOptions options, std::function<void()> changed);
  ~HostnameEndpoints();
  HostnameEndpoints(const HostnameEndpoints&) = delete;
  HostnameEndpoints& operator=(const HostnameEndpoints&) = delete;

  void update(const config::ClusterObjects& objects);
  void augment(config::ClusterObjects& objects) const;
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dsproxy::resolver
