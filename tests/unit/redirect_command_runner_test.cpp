// ProcessRunner with real (harmless) programs: sh, cat, sleep.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "redirect/command_runner.hpp"

namespace dsproxy::redirect {
namespace redirect_command_runner_test {  // named: unity builds put several test files in one translation unit

TEST(RedirectCommandRunner, CapturesOutputErrorAndExitCode) {
  ProcessRunner runner;
  auto r = runner.run({{"sh", "-c", "echo out; echo err >&2; exit 3"}, ""});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_FALSE(r.ok());
}

TEST(RedirectCommandRunner, ArgumentsAreNotShellParsed) {
  ProcessRunner runner;
  auto r = runner.run({{"printf", "%s|", "a b", "$(echo no)", "'q'"}, ""});
  ASSERT_TRUE(r.ok()) << r.err;
  EXPECT_EQ(r.out, "a b|$(echo no)|'q'|");
}

TEST(RedirectCommandRunner, FeedsStdinAndClosesIt) {
  ProcessRunner runner;
  auto r = runner.run({{"cat"}, "*mangle\nCOMMIT\n"});
  ASSERT_TRUE(r.ok()) << r.err;
  EXPECT_EQ(r.out, "*mangle\nCOMMIT\n");
  // No input: stdin is at EOF at once, so cat does not wait.
  r = runner.run({{"cat"}, ""});
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.out, "");
}

TEST(RedirectCommandRunner, LargeInputAndOutputDoNotDeadlock) {
  ProcessRunner runner;
  std::string input;
  for (int i = 0; input.size() < 4 * 1024 * 1024; ++i) input += "-A DSPROXY_OUTBOUND -s 10.0." + std::to_string(i) + "\n";
  // tee writes stdout and stderr while we are still writing its stdin.
  auto r = runner.run({{"sh", "-c", "tee /dev/stderr"}, input});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.out, input);
  EXPECT_EQ(r.err, input);
}

TEST(RedirectCommandRunner, ProgramIgnoringItsInputIsNotFatal) {
  ProcessRunner runner;
  std::string input(8 * 1024 * 1024, 'x');  // far more than a pipe buffer: the write hits EPIPE
  auto r = runner.run({{"sh", "-c", "exit 5"}, input});
  EXPECT_EQ(r.exit_code, 5);
  // Still alive, and SIGPIPE was not left pending for this thread.
  sigset_t pending;
  sigemptyset(&pending);
  sigpending(&pending);
  EXPECT_EQ(sigismember(&pending, SIGPIPE), 0);
}

TEST(RedirectCommandRunner, MissingProgramIs127) {
  ProcessRunner runner;
  auto r = runner.run({{"dsproxy-no-such-program"}, ""});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_NE(r.err.find("dsproxy-no-such-program: command not found"), std::string::npos) << r.err;
  r = runner.run({{"/nonexistent/iptables"}, ""});
  EXPECT_EQ(r.exit_code, 127);
  r = runner.run({{}, ""});
  EXPECT_EQ(r.exit_code, 127);
}

TEST(RedirectCommandRunner, SignalIsReportedAsShellDoes) {
  ProcessRunner runner;
  auto r = runner.run({{"sh", "-c", "kill -TERM $$"}, ""});
  EXPECT_EQ(r.exit_code, 128 + SIGTERM);
}

TEST(RedirectCommandRunner, HangingProgramIsKilledAfterTimeout) {
  ProcessRunner runner(std::chrono::milliseconds(200));
  const auto start = std::chrono::steady_clock::now();
  auto r = runner.run({{"sleep", "30"}, ""});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
  EXPECT_NE(r.err.find("killed after running longer than 200 ms"), std::string::npos) << r.err;
}

TEST(RedirectCommandRunner, FindsSbinProgramsWithoutSbinInPath) {
  const char* saved = std::getenv("PATH");
  const std::string old = saved ? saved : "";
  ::setenv("PATH", "/nonexistent", 1);
  ProcessRunner runner;
  auto r = runner.run({{"ip", "-V"}, ""});
  ::setenv("PATH", old.c_str(), 1);
  EXPECT_TRUE(r.ok()) << r.err;
  EXPECT_NE((r.out + r.err).find("ip"), std::string::npos);
}

TEST(RedirectCommandRunner, FormatArgvQuotesOnlyWhatNeedsIt) {
  EXPECT_EQ(format_argv({"ip", "-4", "rule", "add", "fwmark", "0x1000/0x1000", "pref", "32000"}),
            "ip -4 rule add fwmark 0x1000/0x1000 pref 32000");
  EXPECT_EQ(format_argv({"sh", "-c", "echo it's"}), "sh -c 'echo it'\\''s'");
  EXPECT_EQ(format_argv({"a", ""}), "a ''");
  EXPECT_EQ(format_argv({"ip6tables", "-s", "fd00::5/128"}), "ip6tables -s fd00::5/128");
}

}  // namespace redirect_command_runner_test
}  // namespace dsproxy::redirect
