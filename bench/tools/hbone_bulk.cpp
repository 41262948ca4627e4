// Bulk throughput of one HBONE stream over loopback against the plaintext relay, on one worker
// io_context each: prints Gbit/s and the worker thread's CPU seconds per Gbit transferred.
//
//   dsproxy_hbone_bulk [MiB per run, default 2048]
//
// HBONE path: app -> client relay -> stream -> TLS 1.3 + HTTP/2 -> server session -> relay -> sink
// (both proxies' work on the one worker thread, as two nodes' workers would share this machine).
// Plaintext path: app -> proxy::start_relay -> sink (dsproxy's relay today).
#include <time.h>

#include <cstdio>

#include "../../tests/unit/hbone_harness.hpp"
#include "proxy/relay.hpp"

using namespace dsproxy::hbone::test;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

double thread_cpu() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// A pod that reads and discards until EOF, on its own thread.
class Discard {
 public:
  Discard() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    ::listen(fd_, 16);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    endpoint = {asio::ip::address_v4::loopback(), ntohs(sa.sin_port)};
    thread_ = std::thread([this] {
      for (;;) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        static char buf[1 << 18];
        while (::recv(c, buf, sizeof buf, 0) > 0) {
        }
        ::close(c);
      }
    });
  }
  ~Discard() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  tcp::endpoint endpoint;

 private:
  int fd_;
  std::thread thread_;
};

struct Run {
  double seconds, cpu;
};

Run pump(Harness& h, int fd, std::size_t bytes) {
  std::vector<char> chunk(1 << 18, 'x');
  double cpu0 = h.post_and_wait([] { return thread_cpu(); });
  auto t0 = std::chrono::steady_clock::now();
  for (std::size_t sent = 0; sent < bytes; sent += chunk.size())
    if (!write_all(fd, chunk.data(), chunk.size())) break;
  ::shutdown(fd, SHUT_WR);
  std::vector<char> ignored;
  read_to_eof(fd, ignored);  // the sink's FIN: every byte went through
  auto t1 = std::chrono::steady_clock::now();
  double cpu1 = h.post_and_wait([] { return thread_cpu(); });
  ::close(fd);
  return {std::chrono::duration<double>(t1 - t0).count(), cpu1 - cpu0};
}

void print(const char* name, std::size_t bytes, Run r) {
  double gbit = static_cast<double>(bytes) * 8 / 1e9;
  std::printf("%-10s %8.2f Gbit/s  worker CPU %.2f s for %.1f Gbit = %.3f CPU-s per Gbit\n", name, gbit / r.seconds,
              r.cpu, gbit, r.cpu / gbit);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t mib = argc > 1 ? std::stoul(argv[1]) : 2048;
  std::size_t bytes = mib << 20;
  Discard sink;
  Harness h;
  {
    // Plaintext: accept on the harness's app listener, connect to the sink, dsproxy's relay.
    auto promise = std::make_shared<std::promise<void>>();
    asio::post(h.io, [&h, &sink, promise] {
      h.app.async_accept([&h, &sink, promise](boost::system::error_code ec, tcp::socket down) {
        auto d = std::make_shared<tcp::socket>(std::move(down));
        auto up = std::make_shared<tcp::socket>(h.io);
        up->async_connect(sink.endpoint, [d, up, promise](boost::system::error_code) {
          dsproxy::proxy::start_relay(std::move(*d), std::move(*up), {}, [](dsproxy::proxy::RelayResult) {});
          promise->set_value();
        });
      });
    });
    int fd = connect_to(h.app.local_endpoint());
    promise->get_future().wait();
    print("plaintext", bytes, pump(h, fd, bytes));
  }
  {
    auto r = h.open(dsproxy::hbone::format_authority(sink.endpoint));
    if (r.status != 200) {
      std::fprintf(stderr, "tunnel refused: %d %s\n", r.status, r.ec.message().c_str());
      return 1;
    }
    print("hbone", bytes, pump(h, r.fd, bytes));
  }
  return 0;
}
