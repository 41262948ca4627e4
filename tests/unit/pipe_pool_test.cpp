#include "proxy/pipe_pool.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

namespace dsproxy::proxy {
namespace {

TEST(PipePool, ReusesDrainedPipesAndClosesOnesThatMayHoldData) {
  PipePool pool(64 * 1024, 2, 8);
  Pipe a = pool.acquire();
  ASSERT_TRUE(a.valid());
  const int a_read = a.read_fd;
  pool.release(a);
  EXPECT_EQ(pool.idle(), 1u);
  Pipe again = pool.acquire();
  EXPECT_EQ(again.read_fd, a_read) << "a drained pipe is reused";
  ASSERT_EQ(::write(again.write_fd, "x", 1), 1);
  pool.release(again, false);
  EXPECT_EQ(pool.idle(), 0u) << "a pipe that may hold bytes is never handed to another connection";
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(PipePool, LendsAtMostTheCap) {
  PipePool pool(64 * 1024, 2, 3);
  std::vector<Pipe> lent;
  for (int i = 0; i < 3; ++i) lent.push_back(pool.acquire());
  for (const auto& p : lent) EXPECT_TRUE(p.valid());
  EXPECT_FALSE(pool.acquire().valid()) << "past the cap the relay must copy instead";
  pool.release(lent.back());
  lent.pop_back();
  lent.push_back(pool.acquire());
  EXPECT_TRUE(lent.back().valid());
  for (auto& p : lent) pool.release(p);
}

TEST(PipePool, EachPipeReportsWhatItReallyHolds) {
  // The relay reads a splice shorter than the pipe's capacity as "socket drained", so the
  // capacity must be the kernel's figure, not the size asked for: 100,000 bytes come back as
  // 32 pages, and a refused F_SETPIPE_SZ (limits) leaves the pipe's own size.
  PipePool pool(100000, 2, 3);
  Pipe p = pool.acquire();
  ASSERT_TRUE(p.valid());
  EXPECT_EQ(p.capacity, static_cast<std::size_t>(::fcntl(p.write_fd, F_GETPIPE_SZ)));
  EXPECT_GE(p.capacity, 100000u);
  pool.release(p);
  Pipe again = pool.acquire();
  EXPECT_EQ(again.capacity, p.capacity) << "a reused pipe keeps its capacity";
  pool.release(again);
}

}  // namespace
}  // namespace dsproxy::proxy
