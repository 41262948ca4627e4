// The config file source on a real file in a temporary directory, driven by a real io_context
// with a fast poll: what it delivers, what it skips, and what keeps the last good state.

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "sources/file_source.hpp"

namespace dsproxy::sources {
namespace {

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
  void make_source() {
    source = std::make_unique<FileSource>(io, FileSourceOptions{path, 10ms}, sink);
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

}  // namespace
}  // namespace dsproxy::sources
