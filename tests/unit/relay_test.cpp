// Relay edge cases on loopback: integrity in both directions, half-close, reset propagation and
// the idle timeout. The client and server are plain blocking sockets on the test's threads; the
// relay runs on its own io_context thread, as on a worker.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <atomic>
#include <csignal>
#include <cstring>
#include <functional>
#include <future>
#include <random>
#include <thread>
#include <tuple>

#include "proxy/relay.hpp"

namespace dsproxy::proxy {
namespace relay_test {  // named: unity builds put several test files in one translation unit

namespace asio = boost::asio;

int listen_loopback(std::uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::listen(fd, 16), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int connect_loopback(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  timeval tv{10, 0};  // no test may hang: every blocking read gives up after 10 s
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

void write_all(int fd, const std::string& data) {
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    ASSERT_GT(n, 0) << strerror(errno);
    off += static_cast<std::size_t>(n);
  }
}

// Reads until EOF; returns the data and the errno that ended it (0 for a clean EOF).
std::pair<std::string, int> read_to_end(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    return {out, n == 0 ? 0 : errno};
  }
}

void reset_close(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// A free function, not a capturing lambda: the coroutine frame copies its parameters, whereas a
// lambda's captures live in the closure object, which would be gone when the coroutine resumes.
asio::awaitable<void> run_relay(asio::io_context& io, int downstream_fd, int upstream_fd, RelayOptions options,
                                std::promise<RelayResult>& result) {
  tcp::socket downstream(io, tcp::v4(), downstream_fd);
  tcp::socket upstream(io, tcp::v4(), upstream_fd);
  result.set_value(co_await async_relay(std::move(downstream), std::move(upstream), options, asio::use_awaitable));
}

// client --(A)--> relay --(B)--> server
class RelayTest : public ::testing::Test {
 protected:
  // `before_relay` runs once both connections exist but before the relay starts.
  void start(RelayOptions options = {}, const std::function<void()>& before_relay = {}) {
    std::uint16_t proxy_port = 0, server_port = 0;
    proxy_listener_ = listen_loopback(proxy_port);
    server_listener_ = listen_loopback(server_port);
    client_ = connect_loopback(proxy_port);
    int downstream_fd = ::accept(proxy_listener_, nullptr, nullptr);
    downstream_fd_ = downstream_fd;
    int upstream_fd = connect_loopback(server_port);
    upstream_fd_ = upstream_fd;
    server_ = ::accept(server_listener_, nullptr, nullptr);
    timeval tv{10, 0};
    ::setsockopt(server_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    if (before_relay) before_relay();
    asio::co_spawn(io_, run_relay(io_, downstream_fd, upstream_fd, options, result_), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }

  // The relay's result, or a test failure after 10 s: get() on a future that is not ready would
  // block forever, turning a relay that never ends into a hung test instead of a failed one.
  // The returned poison values are never what a finished relay reports, so later checks fail too.
  RelayResult result() {
    auto f = result_.get_future();
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      ADD_FAILURE() << "the relay did not finish within 10 s";
      return RelayResult{~std::uint64_t{0}, ~std::uint64_t{0}, true, true};
    }
    return f.get();
  }

  void TearDown() override {
    if (thread_.joinable()) {
      io_.stop();
      thread_.join();
    }
    for (int fd : {client_, server_, proxy_listener_, server_listener_})
      if (fd >= 0) ::close(fd);
  }

  asio::io_context io_;
  std::thread thread_;
  std::promise<RelayResult> result_;
  int client_ = -1, server_ = -1, proxy_listener_ = -1, server_listener_ = -1;
  int downstream_fd_ = -1;  // the relay's socket towards the client (owned by the relay)
  int upstream_fd_ = -1;    // the relay's socket towards the server (owned by the relay)
};

TEST_F(RelayTest, CopiesBothDirectionsWithoutLossOrReordering) {
  start();
  const std::string up = random_bytes(4 << 20, 1), down = random_bytes(3 << 20, 2);
  // The server reads everything before answering, so both directions cross the relay in full.
  std::thread server([&] {
    auto [got, err] = read_to_end(server_);
    EXPECT_EQ(err, 0);
    EXPECT_TRUE(got == up) << "upstream data differs, " << got.size() << " bytes";
    write_all(server_, down);
    ::shutdown(server_, SHUT_WR);
  });
  write_all(client_, up);
  ::shutdown(client_, SHUT_WR);
  auto [got, err] = read_to_end(client_);
  server.join();
  EXPECT_EQ(err, 0);
  EXPECT_TRUE(got == down) << "downstream data differs, " << got.size() << " bytes";
  auto r = result();
  EXPECT_EQ(r.bytes_to_upstream, up.size());
  EXPECT_EQ(r.bytes_to_downstream, down.size());
  EXPECT_FALSE(r.reset);
}

TEST_F(RelayTest, SmallWritesToASlowReceiverAreKeptNotLost) {
  // Small messages are copied through the worker's shared scratch buffer. When the receiver's
  // buffers are full, what it could not take must move to the connection's own buffer before
  // the worker runs anything else: the bytes arrive complete and in order.
  start({}, [this] {
    int small = 4096;  // tiny buffers towards the server, so that sends come back short
    ::setsockopt(upstream_fd_, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    ::setsockopt(server_, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  });
  std::string sent;
  for (int i = 0; i < 60; ++i) sent += random_bytes(1000 + static_cast<std::size_t>(i) * 7, 100 + i);
  std::string got;
  int err = -1;
  std::thread server([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // starts reading late
    std::tie(got, err) = read_to_end(server_);
  });
  for (std::size_t off = 0, i = 0; off < sent.size(); ++i) {
    const std::size_t n = std::min<std::size_t>(1000 + i * 7, sent.size() - off);
    write_all(client_, sent.substr(off, n));  // each write arrives as a short read
    off += n;
    if (i % 20 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::shutdown(client_, SHUT_WR);
  server.join();
  EXPECT_EQ(err, 0);
  EXPECT_TRUE(got == sent) << got.size() << " of " << sent.size() << " bytes, or reordered";
  ::shutdown(server_, SHUT_WR);
  EXPECT_EQ(result().bytes_to_upstream, sent.size());
}

TEST_F(RelayTest, AlternatingSmallAndBulkTransfersStayIntact) {
  // Directions switch between copying (short reads) and splicing (a read that filled the
  // scratch buffer) as the traffic changes: request/response rounds of very different sizes.
  start();
  for (int round = 0; round < 12; ++round) {
    const std::size_t size = round % 3 == 0 ? (1u << 20) + static_cast<std::size_t>(round) : 10u + static_cast<std::size_t>(round);
    const std::string request = random_bytes(size, 1000 + round), response = random_bytes(size / 2 + 1, 2000 + round);
    std::thread server([&] {
      std::string got(request.size(), '\0');
      ASSERT_EQ(::recv(server_, got.data(), got.size(), MSG_WAITALL), static_cast<ssize_t>(got.size()));
      EXPECT_TRUE(got == request) << "round " << round;
      write_all(server_, response);
    });
    write_all(client_, request);
    std::string got(response.size(), '\0');
    ASSERT_EQ(::recv(client_, got.data(), got.size(), MSG_WAITALL), static_cast<ssize_t>(got.size()));
    EXPECT_TRUE(got == response) << "round " << round;
    server.join();
  }
  ::shutdown(client_, SHUT_WR);
  ::shutdown(server_, SHUT_WR);
  EXPECT_FALSE(result().reset);
}

TEST(RelayOwnership, DestroyingTheIoContextResetsOpenRelays) {
  // A relay owns its connection. When its io_context is destroyed with the relay still open (a
  // stop without drain, a drain whose grace ran out), both peers must see a reset: a FIN would
  // read as a clean end of stream and silently truncate a transfer. The handler is destroyed
  // (releasing what it holds) without being called.
  std::uint16_t proxy_port = 0, server_port = 0;
  int proxy_listener = listen_loopback(proxy_port), server_listener = listen_loopback(server_port);
  int client = connect_loopback(proxy_port);
  int downstream_fd = ::accept(proxy_listener, nullptr, nullptr);
  int upstream_fd = connect_loopback(server_port);
  int server = ::accept(server_listener, nullptr, nullptr);
  timeval tv{10, 0};
  ::setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  struct Probe {
    std::shared_ptr<int> alive = std::make_shared<int>(0);
    bool* called;
    void operator()(RelayResult) const { *called = true; }
  };
  bool called = false;
  std::weak_ptr<int> handler_state;
  {
    asio::io_context io;
    Probe probe{.called = &called};
    handler_state = probe.alive;
    start_relay(tcp::socket(io, tcp::v4(), downstream_fd), tcp::socket(io, tcp::v4(), upstream_fd), {},
                std::move(probe));
    write_all(client, "in flight");
    io.run_for(std::chrono::milliseconds(50));
    char buf[9];
    ASSERT_EQ(::recv(server, buf, sizeof buf, MSG_WAITALL), 9);  // relayed: the relay is running
  }
  EXPECT_FALSE(called);
  EXPECT_TRUE(handler_state.expired()) << "the handler was leaked";
  EXPECT_EQ(read_to_end(client).second, ECONNRESET) << "the client must see a reset, not an EOF";
  EXPECT_EQ(read_to_end(server).second, ECONNRESET) << "the server must see a reset, not an EOF";
  for (int fd : {client, server, proxy_listener, server_listener}) ::close(fd);
}

TEST(ReactorAssumption, AWaitStartedAfterBytesArrivedStillCompletes) {
  // The relay waits right after a short read instead of reading once more for EAGAIN. That
  // relies on asio starting every async_wait with EPOLL_CTL_MOD, on which the kernel re-checks
  // readiness: bytes whose edge the reactor saw while nobody waited must still wake the wait.
  std::uint16_t port = 0;
  int listener = listen_loopback(port);
  int writer = connect_loopback(port);
  int reader = ::accept(listener, nullptr, nullptr);
  asio::io_context io;
  tcp::socket socket(io, tcp::v4(), reader);  // registered with epoll here
  io.poll();
  write_all(writer, "late");
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  io.restart();
  io.poll();  // the reactor consumes the edge with no operation waiting
  bool woke = false;
  socket.async_wait(tcp::socket::wait_read, [&](boost::system::error_code ec) { woke = !ec; });
  io.restart();
  io.run_for(std::chrono::seconds(2));
  EXPECT_TRUE(woke);
  ::close(writer);
  ::close(listener);
}

TEST_F(RelayTest, HalfCloseForwardsFinAndReplyStillArrives) {
  start();
  write_all(client_, "ping");
  ::shutdown(client_, SHUT_WR);
  auto [request, err] = read_to_end(server_);  // ends only if the client's FIN was forwarded
  EXPECT_EQ(err, 0);
  EXPECT_EQ(request, "ping");
  write_all(server_, "pong after your FIN");
  ::shutdown(server_, SHUT_WR);
  auto [reply, err2] = read_to_end(client_);
  EXPECT_EQ(err2, 0);
  EXPECT_EQ(reply, "pong after your FIN");
  EXPECT_FALSE(result().reset);
}

TEST_F(RelayTest, BothSidesDoneBeforeTheRelayStartsStillDeliversAndFinishes) {
  // Both peers sent everything and their FIN before the relay ran its first read: the client's
  // direction ends without a wait, the server's after the one it starts with (which finds the
  // bytes and the FIN already there), and the relay must complete and deliver every byte.
  start({}, [this] {
    write_all(client_, "early question");
    ::shutdown(client_, SHUT_WR);
    write_all(server_, "early answer");
    ::shutdown(server_, SHUT_WR);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the FINs arrive
  });
  EXPECT_EQ(read_to_end(server_).first, "early question");
  EXPECT_EQ(read_to_end(client_).first, "early answer");
  auto r = result();
  EXPECT_EQ(r.bytes_to_upstream, 14u);
  EXPECT_EQ(r.bytes_to_downstream, 12u);
}

TEST_F(RelayTest, AServerThatSpeaksFirstIsHeardBeforeTheClientSendsAnything) {
  // The upstream's direction starts with a wait, not a read: a greeting the server sent before
  // the relay started (SMTP, MySQL, SSH) must still reach the client, with nothing from it.
  start({}, [this] {
    write_all(server_, "220 ready");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it arrive first
  });
  timeval tv{10, 0};
  ::setsockopt(client_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[9];
  ASSERT_EQ(::recv(client_, buf, sizeof buf, MSG_WAITALL), 9) << "no greeting within 10 s";
  EXPECT_EQ(std::string(buf, sizeof buf), "220 ready");
  ::shutdown(client_, SHUT_WR);
  ::shutdown(server_, SHUT_WR);
  EXPECT_EQ(read_to_end(server_).first, "");
  EXPECT_EQ(read_to_end(client_).first, "");
  EXPECT_EQ(result().bytes_to_downstream, 9u);
}

TEST_F(RelayTest, ClientResetResetsServer) {
  start();
  write_all(client_, "hello");
  char buf[5];
  ASSERT_EQ(::recv(server_, buf, sizeof buf, MSG_WAITALL), 5);
  reset_close(client_);
  client_ = -1;
  auto [rest, err] = read_to_end(server_);
  EXPECT_EQ(err, ECONNRESET);
  EXPECT_TRUE(result().reset);
}

TEST_F(RelayTest, AnExceptionInACallbackResetsBothSidesAndTheRelayStillFinishes) {
  // RelayOptions::test_fault_at_move: the relay's second turn (the first that runs in a callback:
  // start_relay runs one, for the client's direction; the upstream's starts with a wait) throws
  // std::bad_alloc, as an allocation failure would. The connection must end by a reset on both sides (a FIN would pass a truncated
  // stream off as complete), and the relay must finish (its handler called with `fault`), or it
  // would leak with its sockets and hold the active-connection gauge up for ever.
  RelayOptions options;
  options.test_fault_at_move = 2;
  start(options);
  write_all(client_, "hello");
  // If the relay found "hello" already there as it started, it moved it without a callback: the
  // server has it, and the next bytes wake the relay's first callback. Otherwise that callback
  // already threw, the server's read fails, and the second send goes nowhere.
  char buf[5];
  int server_err = 0;
  if (::recv(server_, buf, sizeof buf, MSG_WAITALL) == 5) {
    ::send(client_, "again", 5, MSG_NOSIGNAL);
    server_err = read_to_end(server_).second;
  } else {
    server_err = errno;  // the reset, which a socket reports once
  }
  EXPECT_EQ(server_err, ECONNRESET);
  auto [to_client, client_err] = read_to_end(client_);
  EXPECT_EQ(client_err, ECONNRESET);
  EXPECT_TRUE(result().fault);
}

TEST_F(RelayTest, AnExceptionAsTheRelayStartsResetsBothSidesToo) {
  RelayOptions options;
  options.test_fault_at_move = 1;  // inside start_relay, before a byte has moved
  start(options);
  // Nothing is sent first: the reset may already be there, and a socket reports it once, to
  // whichever call comes first (a send racing it took the ECONNRESET and left the read an EOF:
  // 1 run in 20 under TSan).
  EXPECT_EQ(read_to_end(client_).second, ECONNRESET);
  EXPECT_EQ(read_to_end(server_).second, ECONNRESET);
  EXPECT_TRUE(result().fault);
}

TEST_F(RelayTest, ServerResetResetsClient) {
  start();
  write_all(server_, "data");
  char buf[4];
  ASSERT_EQ(::recv(client_, buf, sizeof buf, MSG_WAITALL), 4);
  reset_close(server_);
  server_ = -1;
  auto [rest, err] = read_to_end(client_);
  EXPECT_EQ(err, ECONNRESET);
  EXPECT_TRUE(result().reset);
}

TEST_F(RelayTest, ClientResetAfterItsFinWhileServerStreamsResetsServer) {
  // The client half-closes, then resets while the server is still streaming to it: the next
  // splice towards the client fails with EPIPE. That must end this connection (reset the server),
  // not raise SIGPIPE in the process; ProxyServer::start ignores SIGPIPE the same way.
  std::signal(SIGPIPE, SIG_IGN);
  start();
  write_all(client_, "request");
  ::shutdown(client_, SHUT_WR);
  std::atomic<bool> server_saw_error{false};
  std::thread server([&] {
    char req[7];
    ASSERT_EQ(::recv(server_, req, sizeof req, MSG_WAITALL), 7);
    const std::string chunk(64 * 1024, 'z');
    // Bounded: at most 64 MiB, or until the relay resets us.
    for (int i = 0; i < 1024; ++i) {
      if (::send(server_, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0) {
        server_saw_error = true;
        break;
      }
    }
  });
  char some[4096];
  ASSERT_GT(::recv(client_, some, sizeof some, 0), 0);
  reset_close(client_);
  client_ = -1;
  server.join();
  EXPECT_TRUE(server_saw_error) << "the server was never told its client is gone";
  EXPECT_TRUE(result().reset);
}

// The proxy's sockets have SO_OOBINLINE (accepted sockets inherit it from the listener), so an
// urgent byte is relayed as the ordinary byte it is in the stream. A splice read stops at the
// urgent mark: with EAGAIN while the socket stays readable (a relay that kept splicing would spin
// there for ever), or with 0, like an end of stream, when the FIN is already queued behind it.
class RelayUrgentTest : public RelayTest {
 protected:
  const std::string head = random_bytes(40000, 7), tail1 = random_bytes(1000, 8), tail2 = random_bytes(30000, 9);

  // Queues head, the urgent byte and tail1 (and the FIN, if asked) before the relay starts; the
  // first full read turns the direction to splice.
  void start_with_urgent_byte(bool fin_queued) {
    start({}, [&] {
      int one = 1;
      ::setsockopt(downstream_fd_, SOL_SOCKET, SO_OOBINLINE, &one, sizeof one);
      write_all(client_, head);
      ASSERT_EQ(::send(client_, "U", 1, MSG_OOB), 1);
      write_all(client_, tail1);
      if (fin_queued) ::shutdown(client_, SHUT_WR);
    });
  }
};

std::string read_exactly(int fd, std::size_t n) {
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
    if (r <= 0) break;
    got += static_cast<std::size_t>(r);
  }
  out.resize(got);
  return out;
}

TEST_F(RelayUrgentTest, UrgentByteIsRelayedInlineAndTheRestFollows) {
  start_with_urgent_byte(false);
  // The server has the urgent byte and what follows before the client sends more: the relay
  // has passed the mark while no FIN was queued.
  const std::string first = head + "U" + tail1;
  EXPECT_TRUE(read_exactly(server_, first.size()) == first) << "bytes up to and after the urgent byte";
  write_all(client_, tail2);
  ::shutdown(client_, SHUT_WR);
  auto [rest, err] = read_to_end(server_);
  EXPECT_EQ(err, 0);
  EXPECT_TRUE(rest == tail2) << rest.size() << " of " << tail2.size() << " bytes after the urgent byte";
  ::shutdown(server_, SHUT_WR);
  EXPECT_EQ(result().bytes_to_upstream, first.size() + tail2.size());
}

TEST_F(RelayUrgentTest, AFinQueuedBehindTheUrgentByteIsNotTakenForTheEnd) {
  start_with_urgent_byte(true);
  auto [got, err] = read_to_end(server_);
  const std::string sent = head + "U" + tail1;
  EXPECT_EQ(err, 0);
  EXPECT_TRUE(got == sent) << got.size() << " of " << sent.size() << " bytes, or reordered";
  ::shutdown(server_, SHUT_WR);
  EXPECT_EQ(result().bytes_to_upstream, sent.size());
}

TEST_F(RelayTest, IdleConnectionIsResetOnBothSides) {
  start(RelayOptions{std::chrono::milliseconds(100)});
  auto [c, client_err] = read_to_end(client_);
  auto [s, server_err] = read_to_end(server_);
  EXPECT_EQ(client_err, ECONNRESET);
  EXPECT_EQ(server_err, ECONNRESET);
  EXPECT_TRUE(result().idle_timeout);
}

TEST_F(RelayTest, TrafficKeepsConnectionAlivePastIdleTimeout) {
  start(RelayOptions{std::chrono::milliseconds(300)});
  // Twenty exchanges 40 ms apart span 800 ms, over two idle periods, never quiet for one.
  for (int i = 0; i < 20; ++i) {
    write_all(client_, "x");
    char b;
    ASSERT_EQ(::recv(server_, &b, 1, 0), 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
  }
  ::shutdown(client_, SHUT_WR);
  ::shutdown(server_, SHUT_WR);
  auto r = result();
  EXPECT_FALSE(r.idle_timeout);
  EXPECT_EQ(r.bytes_to_upstream, 20u);
}

TEST(RelayIdleSweep, ARelayStartedLateInTheSweepPeriodStillGetsAWholeTimeout) {
  // Relays with the same idle timeout share one sweep timer. The first relay starts it; the
  // second starts 300 ms into its 400 ms period, so the next tick comes 100 ms later. That tick
  // must not reset the second one for having moved nothing "since the last sweep".
  std::promise<RelayResult> first, second;  // outlive the io_context and the relays' frames
  asio::io_context io;
  const RelayOptions options{std::chrono::milliseconds(400)};
  std::uint16_t proxy_port = 0, server_port = 0;
  const int proxy_listener = listen_loopback(proxy_port), server_listener = listen_loopback(server_port);
  struct Ends {
    int client, server;
  };
  auto start_relay_on = [&](std::promise<RelayResult>& result) {
    const int client = connect_loopback(proxy_port);
    const int downstream = ::accept(proxy_listener, nullptr, nullptr);
    const int upstream = connect_loopback(server_port);
    const int server = ::accept(server_listener, nullptr, nullptr);
    asio::post(io, [&io, downstream, upstream, options, &result] {
      asio::co_spawn(io, run_relay(io, downstream, upstream, options, result), asio::detached);
    });
    return Ends{client, server};
  };
  const Ends a = start_relay_on(first);
  auto work = asio::make_work_guard(io);
  std::thread thread([&] { io.run(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const Ends b = start_relay_on(second);
  // 250 ms later the old snapshot would have reset b at the tick in between.
  timeval tv{0, 250000};
  ::setsockopt(b.client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char byte;
  const ssize_t n = ::recv(b.client, &byte, 1, 0);
  const int err = errno;
  EXPECT_EQ(n, -1);
  EXPECT_TRUE(err == EAGAIN || err == EWOULDBLOCK) << "the new connection was reset: " << strerror(err);
  work.reset();
  io.stop();
  thread.join();
  for (int fd : {a.client, a.server, b.client, b.server, proxy_listener, server_listener}) ::close(fd);
}

}  // namespace relay_test
}  // namespace dsproxy::proxy
