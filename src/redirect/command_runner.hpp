#pragma once
// Running the programs that apply redirect rules (iptables-restore, ip, ...).
//
// An interface, so the Redirector's command sequences can be tested with a fake that records
// calls and answers from a script, and the real thing is one small class. No shell is involved:
// argv goes to the program as is, and rule text goes in on stdin.

#include <chrono>
#include <string>
#include <vector>

namespace dsproxy::redirect {

struct Command {
  std::vector<std::string> argv;  // argv[0] is the program
  std::string input;              // written to the program's stdin, which is then closed

  bool operator==(const Command&) const = default;
};

struct CommandResult {
  // The program's exit status; 128 + N when signal N ended it (as a shell reports it); 127 when it
  // could not be started (not found, not executable), with the reason in `err`; -1 when its exit
  // status could not be collected.
  int exit_code = 0;
  std::string out;
  std::string err;

  bool ok() const { return exit_code == 0; }
};

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;
  // Runs to completion and never throws for a failing program: callers decide what a non-zero
  // exit means (for `iptables -C` it just means "absent").
  virtual CommandResult run(const Command& command) = 0;
};

// Spawns real processes (posix_spawn: safe in a multi-threaded process, unlike a hand-rolled
// fork that could run into a lock another thread held). The child gets default SIGPIPE handling
// and an empty signal mask, whatever the proxy set for itself.
class ProcessRunner final : public CommandRunner {
 public:
  // A program still running after `timeout` is killed (SIGKILL) and reported as failed: a wedged
  // iptables must not hang a config reload or shutdown forever.
  explicit ProcessRunner(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  CommandResult run(const Command& command) override;

 private:
  std::chrono::milliseconds timeout_;
};

// argv as a shell would need it typed ("ip -4 rule add ..."), for logs and error messages;
// words with anything but [A-Za-z0-9_./:=+,%@-] are single-quoted.
std::string format_argv(const std::vector<std::string>& argv);

}  // namespace dsproxy::redirect
