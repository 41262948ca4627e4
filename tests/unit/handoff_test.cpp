// Rule ownership between two dsproxy instances (daemon/handoff): both run here on one io_context
// with a name unique to the test, as two processes in one network namespace would.

#include "daemon/handoff.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <optional>
#include <future>
#include <thread>
#include <vector>
#include <string>

namespace dsproxy::daemon {
namespace handoff_test {  // named: unity builds put several test files in one translation unit

namespace asio = boost::asio;

std::string unique_name(const char* test) {
  return "dsproxy-test-" + std::to_string(::getpid()) + "-" + test + "-handoff";
}

// Runs `io` until `done` holds, at most 5 s: no test may hang.
template <typename Pred>
bool run_until(asio::io_context& io, Pred done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    io.restart();
    io.run_for(std::chrono::milliseconds(10));
  }
  return done();
}

TEST(Handoff, FirstInstanceOwnsSecondIsSuccessorAndTakesOver) {
  asio::io_context io;
  const auto name = unique_name("takeover");
  int pending_events = 0;
  bool pending = false;
  bool asked = false;
  Handoff old_one(io, name,
                  {.successor_pending = [&](bool p) { pending = p; ++pending_events; },
                   .takeover_requested = [&](std::function<void()> released) {
                     asked = true;
                     released();
                   }});
  EXPECT_EQ(old_one.acquire(), Handoff::Role::owner);

  Handoff new_one(io, name, {});
  EXPECT_EQ(new_one.acquire(), Handoff::Role::successor);
  ASSERT_TRUE(run_until(io, [&] { return pending; })) << "the owner never heard the successor's hello";
  EXPECT_FALSE(old_one.superseded());

  std::optional<bool> result;
  new_one.take_over(std::chrono::seconds(3), [&](bool released) { result = released; });
  ASSERT_TRUE(run_until(io, [&] { return result.has_value(); }));
  EXPECT_TRUE(*result) << "the owner answered, so the successor must report a release";
  EXPECT_TRUE(asked);
  EXPECT_TRUE(old_one.superseded());
  EXPECT_EQ(new_one.role(), Handoff::Role::owner);

  // The name moved with the rules: a third instance finds the new owner (the old one closed it).
  Handoff third(io, name, {});
  EXPECT_EQ(third.acquire(), Handoff::Role::successor);
  EXPECT_FALSE(new_one.superseded());
}

TEST(Handoff, OwnerCarriesOnWhenTheSuccessorGoesAwayBeforeTakingOver) {
  asio::io_context io;
  const auto name = unique_name("gone");
  bool pending = false;
  int events = 0;
  Handoff owner(io, name, {.successor_pending = [&](bool p) { pending = p; ++events; }, .takeover_requested = {}});
  ASSERT_EQ(owner.acquire(), Handoff::Role::owner);
  {
    Handoff successor(io, name, {});
    ASSERT_EQ(successor.acquire(), Handoff::Role::successor);
    ASSERT_TRUE(run_until(io, [&] { return pending; }));
  }  // the successor dies before "takeover"
  ASSERT_TRUE(run_until(io, [&] { return !pending; })) << "the owner must notice the successor left";
  EXPECT_EQ(events, 2);
  EXPECT_FALSE(owner.superseded());
  // And it still owns the name: the next successor finds it.
  Handoff next(io, name, {});
  EXPECT_EQ(next.acquire(), Handoff::Role::successor);
}

TEST(Handoff, SuccessorTakesTheRulesWhenTheOwnerDied) {
  asio::io_context io;
  const auto name = unique_name("died");
  auto owner = std::make_unique<Handoff>(io, name, Handoff::Callbacks{});
  ASSERT_EQ(owner->acquire(), Handoff::Role::owner);
  Handoff successor(io, name, {});
  ASSERT_EQ(successor.acquire(), Handoff::Role::successor);
  owner.reset();  // killed: the kernel releases the name and the connection with the process
  std::optional<bool> result;
  successor.take_over(std::chrono::seconds(3), [&](bool released) { result = released; });
  ASSERT_TRUE(run_until(io, [&] { return result.has_value(); }));
  EXPECT_FALSE(*result) << "nobody released anything";
  EXPECT_EQ(successor.role(), Handoff::Role::owner);
  Handoff next(io, name, {});
  EXPECT_EQ(next.acquire(), Handoff::Role::successor) << "the successor must hold the name now";
}

TEST(Handoff, TheLastInstanceOutClaimsRulesNobodyOwns) {
  // A superseded instance at exit: while its successor lives the rules are the successor's; once
  // the successor is gone nobody holds the name, and the last one out removes them.
  asio::io_context io;
  const auto name = unique_name("orphan");
  Handoff old_one(io, name, {});
  ASSERT_EQ(old_one.acquire(), Handoff::Role::owner);
  auto new_one = std::make_unique<Handoff>(io, name, Handoff::Callbacks{});
  ASSERT_EQ(new_one->acquire(), Handoff::Role::successor);
  std::optional<bool> result;
  new_one->take_over(std::chrono::seconds(3), [&](bool released) { result = released; });
  ASSERT_TRUE(run_until(io, [&] { return result.has_value(); }));
  ASSERT_TRUE(old_one.superseded());
  EXPECT_FALSE(old_one.claim_if_unowned()) << "the successor is alive and owns the rules";
  new_one.reset();  // the successor dies
  EXPECT_TRUE(old_one.claim_if_unowned()) << "nobody owns the rules: the last one out must remove them";
}

TEST(Handoff, AnOwnerThatNeverAnswersIsOverriddenAfterTheTimeout) {
  asio::io_context io;
  const auto name = unique_name("hung");
  std::function<void()> held;  // the owner's control plane never finishes letting go
  Handoff owner(io, name, {.successor_pending = {}, .takeover_requested = [&](std::function<void()> r) { held = r; }});
  ASSERT_EQ(owner.acquire(), Handoff::Role::owner);
  Handoff successor(io, name, {});
  ASSERT_EQ(successor.acquire(), Handoff::Role::successor);
  std::optional<bool> result;
  const auto start = std::chrono::steady_clock::now();
  successor.take_over(std::chrono::milliseconds(300), [&](bool released) { result = released; });
  ASSERT_TRUE(run_until(io, [&] { return result.has_value(); }));
  EXPECT_FALSE(*result);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(300));
  EXPECT_FALSE(owner.superseded());
}

// An abstract name has no permissions: a process of another user in the network namespace
// (here a forked child that dropped to uid/gid 65534) can bind it before dsproxy starts. The
// starting instance must not take it for an owner: no "hello" (nor anything else) goes to it,
// and it acts as owner of the rules itself. Needs root (setresuid); without it the test fails.
// A holder of the name whose backlog is full (it never accepts) must not hang a start or an exit:
// connect(2) to such a unix listener blocks with no time limit unless the socket is non-blocking.
TEST(Handoff, AHolderThatNeverAcceptsHoldsUpNeitherStartNorExit) {
  const auto name = unique_name("full-backlog");
  const std::string address = std::string(1, '\0') + name;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, address.data(), address.size());
  const socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
  const int holder = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(holder, 0);
  ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&sa), len), 0);
  ASSERT_EQ(::listen(holder, 0), 0);
  // Fill the backlog: connect without accepting until the next one would block.
  std::vector<int> fillers;
  for (int i = 0; i < 8; ++i) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    ASSERT_GE(fd, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
      ::close(fd);
      break;
    }
    fillers.push_back(fd);
  }
  ASSERT_FALSE(fillers.empty());
  // acquire() and claim_if_unowned() run on another thread, so a hang fails the test instead of
  // hanging it: closing the holder then releases a blocked connect with ECONNREFUSED.
  asio::io_context io;
  Handoff handoff(io, name, {});
  std::promise<Handoff::Role> role;
  auto acquired = role.get_future();
  std::thread starter([&] {
    const auto r = handoff.acquire();
    handoff.claim_if_unowned();
    role.set_value(r);
  });
  const bool returned = acquired.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  ::close(holder);
  starter.join();
  for (int fd : fillers) ::close(fd);
  EXPECT_TRUE(returned) << "a full backlog held up acquire() or claim_if_unowned()";
  if (returned) EXPECT_EQ(acquired.get(), Handoff::Role::owner);
}

TEST(Handoff, ANameHeldByAnotherUserIsNotTakenForTheOwner) {
  ASSERT_EQ(::geteuid(), 0u) << "needs root to run a child as another user";
  const auto name = unique_name("squatter");
  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Async-signal-safe calls only (the parent has threads). Exit 0: nobody said anything to us.
    ::close(ready[0]);
    ::close(done[1]);
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) ::_exit(10);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    const std::size_t n = std::min(name.size(), sizeof sa.sun_path - 1);
    std::memcpy(sa.sun_path + 1, name.data(), n);  // sun_path[0] == 0: abstract
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0 || ::listen(fd, 4) != 0) ::_exit(11);
    char c = 'r';
    if (::write(ready[1], &c, 1) != 1) ::_exit(12);
    int heard = 0;
    // Until the parent is done (its end of `done` closes), bounded to 10 s.
    for (int i = 0; i < 100; ++i) {
      pollfd fds[2] = {{fd, POLLIN, 0}, {done[0], POLLIN, 0}};
      if (::poll(fds, 2, 100) < 0) ::_exit(13);
      if (fds[0].revents & POLLIN) {
        const int conn = ::accept(fd, nullptr, nullptr);
        char buf[64];
        pollfd in{conn, POLLIN, 0};
        if (conn >= 0 && ::poll(&in, 1, 500) > 0 && ::read(conn, buf, sizeof buf) > 0) heard = 1;
        if (conn >= 0) ::close(conn);
      }
      if (fds[1].revents & (POLLIN | POLLHUP)) break;
    }
    ::_exit(heard);
  }
  ::close(ready[1]);
  ::close(done[0]);
  char c = 0;
  pollfd wait_ready{ready[0], POLLIN, 0};
  const bool bound = ::poll(&wait_ready, 1, 5000) == 1 && ::read(ready[0], &c, 1) == 1;
  ::close(ready[0]);
  std::optional<Handoff::Role> role;
  bool foreign = false, claims = false;
  if (bound) {
    asio::io_context io;
    Handoff starting(io, name, {});
    role = starting.acquire();
    foreign = starting.foreign_holder();
    claims = starting.claim_if_unowned();  // at exit: the squatter owns no rules of ours
  }
  ::close(done[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(bound) << "the child could not bind the name (exit " << WEXITSTATUS(status) << ")";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the name's foreign holder was talked to";
  EXPECT_EQ(role, Handoff::Role::owner);
  EXPECT_TRUE(foreign);
  EXPECT_TRUE(claims);
}

}  // namespace handoff_test
}  // namespace dsproxy::daemon
