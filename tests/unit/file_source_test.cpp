// The config file source on a real file in a temporary directory, driven by a real io_context
// with a fast poll: what it delivers, what it skips, and what keeps the last good state.

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "sources/file_source.hpp"

namespace dsproxy::sources {
namespace file_source_test {  // named: unity builds put several test files in one translation unit

using namespace std::chrono_literals;

class RecordingSink : public ObjectSink {
 public:
  void replace_all(const ConfigSource&, config::ClusterObjects objects) override {
    deliveries.push_back(std::move(objects));
  }
  void upsert(const ConfigSource&, config::Service) override { ++others; }
  void upsert(const ConfigSource&, config::Pod) override { ++others; }
  void upsert(const ConfigSource&, config::EndpointSlice) override { ++others; }
  void upsert(const ConfigSource&, config::Node) override { ++others; }
  void upsert(const ConfigSource&, config::Namespace) override { ++others; }
  void erase(const ConfigSource&, ObjectKind, const std::string&, const std::string&) override { ++others; }
  void synced(const ConfigSource&) override { ++synced_calls; }
  void failed(const ConfigSource&, const std::string& why, int exit_code) override {
    failures.push_back(why);
    failed_exit = exit_code;
  }

  std::vector<config::ClusterObjects> deliveries;
  int others = 0;
  int synced_calls = 0;
  std::vector<std::string> failures;
  int failed_exit = 0;
};

const char* kOneService = R"(apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
)";

const char* kThreeServices = R"(apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {clusterIP: 10.96.0.12, ports: [{port: 5432}]}
)";

// A `kind: List` of `n` Services as JSON, several 64 KB read pieces long; `last_port` is the
// port of the last Service, the file's last bytes.
std::string many_services(int n, int last_port) {
  std::ostringstream out;
  out << "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [";
  for (int i = 0; i < n; ++i) {
    out << (i ? ",\n" : "\n") << R"({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-)" << i
        << R"(", "namespace": "bulk", "labels": {"app.kubernetes.io/name": "padding-padding-padding"}}, )"
        << R"("spec": {"clusterIP": "10.96.)" << i / 250 << "." << i % 250 + 1 << R"(", "ports": [{"port": )"
        << (i == n - 1 ? last_port : 80) << "}]}}";
  }
  out << "\n]}\n";
  return out.str();
}

const char* kTwoServices = R"(apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
)";

class FileSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = std::filesystem::temp_directory_path() /
          ("dsproxy-file-source-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir);
    path = (dir / "cluster.yaml").string();
  }
  void TearDown() override {
    source.reset();
    std::filesystem::remove_all(dir);
  }
  // Written to a temporary name and renamed, as generators and `kubectl ... > tmp && mv` do: the
  // inode changes, so the stamp does even within one mtime tick.
  void write(const std::string& text) {
    const auto tmp = (dir / "cluster.yaml.tmp").string();
    std::ofstream(tmp, std::ios::trunc) << text;
    std::filesystem::rename(tmp, path);
  }
  void make_source(std::function<void()> after_hash = {}) {
    source = std::make_unique<FileSource>(io, FileSourceOptions{path, 10ms, std::move(after_hash)}, sink);
  }
  // Runs the io_context for a few polls.
  void polls(int n = 5) {
    io.restart();
    io.run_for(n * 10ms + 20ms);
  }
  std::string last_error() const { return std::string(source->status().at("lastError").as_string()); }
  std::uint64_t status_count(const char* field) const { return source->status().at(field).to_number<std::uint64_t>(); }

  boost::asio::io_context io;
  RecordingSink sink;
  std::unique_ptr<FileSource> source;
  std::filesystem::path dir;
  std::string path;
};

TEST_F(FileSourceTest, FirstLoadDeliversTheWholeFileAndSaysSyncedOnce) {
  write(kOneService);
  make_source();
  source->start();
  ASSERT_EQ(sink.deliveries.size(), 1u);
  EXPECT_EQ(sink.deliveries[0].services.size(), 1u);
  EXPECT_EQ(sink.synced_calls, 1);
  EXPECT_TRUE(source->synced());
  write(kTwoServices);
  polls();
  ASSERT_EQ(sink.deliveries.size(), 2u);
  EXPECT_EQ(sink.deliveries[1].services.size(), 2u);
  EXPECT_EQ(sink.synced_calls, 1);  // once, not per load
  EXPECT_EQ(sink.others, 0);        // a file is always delivered whole
}

TEST_F(FileSourceTest, SameContentRewrittenIsNotReloaded) {
  write(kOneService);
  make_source();
  source->start();
  write(kOneService);  // new inode and mtime, same bytes
  polls();
  EXPECT_EQ(sink.deliveries.size(), 1u);
  EXPECT_EQ(status_count("unchangedSkips"), 1u);
  // SIGHUP forces it.
  source->resync("SIGHUP");
  EXPECT_EQ(sink.deliveries.size(), 2u);
}

TEST_F(FileSourceTest, EmptyFileOrNoObjectsKeepsTheLastGoodState) {
  write(kOneService);
  make_source();
  source->start();
  write("");
  polls();
  EXPECT_EQ(sink.deliveries.size(), 1u) << "an empty file must not become an empty cluster";
  EXPECT_NE(last_error().find("the file is empty"), std::string::npos) << last_error();
  write("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: y}\n");
  polls();
  EXPECT_EQ(sink.deliveries.size(), 1u) << "a file of ignored kinds must not become an empty cluster";
  EXPECT_NE(last_error().find("no Service, Pod, EndpointSlice or Node"), std::string::npos) << last_error();
  EXPECT_EQ(status_count("failures"), 2u);
  write(kTwoServices);
  polls();
  ASSERT_EQ(sink.deliveries.size(), 2u);
  EXPECT_EQ(last_error(), "");
}

TEST_F(FileSourceTest, BadEditKeepsTheLastGoodState) {
  write(kOneService);
  make_source();
  source->start();
  write("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: abc}]}\n");
  polls();
  EXPECT_EQ(sink.deliveries.size(), 1u);
  EXPECT_NE(last_error().find("spec.ports[0].port"), std::string::npos) << last_error();
  // Reverting to the content delivered last needs no reload: that state is still in force.
  write(kOneService);
  polls();
  EXPECT_EQ(sink.deliveries.size(), 1u);
  write(kTwoServices);
  polls();
  EXPECT_EQ(sink.deliveries.size(), 2u);
}

TEST_F(FileSourceTest, DeletedFileIsReportedAndItsReturnReloads) {
  write(kOneService);
  make_source();
  source->start();
  std::filesystem::remove(path);
  polls();
  EXPECT_EQ(sink.deliveries.size(), 1u);
  EXPECT_NE(last_error().find("was deleted"), std::string::npos) << last_error();
  polls();
  EXPECT_EQ(status_count("failures"), 1u) << "said once, not at every poll";
  write(kTwoServices);
  polls();
  ASSERT_EQ(sink.deliveries.size(), 2u);
  EXPECT_EQ(sink.deliveries[1].services.size(), 2u);
}

TEST_F(FileSourceTest, BadFirstFileFailsTheStart) {
  write("");
  make_source();
  source->start();
  EXPECT_FALSE(source->synced());
  EXPECT_EQ(sink.synced_calls, 0);
  ASSERT_EQ(sink.failures.size(), 1u);
  EXPECT_EQ(sink.failed_exit, 2);
  EXPECT_NE(sink.failures[0].find("empty"), std::string::npos);
}

TEST_F(FileSourceTest, MissingFirstFileFailsTheStart) {
  make_source();
  source->start();
  ASSERT_EQ(sink.failures.size(), 1u);
  EXPECT_NE(sink.failures[0].find("cannot open"), std::string::npos) << sink.failures[0];
}

TEST_F(FileSourceTest, ChangeInTheLastPieceOfALargeFileIsSeenAndTheSameBytesAreNot) {
  // The hash streams the file 64 KB at a time: a change in its last piece must count, and the
  // same large content rewritten must not be decoded again.
  const std::string first = many_services(2000, 80);
  ASSERT_GT(first.size(), 4u * 64 * 1024) << "the test needs a file of several read pieces";
  write(first);
  make_source();
  source->start();
  ASSERT_EQ(sink.deliveries.size(), 1u) << last_error();
  EXPECT_EQ(sink.deliveries[0].services.size(), 2000u);
  write(first);
  polls();
  EXPECT_EQ(sink.deliveries.size(), 1u);
  EXPECT_EQ(status_count("unchangedSkips"), 1u);
  write(many_services(2000, 81));  // same size, one byte differs, near the end
  polls();
  ASSERT_EQ(sink.deliveries.size(), 2u);
  EXPECT_EQ(sink.deliveries[1].services.back().ports.at(0).port, 81);
}

TEST_F(FileSourceTest, RenameBetweenHashAndDecodeDeliversTheFileThatWasHashed) {
  // `kubectl ... > tmp && mv tmp FILE` (or a ConfigMap's symlink swap) between the two passes:
  // what is decoded must be the file that was hashed, so that the hash recorded as delivered
  // describes the state in force; the renamed-in file is then loaded by the next poll.
  write(kOneService);
  bool raced = false;
  make_source([&] {
    if (raced || sink.deliveries.empty()) return;  // only once, during the reload below
    raced = true;
    write(kThreeServices);
  });
  source->start();
  ASSERT_EQ(sink.deliveries.size(), 1u);
  write(kTwoServices);
  source->resync("test");  // hashes kTwoServices, then the hook renames kThreeServices over it
  ASSERT_TRUE(raced);
  ASSERT_EQ(sink.deliveries.size(), 2u) << last_error();
  EXPECT_EQ(sink.deliveries[1].services.size(), 2u) << "decoded another file than the one hashed";
  polls();
  ASSERT_EQ(sink.deliveries.size(), 3u) << "the file renamed in was not loaded";
  EXPECT_EQ(sink.deliveries[2].services.size(), 3u);
  // Back to the two Services: that is not what is in force, so it must be delivered.
  write(kTwoServices);
  polls();
  ASSERT_EQ(sink.deliveries.size(), 4u);
  EXPECT_EQ(sink.deliveries[3].services.size(), 2u);
}

TEST_F(FileSourceTest, InPlaceRewriteDuringTheReadIsReadAgain) {
  // A writer that truncates and rewrites the same inode while it is read: the torn read is
  // thrown away and the file read again, so what is delivered is what the writer left.
  write(kOneService);
  int rewrites = 0;
  make_source([&] {
    if (sink.deliveries.empty() || rewrites > 0) return;
    ++rewrites;
    std::ofstream(path, std::ios::trunc) << kThreeServices;  // same inode, another size
  });
  source->start();
  write(kTwoServices);
  polls();
  EXPECT_EQ(rewrites, 1);
  // Exactly one delivery of what the writer left: a read that the writer changed under it
  // delivered (and found changed at the next poll) would make two.
  ASSERT_EQ(sink.deliveries.size(), 2u) << "a read the writer changed under it was delivered";
  EXPECT_EQ(sink.deliveries[1].services.size(), 3u);
  // The hash recorded is that of the three Services in force, not of the two hashed before the
  // rewrite: the two Services written again are a change.
  const auto before = sink.deliveries.size();
  write(kTwoServices);
  polls();
  ASSERT_EQ(sink.deliveries.size(), before + 1) << "skipped as unchanged although three Services are in force";
  EXPECT_EQ(sink.deliveries.back().services.size(), 2u);
}

TEST_F(FileSourceTest, ErrorsNameTheFileAndADirectoryIsRefused) {
  write("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: abc}]}\n");
  make_source();
  source->start();
  ASSERT_EQ(sink.failures.size(), 1u);
  EXPECT_EQ(sink.failures[0].rfind(path + ": ", 0), 0u) << sink.failures[0];
  EXPECT_EQ(sink.failures[0].find("/proc/"), std::string::npos) << sink.failures[0];
  std::filesystem::remove(path);
  std::filesystem::create_directory(path);
  FileSource dir_source(io, FileSourceOptions{path, 10ms}, sink);
  dir_source.start();
  ASSERT_EQ(sink.failures.size(), 2u);
  EXPECT_NE(sink.failures[1].find("is a directory"), std::string::npos) << sink.failures[1];
}

}  // namespace file_source_test
}  // namespace dsproxy::sources
