// Interop with an independent HBONE peer on Node.js's http2/tls stacks (tests/tools/hbone_peer.js):
// the peer plays the remote node both ways. Node 20 must be on PATH (it is a test dependency, as
// for deploy.manifests); without it these tests fail rather than skip.

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include <boost/json.hpp>

#include "hbone_harness.hpp"

namespace dsproxy::hbone::test {
namespace hbone_node_interop_test {  // named: unity builds put several test files in one translation unit

// A child process whose stdout lines we read with a deadline; killed when destroyed.
class NodePeer {
 public:
  explicit NodePeer(std::vector<std::string> args) {
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    args.insert(args.begin(), {"node", std::string(DSPROXY_SOURCE_DIR) + "/tests/tools/hbone_peer.js"});
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      ::close(out[0]);
      ::close(out[1]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execvp("node", argv.data());
      _exit(127);
    }
    ::close(out[1]);
    fd_ = out[0];
  }
  ~NodePeer() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  // The next line that starts with `prefix` (without it), or "" after `timeout`.
  std::string line(const std::string& prefix, std::chrono::milliseconds timeout = 15s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto nl = buffer_.find('\n');
      while (nl != std::string::npos) {
        auto l = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (l.rfind(prefix, 0) == 0) return l.substr(prefix.size());
        nl = buffer_.find('\n');
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return "";
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return "";
      char buf[4096];
      auto n = ::read(fd_, buf, sizeof buf);
      if (n <= 0) return "";
      buffer_.append(buf, static_cast<std::size_t>(n));
    }
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string buffer_;
};

std::vector<std::string> tls_args(const TestPki& pki, const std::string& leaf) {
  return {"--cert", pki.path(leaf + ".pem"), "--key", pki.path(leaf + ".key"), "--ca", pki.path("ca.pem")};
}

boost::json::object run_node_client(Harness& h, const std::string& authority, const std::string& method,
                                    std::size_t bytes) {
  auto args = std::vector<std::string>{"client"};
  for (auto& a : tls_args(h.pki, "client")) args.push_back(a);
  for (auto& a : std::vector<std::string>{"--connect", format_authority(h.hbone_endpoint()), "--authority", authority,
                                          "--method", method, "--bytes", std::to_string(bytes)})
    args.push_back(a);
  NodePeer peer(args);
  auto result = peer.line("RESULT ", 30s);
  if (result.empty()) return {};
  return boost::json::parse(result).as_object();
}

TEST(HboneNodeInterop, NodeClientTunnelsBytesThroughOurServer) {
  Harness h;
  auto result = run_node_client(h, format_authority(h.echo_endpoint()), "CONNECT", 4 << 20);
  ASSERT_FALSE(result.empty()) << "no RESULT from the node client";
  EXPECT_EQ(result["status"].as_int64(), 200);
  EXPECT_EQ(result["sent"].as_int64(), 4 << 20);
  EXPECT_EQ(result["received"].as_int64(), 4 << 20);
  EXPECT_EQ(result["sentSha"], result["receivedSha"]);
  EXPECT_EQ(result["peer"].as_string(), TestPki::spiffe("server"));
  auto [headers, identity] = h.post_and_wait([&] { return std::make_pair(h.seen_headers.at(0), h.seen_identities.at(0)); });
  EXPECT_EQ(identity, TestPki::spiffe("client"));
  ASSERT_NE(find_header(headers, "forwarded"), nullptr);
  EXPECT_EQ(parse_forwarded_for(*find_header(headers, "forwarded")),
            asio::ip::tcp::endpoint(asio::ip::make_address("10.9.8.7"), 1234));
  EXPECT_EQ(h.echo_eofs.load(), 1);  // the node client's END_STREAM reached the pod as FIN
}

TEST(HboneNodeInterop, NodeClientGetsOurErrorStatuses) {
  Harness h;
  EXPECT_EQ(run_node_client(h, format_authority(h.echo_endpoint()), "GET", 0)["status"].as_int64(), 400);
  EXPECT_EQ(run_node_client(h, "example.com:80", "CONNECT", 0)["status"].as_int64(), 400);
  EXPECT_EQ(run_node_client(h, "127.0.0.1:1", "CONNECT", 0)["status"].as_int64(), 503);
  h.post_and_wait([&h] { h.handler = [](std::shared_ptr<IncomingRequest> r) { r->reject(401); }; });
  EXPECT_EQ(run_node_client(h, format_authority(h.echo_endpoint()), "CONNECT", 0)["status"].as_int64(), 401);
}

class NodeServer {
 public:
  explicit NodeServer(const TestPki& pki) : peer_(args(pki)) {
    auto port = peer_.line("PORT ");
    if (!port.empty()) endpoint = {asio::ip::address_v4::loopback(), static_cast<unsigned short>(std::stoi(port))};
  }
  boost::json::object next_request() {
    auto l = peer_.line("REQUEST ");
    return l.empty() ? boost::json::object{} : boost::json::parse(l).as_object();
  }
  asio::ip::tcp::endpoint endpoint;

 private:
  static std::vector<std::string> args(const TestPki& pki) {
    auto a = std::vector<std::string>{"server"};
    for (auto& s : tls_args(pki, "server")) a.push_back(s);
    return a;
  }
  NodePeer peer_;
};

TEST(HboneNodeInterop, OurClientTunnelsBytesThroughANodeServer) {
  Harness h;
  NodeServer node(h.pki);
  ASSERT_NE(node.endpoint.port(), 0) << "the node server did not start";
  PoolKey key{TestPki::spiffe("client"), TestPki::spiffe("server"), node.endpoint};
  asio::ip::tcp::endpoint client(asio::ip::make_address("10.1.1.1"), 33333);
  auto r = h.open(format_authority(h.echo_endpoint()),
                  {{"forwarded", format_forwarded(client)}, {"baggage", "k8s.namespace.name=default"}}, key);
  ASSERT_EQ(r.status, 200) << r.ec.message();
  auto request = node.next_request();
  EXPECT_EQ(request["method"].as_string(), "CONNECT");
  EXPECT_EQ(request["authority"].as_string(), format_authority(h.echo_endpoint()));
  EXPECT_EQ(request["forwarded"].as_string(), "for=\"10.1.1.1:33333\"");
  EXPECT_EQ(request["baggage"].as_string(), "k8s.namespace.name=default");
  EXPECT_EQ(request["peer"].as_string(), TestPki::spiffe("client"));
  auto data = random_bytes(4 << 20, 3);
  std::thread writer([&] {
    EXPECT_TRUE(write_all(r.fd, data.data(), data.size()));
    ::shutdown(r.fd, SHUT_WR);
  });
  std::vector<char> back;
  EXPECT_TRUE(read_to_eof(r.fd, back));
  writer.join();
  ::close(r.fd);
  EXPECT_EQ(sha256(back.data(), back.size()), sha256(data.data(), data.size()));
}

TEST(HboneNodeInterop, OurClientReadsANodeServersErrorStatuses) {
  Harness h;
  NodeServer node(h.pki);
  ASSERT_NE(node.endpoint.port(), 0);
  PoolKey key{TestPki::spiffe("client"), TestPki::spiffe("server"), node.endpoint};
  EXPECT_EQ(h.open("example.com:80", {}, key).status, 400);
  EXPECT_EQ(h.open("127.0.0.1:2", {}, key).status, 401);
  EXPECT_EQ(h.open("127.0.0.1:1", {}, key).status, 503);
  auto ok = h.open(format_authority(h.echo_endpoint()), {}, key);
  EXPECT_EQ(ok.status, 200);
  ::close(ok.fd);
  EXPECT_EQ(h.pool_connections(), 1u);  // every stream on one pooled connection
}

}  // namespace hbone_node_interop_test
}  // namespace dsproxy::hbone::test
