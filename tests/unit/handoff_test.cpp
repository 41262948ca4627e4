// Rule ownership between two dsproxy instances (daemon/handoff): both run here on one io_context
// with a name unique to the test, as two processes in one network namespace would.

#include "daemon/handoff.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <optional>
#include <string>

namespace dsproxy::daemon {
namespace {

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

}  // namespace
}  // namespace dsproxy::daemon
