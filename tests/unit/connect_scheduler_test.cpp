// Happy Eyeballs and retry timing, on a fake clock: the scheduler never reads the real one.

#include "proxy/connect_scheduler.hpp"

#include <gtest/gtest.h>

namespace dsproxy::proxy {
namespace connect_scheduler_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;
using Kind = ConnectScheduler::ActionKind;
using State = ConnectScheduler::AttemptState;

net::SocketAddress sa(const char* ip, std::uint16_t port) { return {*net::IpAddress::parse(ip), port}; }

// Backends handed out in order: pod A (IPv6 preferred, IPv4 partner), pod B, pod C (IPv6 only).
struct FakeBackends {
  std::vector<BackendTargets> list{
      {{sa("fd00::a", 80), sa("10.0.0.10", 80)}, 0},
      {{sa("fd00::b", 80), sa("10.0.0.11", 80)}, 1},
      {{sa("fd00::c", 80)}, 2},
  };
  std::size_t next = 0;
  std::optional<BackendTargets> operator()() {
    if (next >= list.size()) return std::nullopt;
    return list[next++];
  }
};

class ConnectSchedulerTest : public ::testing::Test {
 protected:
  ConnectScheduler make(ConnectSchedulerOptions o = {}) {
    return ConnectScheduler(o, [this] { return backends(); });
  }
  static bool has(const std::vector<ConnectScheduler::Action>& actions, Kind kind, int attempt) {
    for (const auto& a : actions)
      if (a.kind == kind && a.attempt == attempt) return true;
    return false;
  }
  FakeBackends backends;
  ConnectScheduler::TimePoint t0 = ConnectScheduler::TimePoint{} + 1000s;
};

TEST_F(ConnectSchedulerTest, PreferredFamilyFirstThenOtherAfterAttemptDelay) {
  auto s = make();
  auto a = s.start(t0);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_TRUE(has(a, Kind::start, 0));
  EXPECT_EQ(s.attempts()[0].address, sa("fd00::a", 80));
  EXPECT_EQ(s.next_deadline(), t0 + 250ms);
  EXPECT_TRUE(s.on_timer(t0 + 249ms).empty()) << "not before the Connection Attempt Delay";
  a = s.on_timer(t0 + 250ms);
  ASSERT_TRUE(has(a, Kind::start, 1));
  EXPECT_EQ(s.attempts()[1].address, sa("10.0.0.10", 80));
  EXPECT_TRUE(s.attempts()[1].second_family);
}

TEST_F(ConnectSchedulerTest, FailureStartsTheOtherFamilyAtOnce) {
  auto s = make();
  s.start(t0);
  auto a = s.on_result(0, false, t0 + 3ms);  // refused after 3 ms
  ASSERT_TRUE(has(a, Kind::start, 1));
  EXPECT_EQ(s.attempts()[1].address, sa("10.0.0.10", 80));
  // The delay timer is gone: nothing else is due at 250 ms.
  EXPECT_TRUE(s.on_timer(t0 + 250ms).empty());
}

TEST_F(ConnectSchedulerTest, FirstToConnectWinsAndLoserIsCancelled) {
  auto s = make();
  s.start(t0);
  s.on_timer(t0 + 250ms);  // both racing now
  auto a = s.on_result(1, true, t0 + 260ms);
  EXPECT_TRUE(has(a, Kind::cancel, 0));
  EXPECT_TRUE(has(a, Kind::succeed, 1));
  EXPECT_TRUE(s.finished());
  EXPECT_EQ(s.attempts()[0].state, State::cancelled);
  // A late result of the cancelled loser changes nothing.
  EXPECT_TRUE(s.on_result(0, true, t0 + 270ms).empty());
  EXPECT_EQ(s.attempts()[1].state, State::connected);
}

TEST_F(ConnectSchedulerTest, PreferredStillWinsIfItConnectsAfterTheDelay) {
  auto s = make();
  s.start(t0);
  s.on_timer(t0 + 250ms);
  auto a = s.on_result(0, true, t0 + 300ms);
  EXPECT_TRUE(has(a, Kind::succeed, 0));
  EXPECT_TRUE(has(a, Kind::cancel, 1));
}

TEST_F(ConnectSchedulerTest, BothFamiliesRefusedRetriesNextBackend) {
  auto s = make();
  s.start(t0);
  s.on_result(0, false, t0 + 1ms);
  auto a = s.on_result(1, false, t0 + 2ms);
  ASSERT_TRUE(has(a, Kind::start, 2));
  EXPECT_EQ(s.attempts()[2].address, sa("fd00::b", 80));
  EXPECT_EQ(s.attempts()[2].backend, 1);
  EXPECT_EQ(s.backends_tried(), 2);
}

TEST_F(ConnectSchedulerTest, BlackHoledBackendGetsItsShareThenNextBackend) {
  auto s = make({250ms, 9s, 3});
  s.start(t0);
  s.on_timer(t0 + 250ms);  // partner started, both hang
  // First backend's share: 9 s / 3 = 3 s.
  EXPECT_EQ(s.next_deadline(), t0 + 3s);
  auto a = s.on_timer(t0 + 3s);
  EXPECT_TRUE(has(a, Kind::abandon, 0));
  EXPECT_TRUE(has(a, Kind::abandon, 1));
  ASSERT_TRUE(has(a, Kind::start, 2));
  EXPECT_EQ(s.attempts()[0].state, State::abandoned);
  // The second backend gets half of the 6 s left.
  EXPECT_EQ(s.next_deadline(), t0 + 3s + 250ms);
  s.on_timer(t0 + 3s + 250ms);
  EXPECT_EQ(s.next_deadline(), t0 + 6s);
}

TEST_F(ConnectSchedulerTest, LateTimerLeavesTheBackendWithoutStartingItsSecondFamily) {
  // The worker was busy and the timer fires only after the backend's share is over: its second
  // family must not be started just to be abandoned (that would count as its failure).
  auto s = make({250ms, 9s, 3});
  s.start(t0);
  auto a = s.on_timer(t0 + 3s);
  EXPECT_TRUE(has(a, Kind::abandon, 0));
  for (const auto& action : a)
    if (action.kind == Kind::start) EXPECT_NE(s.attempts()[static_cast<std::size_t>(action.attempt)].address, sa("10.0.0.10", 80));
  for (const auto& attempt : s.attempts()) EXPECT_NE(attempt.address, sa("10.0.0.10", 80));
}

TEST_F(ConnectSchedulerTest, GivesUpAfterMaxBackends) {
  auto s = make({250ms, 10s, 2});
  s.start(t0);
  s.on_result(0, false, t0 + 1ms);
  s.on_result(1, false, t0 + 2ms);
  s.on_result(2, false, t0 + 3ms);
  auto a = s.on_result(3, false, t0 + 4ms);
  EXPECT_TRUE(has(a, Kind::fail, -1));
  EXPECT_TRUE(s.finished());
  EXPECT_FALSE(s.timed_out());
  EXPECT_EQ(s.backends_tried(), 2);
}

TEST_F(ConnectSchedulerTest, GivesUpWhenBackendsRunOut) {
  backends.list.resize(1);
  auto s = make();
  s.start(t0);
  s.on_result(0, false, t0 + 1ms);
  auto a = s.on_result(1, false, t0 + 2ms);
  EXPECT_TRUE(has(a, Kind::fail, -1));
}

TEST_F(ConnectSchedulerTest, OverallTimeoutAbandonsEverything) {
  backends.list.resize(1);
  auto s = make({250ms, 2s, 1});
  s.start(t0);
  s.on_timer(t0 + 250ms);
  auto a = s.on_timer(t0 + 2s);
  EXPECT_TRUE(has(a, Kind::abandon, 0));
  EXPECT_TRUE(has(a, Kind::abandon, 1));
  EXPECT_TRUE(has(a, Kind::fail, -1));
  EXPECT_TRUE(s.timed_out());
  EXPECT_EQ(s.next_deadline(), ConnectScheduler::TimePoint::max());
}

TEST_F(ConnectSchedulerTest, SingleAddressBackendHasNoDelayTimer) {
  backends.list = {{{sa("10.0.0.1", 80)}, 0}};
  auto s = make({250ms, 10s, 1});
  s.start(t0);
  EXPECT_EQ(s.next_deadline(), t0 + 10s);
  EXPECT_TRUE(has(s.on_result(0, true, t0 + 1ms), Kind::succeed, 0));
}

TEST_F(ConnectSchedulerTest, NoBackendAtAllFailsImmediately) {
  backends.list.clear();
  auto s = make();
  auto a = s.start(t0);
  EXPECT_TRUE(has(a, Kind::fail, -1));
  EXPECT_TRUE(s.attempts().empty());
}

TEST_F(ConnectSchedulerTest, GiveUpStartsNothingMore) {
  // The node ran out of descriptors on the first attempt: no second family, no next backend.
  auto s = make();
  s.start(t0);
  auto a = s.give_up(0);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].kind, Kind::fail);
  EXPECT_TRUE(s.finished());
  EXPECT_EQ(s.attempts().size(), 1u);
  EXPECT_EQ(s.attempts()[0].state, State::failed);
  EXPECT_EQ(s.backends_tried(), 1);
  EXPECT_TRUE(s.on_timer(t0 + 250ms).empty());
}

TEST_F(ConnectSchedulerTest, GiveUpCancelsWhatIsStillRunning) {
  auto s = make();
  s.start(t0);
  s.on_timer(t0 + 250ms);  // both families racing
  auto a = s.give_up(1);
  EXPECT_TRUE(has(a, Kind::cancel, 0));
  EXPECT_TRUE(has(a, Kind::fail, -1));
  EXPECT_EQ(s.attempts()[0].state, State::cancelled);
  EXPECT_EQ(s.attempts()[1].state, State::failed);
  EXPECT_TRUE(s.give_up(0).empty()) << "finished: nothing more to do";
}

}  // namespace connect_scheduler_test
}  // namespace dsproxy::proxy
