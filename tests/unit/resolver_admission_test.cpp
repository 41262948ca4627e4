// Who the DNS proxy answers (issue 14, finding 3): captured queries from this node's pods, the
// node's own on loopback, nobody else.

#include <gtest/gtest.h>

#include "config/k8s_decoder.hpp"
#include "resolver/dns_admission.hpp"

namespace dsproxy::resolver {
namespace resolver_admission_test {  // named: unity builds put several test files in one translation unit

net::SocketAddress at(const char* ip, std::uint16_t port) { return {net::IpAddress::parse(ip).value(), port}; }

class ResolverAdmission : public ::testing::Test {
 protected:
  // The experiment's cluster as kind-worker sees it: sleep (10.244.0.5) and the three tcp-echo
  // pods are its pods; remote-client-0 (10.244.1.7) lives on kind-worker2.
  ResolverAdmission() {
    const auto snapshot = snapshot::ClusterSnapshot::build(
        config::load_objects_file(std::string(DSPROXY_SOURCE_DIR) + "/config/tcp-echo-experiment.yaml"),
        {"kind-worker"});
    pods = NodePodAddresses(*snapshot);
  }
  NodePodAddresses pods;
};

TEST_F(ResolverAdmission, NodePodsAreThisNodesPodsOnly) {
  EXPECT_TRUE(pods.contains(*net::IpAddress::parse("10.244.0.5")));
  EXPECT_TRUE(pods.contains(*net::IpAddress::parse("fd00:10:244::5")));
  EXPECT_FALSE(pods.contains(*net::IpAddress::parse("10.244.1.7")));  // kind-worker2's
  EXPECT_FALSE(pods.contains(*net::IpAddress::parse("10.244.0.1")));  // the node's gateway
}

TEST_F(ResolverAdmission, CapturedQueriesFromNodePodsAreAnswered) {
  // To the DNS VIP, to a node address, to anything: what counts is the original port 53.
  EXPECT_EQ(admit_query(at("10.244.0.5", 40000), at("10.96.0.10", 53), pods), Admission::answer);
  EXPECT_EQ(admit_query(at("10.244.0.5", 40000), at("10.244.0.1", 53), pods), Admission::answer);
  EXPECT_EQ(admit_query(at("fd00:10:244::5", 40000), at("fd00:10:96::a", 53), pods), Admission::answer);
  EXPECT_EQ(admit_query(at("10.244.0.26", 1), at("8.8.8.8", 53), pods), Admission::answer);
}

TEST_F(ResolverAdmission, CapturedQueriesFromOthersAreNot) {
  EXPECT_EQ(admit_query(at("10.244.1.7", 40000), at("10.96.0.10", 53), pods), Admission::not_node_pod);
  EXPECT_EQ(admit_query(at("10.244.0.99", 40000), at("10.96.0.10", 53), pods), Admission::not_node_pod);
  EXPECT_EQ(admit_query(at("fd00:10:244:1::7", 40000), at("fd00:10:96::a", 53), pods), Admission::not_node_pod);
  // Loopback sources gain nothing at port 53: that is not how the node asks.
  EXPECT_EQ(admit_query(at("127.0.0.1", 40000), at("10.96.0.10", 53), pods), Admission::not_node_pod);
  // No pods known (no --node, or an empty snapshot): nobody.
  EXPECT_EQ(admit_query(at("10.244.0.5", 40000), at("10.96.0.10", 53), NodePodAddresses()), Admission::not_node_pod);
}

TEST_F(ResolverAdmission, DirectQueriesAreAnsweredOnlyForTheNodeOnLoopback) {
  EXPECT_EQ(admit_query(at("127.0.0.1", 40000), at("127.0.0.1", 15053), pods), Admission::answer);
  EXPECT_EQ(admit_query(at("127.0.0.5", 40000), at("127.0.0.1", 15053), pods), Admission::answer);
  EXPECT_EQ(admit_query(at("::1", 40000), at("::1", 15053), pods), Admission::answer);
  // From another host, from a pod, from the node to a non-loopback address: no.
  EXPECT_EQ(admit_query(at("10.244.1.7", 40000), at("10.244.1.1", 15053), pods), Admission::direct);
  EXPECT_EQ(admit_query(at("10.244.0.5", 40000), at("10.244.0.1", 15053), pods), Admission::direct);
  EXPECT_EQ(admit_query(at("10.244.0.1", 40000), at("10.244.0.1", 15053), pods), Admission::direct);
  EXPECT_EQ(admit_query(at("fd00:10:244:1::7", 40000), at("fd00:feed::1", 15053), pods), Admission::direct);
  // A loopback source to a non-loopback destination (route_localnet spoofing) or the reverse.
  EXPECT_EQ(admit_query(at("127.0.0.1", 40000), at("10.244.0.1", 15053), pods), Admission::direct);
  EXPECT_EQ(admit_query(at("10.244.1.7", 40000), at("127.0.0.1", 15053), pods), Admission::direct);
  // Without an original destination there is no telling: direct.
  EXPECT_EQ(admit_query(at("127.0.0.1", 40000), std::nullopt, pods), Admission::direct);
  EXPECT_EQ(admit_query(at("10.244.0.5", 40000), std::nullopt, pods), Admission::direct);
}

TEST(ResolverAdmissionLoopback, Ranges) {
  EXPECT_TRUE(is_loopback(*net::IpAddress::parse("127.0.0.1")));
  EXPECT_TRUE(is_loopback(*net::IpAddress::parse("127.255.255.254")));
  EXPECT_TRUE(is_loopback(*net::IpAddress::parse("::1")));
  EXPECT_TRUE(is_loopback(*net::IpAddress::parse("::ffff:127.0.0.1")));  // parsed as IPv4
  EXPECT_FALSE(is_loopback(*net::IpAddress::parse("128.0.0.1")));
  EXPECT_FALSE(is_loopback(*net::IpAddress::parse("::")));
  EXPECT_FALSE(is_loopback(*net::IpAddress::parse("::2")));
  EXPECT_FALSE(is_loopback(*net::IpAddress::parse("1::1")));
}

}  // namespace resolver_admission_test
}  // namespace dsproxy::resolver
