// The fake Kubernetes API server (tests/tools/fake_apiserver) against a raw TLS client: the wire
// format the API client's tests rely on (LIST pages, chunked WATCH lines, 410s, bookmarks) and the
// faults they inject. Every read is bounded (2 s), so a broken server fails instead of hanging.

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "fake_apiserver/fake_api_server.hpp"
#include "fake_apiserver/objects_file.hpp"

namespace fake_apiserver_test {  // named: unity builds put several test files in one translation unit

namespace asio = boost::asio;
namespace ssl = asio::ssl;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using dsproxy::fake_api::ChunkMode;
using dsproxy::fake_api::FailOptions;
using dsproxy::fake_api::FakeApiServer;
using dsproxy::fake_api::FakeApiServerOptions;
using dsproxy::fake_api::parse_objects;
using namespace std::chrono_literals;

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

json::object service(const std::string& ns, const std::string& name, const std::string& cluster_ip = "10.96.0.1") {
  return json::object{{"metadata", {{"namespace", ns}, {"name", name}}},
                      {"spec", {{"clusterIP", cluster_ip}, {"ports", json::array{{{"port", 80}}}}}}};
}

json::object pod(const std::string& name, const std::string& node) {
  return json::object{{"metadata", {{"namespace", "default"}, {"name", name}}}, {"spec", {{"nodeName", node}}}};
}

struct Response {
  unsigned status = 0;
  std::string headers;  // the raw header block, lower-cased names not guaranteed
  std::string body;
  json::object json() const { return json::parse(body).as_object(); }
  bool has_header(const std::string& line) const { return headers.find(line) != std::string::npos; }
};

// A deliberately small HTTP/1.1 client over TLS, so the framing the server sends is checked by
// hand, not smoothed over by a library.
class RawClient {
 public:
  explicit RawClient(const FakeApiServer& server) : RawClient(server, server.ca_file()) {}
  RawClient(const FakeApiServer& server, const std::filesystem::path& ca) : server_(server) {
    tls_.load_verify_file(ca.string());
    tls_.set_verify_mode(ssl::verify_peer);
  }

  // Connects and verifies the server (certificate chain and the IP in its subjectAltName).
  boost::system::error_code connect() {
    stream_.emplace(io_, tls_);
    stream_->set_verify_callback(ssl::host_name_verification("127.0.0.1"));
    boost::system::error_code ec;
    stream_->next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server_.port()), ec);
    if (ec) return ec;
    return run([&](auto handler) { stream_->async_handshake(ssl::stream_base::client, handler); });
  }

  void send(const std::string& target, bool with_token = true, const std::string& token = {}) {
    std::string request = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n";
    if (with_token) request += "Authorization: Bearer " + (token.empty() ? server_.token() : token) + "\r\n";
    request += "\r\n";
    auto ec = run([&](auto handler) { asio::async_write(*stream_, asio::buffer(request), handler); });
    ASSERT_FALSE(ec) << ec.message();
  }

  // Reads the status line and headers; the body (or chunks) stays in the buffer.
  Response read_header() {
    Response response;
    auto ec = run([&](auto handler) { asio::async_read_until(*stream_, asio::dynamic_buffer(buffer_), "\r\n\r\n", handler); });
    if (ec) {
      ADD_FAILURE() << "reading the header: " << ec.message();
      return response;
    }
    auto end = buffer_.find("\r\n\r\n");
    response.headers = buffer_.substr(0, end + 4);
    buffer_.erase(0, end + 4);
    response.status = static_cast<unsigned>(std::stoi(response.headers.substr(9, 3)));
    return response;
  }

  // A complete non-streaming response (Content-Length framing).
  Response get(const std::string& target, bool with_token = true, const std::string& token = {}) {
    send(target, with_token, token);
    Response response = read_header();
    auto at = response.headers.find("Content-Length: ");
    if (at == std::string::npos) {
      ADD_FAILURE() << "no Content-Length in " << response.headers;
      return response;
    }
    std::size_t length = std::stoul(response.headers.substr(at + 16));
    if (!fill(length)) return response;
    response.body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    return response;
  }

  // The next chunk's data; nullopt on the last (zero-size) chunk or when the stream breaks, in
  // which case truncated() says whether a chunk was cut short.
  std::optional<std::string> next_chunk() {
    if (!fill_until("\r\n")) return std::nullopt;
    auto line_end = buffer_.find("\r\n");
    std::size_t size = std::stoul(buffer_.substr(0, line_end), nullptr, 16);
    buffer_.erase(0, line_end + 2);
    if (size == 0) {
      if (fill_until("\r\n")) buffer_.erase(0, buffer_.find("\r\n") + 2);  // the empty trailer
      ended_ = true;
      return std::nullopt;
    }
    if (!fill(size + 2)) {
      truncated_ = buffer_;
      return std::nullopt;
    }
    EXPECT_EQ(buffer_.substr(size, 2), "\r\n") << "chunk data not followed by CRLF";
    std::string data = buffer_.substr(0, size);
    buffer_.erase(0, size + 2);
    ++chunks_;
    return data;
  }

  // The next event line (without '\n') across however many chunks carry it.
  std::optional<json::object> next_event() {
    while (line_buffer_.find('\n') == std::string::npos) {
      auto chunk = next_chunk();
      if (!chunk) return std::nullopt;
      line_buffer_ += *chunk;
    }
    auto end = line_buffer_.find('\n');
    std::string line = line_buffer_.substr(0, end);
    line_buffer_.erase(0, end + 1);
    return json::parse(line).as_object();
  }

  // Bytes received and not consumed yet (TLS records included): 0 means the server sent nothing.
  std::size_t bytes_waiting() {
    boost::system::error_code ec;
    return stream_->next_layer().available(ec) + buffer_.size();
  }
  bool ended() const { return ended_; }                   // the last chunk arrived
  const std::string& truncated() const { return truncated_; }  // data of a chunk cut short
  int chunks() const { return chunks_; }
  const std::string& pending_line() const { return line_buffer_; }

 private:
  template <typename Start>
  boost::system::error_code run(Start start) {
    std::optional<boost::system::error_code> result;
    start([&](boost::system::error_code ec, auto&&...) { result = ec; });
    io_.restart();
    io_.run_for(2s);
    if (!result) {
      boost::system::error_code ignored;
      stream_->next_layer().close(ignored);
      io_.restart();
      io_.run_for(1s);
      return asio::error::timed_out;
    }
    return *result;
  }

  bool fill(std::size_t size) {
    while (buffer_.size() < size) {
      char data[4096];
      std::size_t got = 0;
      auto ec = run([&](auto handler) {
        stream_->async_read_some(asio::buffer(data), [&, handler](boost::system::error_code e, std::size_t n) {
          got = n;
          handler(e, n);
        });
      });
      buffer_.append(data, got);
      if (ec) return buffer_.size() >= size;
    }
    return true;
  }

  bool fill_until(const std::string& delimiter) {
    while (buffer_.find(delimiter) == std::string::npos)
      if (!fill(buffer_.size() + 1)) return false;
    return true;
  }

  const FakeApiServer& server_;
  asio::io_context io_;
  ssl::context tls_{ssl::context::tls_client};
  std::optional<ssl::stream<tcp::socket>> stream_;
  std::string buffer_;
  std::string line_buffer_;
  std::string truncated_;
  bool ended_ = false;
  int chunks_ = 0;
};

class FakeApiServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("dsproxy-fakeapi-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    server_.emplace(FakeApiServerOptions{.dir = dir_});
    server_->start();
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  FakeApiServer& server() { return *server_; }

  std::filesystem::path dir_;
  std::optional<FakeApiServer> server_;
};

std::vector<std::string> names_of(const json::object& list) {
  std::vector<std::string> names;
  for (const auto& item : list.at("items").as_array())
    names.emplace_back(item.at("metadata").at("name").as_string());
  return names;
}

TEST_F(FakeApiServerTest, ListPagesArePinnedToTheFirstPagesResourceVersionAndTokensExpire) {
  for (const char* name : {"a", "b", "c", "d", "e"}) server().upsert("services", service("default", name));
  RawClient client(server());
  ASSERT_FALSE(client.connect());

  Response first = client.get("/api/v1/services?limit=2");
  ASSERT_EQ(first.status, 200u) << first.body;
  EXPECT_TRUE(first.has_header("Content-Type: application/json"));
  json::object page1 = first.json();
  EXPECT_EQ(page1.at("kind").as_string(), "ServiceList");
  EXPECT_EQ(page1.at("apiVersion").as_string(), "v1");
  EXPECT_EQ(names_of(page1), (std::vector<std::string>{"a", "b"}));
  // Items of a typed list carry no kind/apiVersion, as on the real server.
  EXPECT_FALSE(page1.at("items").as_array()[0].as_object().contains("kind"));
  std::string version(page1.at("metadata").at("resourceVersion").as_string());
  EXPECT_EQ(version, std::to_string(server().resource_version()));
  EXPECT_EQ(page1.at("metadata").at("remainingItemCount").as_int64(), 3);
  std::string token(page1.at("metadata").at("continue").as_string());

  // Changes after the first page do not show on the next ones (etcd serves them at that revision).
  server().upsert("services", service("default", "c", "10.96.9.9"));
  server().erase("services", "default", "d");
  server().upsert("services", service("default", "bb"));

  Response second = client.get("/api/v1/services?limit=2&continue=" + token);
  ASSERT_EQ(second.status, 200u) << second.body;
  json::object page2 = second.json();
  EXPECT_EQ(names_of(page2), (std::vector<std::string>{"c", "d"}));
  EXPECT_EQ(page2.at("items").as_array()[0].at("spec").at("clusterIP").as_string(), "10.96.0.1");
  EXPECT_EQ(page2.at("metadata").at("resourceVersion").as_string(), version);
  std::string token2(page2.at("metadata").at("continue").as_string());

  Response third = client.get("/api/v1/services?limit=2&continue=" + token2);
  json::object page3 = third.json();
  EXPECT_EQ(names_of(page3), (std::vector<std::string>{"e"}));
  EXPECT_FALSE(page3.at("metadata").as_object().contains("continue"));

  server().expire_continue_tokens();
  Response expired = client.get("/api/v1/services?limit=2&continue=" + token2);
  EXPECT_EQ(expired.status, 410u);
  EXPECT_EQ(expired.json().at("kind").as_string(), "Status");
  EXPECT_EQ(expired.json().at("reason").as_string(), "Expired");
  EXPECT_EQ(expired.json().at("code").as_int64(), 410);

  // A fresh list sees the current state; its token dies with a compaction.
  Response fresh = client.get("/api/v1/services?limit=3");
  EXPECT_EQ(names_of(fresh.json()), (std::vector<std::string>{"a", "b", "bb"}));
  std::string token3(fresh.json().at("metadata").at("continue").as_string());
  server().upsert("services", service("default", "f"));
  server().compact();
  EXPECT_EQ(client.get("/api/v1/services?limit=3&continue=" + token3).status, 410u);
}

TEST_F(FakeApiServerTest, PodsFilterByNodeNameFieldSelectorAndNamespacePath) {
  server().upsert("pods", pod("p1", "node-a"));
  server().upsert("pods", pod("p2", "node-b"));
  server().upsert("pods", pod("p3", "node-a"));
  json::object other = pod("p4", "node-a");
  other["metadata"].as_object()["namespace"] = "other";
  server().upsert("pods", other);
  RawClient client(server());
  ASSERT_FALSE(client.connect());

  Response mine = client.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a");
  ASSERT_EQ(mine.status, 200u) << mine.body;
  EXPECT_EQ(mine.json().at("kind").as_string(), "PodList");
  EXPECT_EQ(names_of(mine.json()), (std::vector<std::string>{"p1", "p3", "p4"}));
  Response in_default = client.get("/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName=node-a");
  EXPECT_EQ(names_of(in_default.json()), (std::vector<std::string>{"p1", "p3"}));
  EXPECT_EQ(client.get("/api/v1/namespaces/other/pods/p4").json().at("kind").as_string(), "Pod");
  EXPECT_EQ(client.get("/api/v1/namespaces/other/pods/nope").status, 404u);
  EXPECT_EQ(client.get("/apis/discovery.k8s.io/v1/endpointslices").json().at("kind").as_string(),
            "EndpointSliceList");
  EXPECT_EQ(client.get("/apis/discovery.k8s.io/v1/services").status, 404u);
}

TEST_F(FakeApiServerTest, WatchStreamsEventsInOrderOneLinePerChunk) {
  server().upsert("services", service("default", "before"));
  std::uint64_t since = server().resource_version();
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  client.send("/api/v1/services?watch=1&resourceVersion=" + std::to_string(since) +
              "&allowWatchBookmarks=true&timeoutSeconds=30");
  Response header = client.read_header();
  ASSERT_EQ(header.status, 200u);
  EXPECT_TRUE(header.has_header("Transfer-Encoding: chunked")) << header.headers;
  EXPECT_TRUE(header.has_header("Content-Type: application/json"));
  ASSERT_TRUE(server().wait_for_watches(1, 2s));

  std::uint64_t added = server().upsert("services", service("default", "web"));
  std::uint64_t modified = server().upsert("services", service("default", "web", "10.96.0.2"));
  std::uint64_t deleted = *server().erase("services", "default", "web");
  EXPECT_LT(added, modified);
  EXPECT_LT(modified, deleted);

  const std::pair<const char*, std::uint64_t> expected[] = {
      {"ADDED", added}, {"MODIFIED", modified}, {"DELETED", deleted}};
  for (const auto& [type, version] : expected) {
    auto event = client.next_event();
    ASSERT_TRUE(event) << "stream ended before " << type;
    EXPECT_EQ(event->at("type").as_string(), type);
    const json::object& object = event->at("object").as_object();
    // Watch objects carry their kind, unlike LIST items.
    EXPECT_EQ(object.at("kind").as_string(), "Service");
    EXPECT_EQ(object.at("metadata").at("name").as_string(), "web");
    EXPECT_EQ(object.at("metadata").at("resourceVersion").as_string(), std::to_string(version));
  }
  EXPECT_EQ(client.chunks(), 3);
  EXPECT_TRUE(client.pending_line().empty());
}

TEST_F(FakeApiServerTest, WatchFromResourceVersionZeroStartsWithTheCurrentObjects) {
  server().upsert("pods", pod("here", "node-a"));
  server().upsert("pods", pod("there", "node-b"));
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  client.send("/api/v1/pods?watch=true&resourceVersion=0&fieldSelector=spec.nodeName%3Dnode-a");
  ASSERT_EQ(client.read_header().status, 200u);
  auto initial = client.next_event();
  ASSERT_TRUE(initial);
  EXPECT_EQ(initial->at("type").as_string(), "ADDED");
  EXPECT_EQ(initial->at("object").at("metadata").at("name").as_string(), "here");
  ASSERT_TRUE(server().wait_for_watches(1, 2s));
  // A pod moving onto the node enters the selector (ADDED), one leaving it is DELETED for this watch.
  server().upsert("pods", pod("there", "node-a"));
  server().upsert("pods", pod("here", "node-b"));
  auto entered = client.next_event();
  auto left = client.next_event();
  ASSERT_TRUE(entered && left);
  EXPECT_EQ(entered->at("type").as_string(), "ADDED");
  EXPECT_EQ(entered->at("object").at("metadata").at("name").as_string(), "there");
  EXPECT_EQ(left->at("type").as_string(), "DELETED");
  EXPECT_EQ(left->at("object").at("metadata").at("name").as_string(), "here");
}

TEST_F(FakeApiServerTest, WatchFromACompactedVersionGetsAnErrorStatus410ThenTheStreamEnds) {
  std::uint64_t old = server().upsert("services", service("default", "a"));
  server().upsert("services", service("default", "b"));
  server().compact();
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  client.send("/api/v1/services?watch=1&resourceVersion=" + std::to_string(old - 1));
  ASSERT_EQ(client.read_header().status, 200u);  // the real server reports it inside the stream
  auto event = client.next_event();
  ASSERT_TRUE(event);
  EXPECT_EQ(event->at("type").as_string(), "ERROR");
  const json::object& status = event->at("object").as_object();
  EXPECT_EQ(status.at("kind").as_string(), "Status");
  EXPECT_EQ(status.at("code").as_int64(), 410);
  EXPECT_EQ(status.at("reason").as_string(), "Expired");
  EXPECT_FALSE(client.next_event());
  EXPECT_TRUE(client.ended()) << "the stream must end with the last chunk";

  // From the compaction point on, nothing is missing: no error.
  RawClient current(server());
  ASSERT_FALSE(current.connect());
  current.send("/api/v1/services?watch=1&resourceVersion=" + std::to_string(server().resource_version()));
  ASSERT_EQ(current.read_header().status, 200u);
  ASSERT_TRUE(server().wait_for_watches(1, 2s));
  server().upsert("services", service("default", "c"));
  auto next = current.next_event();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->at("type").as_string(), "ADDED");
}

TEST_F(FakeApiServerTest, BookmarksGoOnlyToWatchesThatAskAndCarryOnlyTheResourceVersion) {
  RawClient with(server());
  RawClient without(server());
  ASSERT_FALSE(with.connect());
  ASSERT_FALSE(without.connect());
  std::string since = std::to_string(server().resource_version());
  with.send("/apis/discovery.k8s.io/v1/endpointslices?watch=1&allowWatchBookmarks=true&resourceVersion=" + since);
  without.send("/apis/discovery.k8s.io/v1/endpointslices?watch=1&resourceVersion=" + since);
  ASSERT_EQ(with.read_header().status, 200u);
  ASSERT_EQ(without.read_header().status, 200u);
  ASSERT_TRUE(server().wait_for_watches(2, 2s));
  server().send_bookmarks();
  server().upsert("endpointslices",
                  json::object{{"metadata", {{"namespace", "default"}, {"name", "web-abc"}}},
                               {"addressType", "IPv4"}});

  auto bookmark = with.next_event();
  ASSERT_TRUE(bookmark);
  EXPECT_EQ(bookmark->at("type").as_string(), "BOOKMARK");
  const json::object& object = bookmark->at("object").as_object();
  EXPECT_EQ(object.size(), 3u) << json::serialize(object);
  EXPECT_EQ(object.at("kind").as_string(), "EndpointSlice");
  EXPECT_EQ(object.at("apiVersion").as_string(), "discovery.k8s.io/v1");
  EXPECT_EQ(object.at("metadata").as_object().size(), 1u);
  EXPECT_EQ(object.at("metadata").at("resourceVersion").as_string(), since);
  EXPECT_EQ(with.next_event()->at("type").as_string(), "ADDED");
  EXPECT_EQ(without.next_event()->at("type").as_string(), "ADDED");  // no bookmark before it
}

TEST_F(FakeApiServerTest, SplitAndCoalescedChunksCarryTheSameLines) {
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  client.send("/api/v1/nodes?watch=1&resourceVersion=" + std::to_string(server().resource_version()));
  ASSERT_EQ(client.read_header().status, 200u);
  ASSERT_TRUE(server().wait_for_watches(1, 2s));
  server().set_chunk_mode(ChunkMode::split);
  server().upsert("nodes", json::object{{"metadata", {{"name", "kind-worker"}}}});
  auto split = client.next_event();
  ASSERT_TRUE(split);
  EXPECT_EQ(split->at("object").at("metadata").at("name").as_string(), "kind-worker");
  EXPECT_FALSE(split->at("object").at("metadata").as_object().contains("namespace"));
  EXPECT_EQ(client.chunks(), 2);

  server().stall_watches();  // lets two events queue up, then go out as one chunk
  server().set_chunk_mode(ChunkMode::coalesced);
  server().upsert("nodes", json::object{{"metadata", {{"name", "kind-worker2"}}}});
  server().upsert("nodes", json::object{{"metadata", {{"name", "kind-worker3"}}}});
  server().stall_watches(false);
  auto first = client.next_event();
  auto second = client.next_event();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->at("object").at("metadata").at("name").as_string(), "kind-worker2");
  EXPECT_EQ(second->at("object").at("metadata").at("name").as_string(), "kind-worker3");
  EXPECT_EQ(client.chunks(), 3);
}

TEST_F(FakeApiServerTest, CutStreamEndsInsideAChunkAndALine) {
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  client.send("/api/v1/services?watch=1&resourceVersion=" + std::to_string(server().resource_version()));
  ASSERT_EQ(client.read_header().status, 200u);
  ASSERT_TRUE(server().wait_for_watches(1, 2s));
  server().cut_streams();
  EXPECT_FALSE(client.next_event());
  EXPECT_FALSE(client.ended());
  EXPECT_FALSE(client.truncated().empty()) << "no partial chunk seen";
  EXPECT_EQ(client.truncated().find('\n'), std::string::npos);
  EXPECT_TRUE(server().wait_for_watches(0, 0ms) && server().open_watches() == 0);
}

TEST_F(FakeApiServerTest, InjectedFailuresLookLikeTheRealServersAndAreCounted) {
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  server().fail_next(2, 429, {.retry_after = 3});
  server().fail_next(1, 403, {.path_prefix = "/apis/discovery.k8s.io"});
  for (int i = 0; i < 2; ++i) {
    Response throttled = client.get("/api/v1/pods");
    EXPECT_EQ(throttled.status, 429u);
    EXPECT_TRUE(throttled.has_header("Retry-After: 3")) << throttled.headers;
    EXPECT_EQ(throttled.json().at("reason").as_string(), "TooManyRequests");
    EXPECT_EQ(throttled.json().at("details").at("retryAfterSeconds").as_int64(), 3);
  }
  EXPECT_EQ(client.get("/api/v1/pods").status, 200u);
  Response forbidden = client.get("/apis/discovery.k8s.io/v1/endpointslices?watch=1");
  EXPECT_EQ(forbidden.status, 403u);
  std::string message(forbidden.json().at("message").as_string());
  EXPECT_NE(message.find("cannot watch resource \"endpointslices\" in API group \"discovery.k8s.io\""),
            std::string::npos)
      << message;

  server().fail_next(1, 503, {.watch = true});
  EXPECT_EQ(client.get("/api/v1/pods").status, 200u);  // not a watch: the rule waits
  EXPECT_EQ(client.get("/api/v1/pods?watch=1").status, 503u);
}

TEST_F(FakeApiServerTest, TokenIsRequiredRotatesAndIsNeverRecorded) {
  std::string old_token = server().token();
  EXPECT_EQ(read_file(server().token_file()), old_token);
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  EXPECT_EQ(client.get("/api/v1/services", false).status, 401u);
  EXPECT_EQ(client.get("/api/v1/services").status, 200u);

  server().set_token("rotated-token-2");
  EXPECT_EQ(read_file(server().token_file()), "rotated-token-2");
  EXPECT_EQ(read_file(server().service_account_dir() / "token"), "rotated-token-2");
  Response stale = client.get("/api/v1/services", true, old_token);
  EXPECT_EQ(stale.status, 401u);
  EXPECT_EQ(stale.json().at("reason").as_string(), "Unauthorized");
  EXPECT_EQ(client.get("/api/v1/services", true, "rotated-token-2").status, 200u);

  auto log = server().requests();
  ASSERT_EQ(log.size(), 4u);
  EXPECT_FALSE(log[0].has_authorization);
  EXPECT_EQ(log[0].status, 401u);
  EXPECT_TRUE(log[2].has_authorization);
  EXPECT_FALSE(log[2].authorized);
  EXPECT_TRUE(log[3].authorized);
  EXPECT_EQ(log[3].target, "/api/v1/services");
  for (const auto& entry : log) {
    EXPECT_EQ(entry.target.find(old_token), std::string::npos);
    EXPECT_EQ(entry.target.find("rotated"), std::string::npos);
  }
  std::string kubeconfig = read_file(server().kubeconfig_file());
  EXPECT_NE(kubeconfig.find("server: \"" + server().url() + "\""), std::string::npos) << kubeconfig;
  EXPECT_NE(kubeconfig.find("tokenFile: \"" + server().token_file().string() + "\""), std::string::npos);
  EXPECT_NE(read_file(server().inline_kubeconfig_file()).find("token: \"rotated-token-2\""), std::string::npos);
}

TEST_F(FakeApiServerTest, TlsIsVerifiableOnlyWithTheRightCa) {
  RawClient wrong(server(), server().wrong_ca_file());
  EXPECT_TRUE(wrong.connect()) << "a client trusting the wrong CA must fail the handshake";
  server().present_wrong_certificate();
  RawClient shown_wrong(server());
  EXPECT_TRUE(shown_wrong.connect()) << "the wrong certificate must not verify against ca.crt";
  server().present_wrong_certificate(false);
  RawClient right(server());
  EXPECT_FALSE(right.connect());
}

TEST_F(FakeApiServerTest, PauseRefusesConnectionsUntilResumedOnTheSamePort) {
  RawClient before(server());
  ASSERT_FALSE(before.connect());
  std::uint16_t port = server().port();
  server().pause(10s);
  RawClient during(server());
  EXPECT_EQ(during.connect(), asio::error::connection_refused);
  server().resume();
  EXPECT_EQ(server().port(), port);
  RawClient after(server());
  ASSERT_FALSE(after.connect());
  EXPECT_EQ(after.get("/api/v1/services").status, 200u);
}

TEST_F(FakeApiServerTest, StalledWatchesSendNothingUntilReleasedAndClosedConnectionsDrop) {
  RawClient client(server());
  ASSERT_FALSE(client.connect());
  client.send("/api/v1/services?watch=1&allowWatchBookmarks=true&resourceVersion=" +
              std::to_string(server().resource_version()));
  ASSERT_EQ(client.read_header().status, 200u);
  ASSERT_TRUE(server().wait_for_watches(1, 2s));
  server().stall_watches();
  server().upsert("services", service("default", "held"));
  server().send_bookmarks();
  // Held back while stalled: nothing reached the socket in 50 ms, both arrive after the release.
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(client.bytes_waiting(), 0u);
  server().stall_watches(false);
  auto held = client.next_event();
  ASSERT_TRUE(held);
  EXPECT_EQ(held->at("type").as_string(), "ADDED");
  EXPECT_EQ(client.next_event()->at("type").as_string(), "BOOKMARK");
  EXPECT_EQ(client.chunks(), 2);

  server().close_connections();
  EXPECT_FALSE(client.next_event());
  EXPECT_FALSE(client.ended()) << "a dropped connection is not a clean end of the stream";
  EXPECT_TRUE(server().wait_for_requests([&](const auto&) { return server().open_watches() == 0; }, 2s));
}

// timeoutSeconds ends the stream cleanly (last chunk), the connection stays usable, and a
// bookmark interval sends BOOKMARKs meanwhile. The one test that waits (1 s).
TEST(FakeApiServerOptionsTest, WatchEndsAtTimeoutSecondsWithPeriodicBookmarksAndTheConnectionIsReused) {
  auto dir = std::filesystem::temp_directory_path() / ("dsproxy-fakeapi-timeout-" + std::to_string(::getpid()));
  FakeApiServer server({.dir = dir, .listen_address = "127.0.0.1", .bookmark_interval = 200ms});
  server.start();
  RawClient client(server);
  ASSERT_FALSE(client.connect());
  client.send("/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=" +
              std::to_string(server.resource_version()));
  ASSERT_EQ(client.read_header().status, 200u);
  auto started = std::chrono::steady_clock::now();
  int bookmarks = 0;
  while (auto event = client.next_event()) {
    EXPECT_EQ(event->at("type").as_string(), "BOOKMARK");
    ++bookmarks;
  }
  auto elapsed = std::chrono::steady_clock::now() - started;
  EXPECT_TRUE(client.ended()) << "the stream must end with the last chunk, not a dropped connection";
  EXPECT_GE(bookmarks, 2);
  EXPECT_GE(elapsed, 800ms);
  EXPECT_EQ(client.get("/api/v1/pods").status, 200u);  // same connection, next request
  server.stop();
  std::filesystem::remove_all(dir);
}

TEST(FakeApiServerObjectsTest, YamlAndJsonFilesBecomeObjectsWithTypedScalars) {
  auto objects = parse_objects(
      "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\n"
      "spec: {ports: [{port: 80, name: \"8080\"}], publishNotReadyAddresses: false, clusterIP: ~}\n"
      "---\n"
      "apiVersion: v1\nkind: List\nitems:\n- {kind: Pod, metadata: {name: p}}\n- {kind: Node, metadata: {name: n}}\n");
  ASSERT_EQ(objects.size(), 3u);
  const auto& port = objects[0].at("spec").at("ports").as_array()[0];
  EXPECT_TRUE(port.at("port").is_int64());
  EXPECT_TRUE(port.at("name").is_string());  // quoted: stays a string
  EXPECT_TRUE(objects[0].at("spec").at("publishNotReadyAddresses").is_bool());
  EXPECT_TRUE(objects[0].at("spec").at("clusterIP").is_null());
  EXPECT_EQ(objects[2].at("kind").as_string(), "Node");
  // A typed JSON list lends its item kind to items that lack one.
  auto typed = parse_objects(R"({"kind":"ServiceList","apiVersion":"v1","items":[{"metadata":{"name":"s"}}]})");
  ASSERT_EQ(typed.size(), 1u);
  EXPECT_EQ(typed[0].at("kind").as_string(), "Service");
}

}  // namespace fake_apiserver_test
