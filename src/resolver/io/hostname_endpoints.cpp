#include "resolver/io/hostname_endpoints.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "resolver/hostname_table.hpp"

namespace dsproxy::resolver {

namespace asio = boost::asio;

struct HostnameEndpoints::Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::io_context& io, AresOptions options, std::function<void()> changed)
      : io(io), upstream(io, std::move(options)), table(upstream), timer(io), changed(std::move(changed)) {}

  asio::io_context& io;
  AresUpstream upstream;
  HostnameTable table;
  asio::steady_timer timer;
  std::function<void()> changed;
  bool stopped = false;

  void start() {
    std::weak_ptr<Impl> weak = shared_from_this();
    // Posted, never called from inside a c-ares callback: the rebuild calls update() again.
    table.on_change([weak] {
      if (auto self = weak.lock(); self && !self->stopped)
        asio::post(self->io, [weak] {
          if (auto s = weak.lock(); s && !s->stopped && s->changed) s->changed();
        });
    });
    tick();
  }

  void tick() {
    timer.expires_after(std::chrono::seconds(1));
    timer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->stopped) return;
      self->table.tick();
      self->tick();
    });
  }
};

HostnameEndpoints::HostnameEndpoints(asio::io_context& io, AresOptions options, std::function<void()> changed)
    : impl_(std::make_shared<Impl>(io, std::move(options), std::move(changed))) {
  impl_->start();
}

HostnameEndpoints::~HostnameEndpoints() { stop(); }

void HostnameEndpoints::update(const config::ClusterObjects& objects) {
  if (!impl_->stopped) impl_->table.update(objects);
}

void HostnameEndpoints::augment(config::ClusterObjects& objects) const { impl_->table.augment(objects); }

void HostnameEndpoints::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->timer.cancel();
  impl_->upstream.shutdown();
}

}  // namespace dsproxy::resolver
