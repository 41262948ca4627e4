// The pure parts of the API protocol: request targets, watch line splitting, backoff.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "sources/kubernetes/backoff.hpp"
#include "sources/kubernetes/line_splitter.hpp"
#include "sources/kubernetes/resource.hpp"

namespace k8s = dsproxy::sources::kubernetes;

TEST(KubernetesResource, PathsNamesAndRbacRules) {
  EXPECT_EQ(k8s::resources::services().collection_path(), "/api/v1/services");
  EXPECT_EQ(k8s::resources::endpoint_slices().collection_path(), "/apis/discovery.k8s.io/v1/endpointslices");
  EXPECT_EQ(k8s::resources::endpoint_slices().display_name(), "endpointslices.discovery.k8s.io");
  EXPECT_EQ(k8s::resources::nodes().display_name(), "nodes");
  EXPECT_EQ(k8s::resources::endpoint_slices().rbac_rule(),
            "apiGroups [\"discovery.k8s.io\"] resources [\"endpointslices\"] verbs [\"get\",\"list\",\"watch\"]");
  EXPECT_EQ(k8s::resources::pods().rbac_rule(),
            "apiGroups [\"\"] resources [\"pods\"] verbs [\"get\",\"list\",\"watch\"]");
  auto namespaced = k8s::resources::services();
  namespaced.namespace_name = "kube-system";
  EXPECT_EQ(namespaced.collection_path(), "/api/v1/namespaces/kube-system/services");
  EXPECT_EQ(k8s::resources::pods("node-1").field_selector, "spec.nodeName=node-1");
  EXPECT_EQ(k8s::resources::pods().kind, "Pod");
}

TEST(KubernetesResource, ListAndWatchTargets) {
  EXPECT_EQ(k8s::list_target("", k8s::resources::services(), 500, ""), "/api/v1/services?limit=500");
  // Continue tokens are base64 with '=' and '+': they must be encoded.
  EXPECT_EQ(k8s::list_target("/base", k8s::resources::pods("node-1"), 500, "eyJ2+/="),
            "/base/api/v1/pods?limit=500&continue=eyJ2%2B%2F%3D&fieldSelector=spec.nodeName%3Dnode-1");
  EXPECT_EQ(k8s::watch_target("", k8s::resources::endpoint_slices(), "12345", 420),
            "/apis/discovery.k8s.io/v1/endpointslices?watch=true&allowWatchBookmarks=true&resourceVersion=12345"
            "&timeoutSeconds=420");
  EXPECT_EQ(k8s::url_encode("a b&c=d~._-"), "a%20b%26c%3Dd~._-");
}

namespace {

std::vector<std::string> feed_all(k8s::LineSplitter& s, const std::vector<std::string>& pieces,
                                  k8s::LineSplitter::Result* last = nullptr) {
  std::vector<std::string> lines;
  for (const auto& piece : pieces) {
    const auto r = s.feed(piece, [&](std::string_view line) {
      lines.emplace_back(line);
      return true;
    });
    if (last) *last = r;
  }
  return lines;
}

}  // namespace

TEST(KubernetesLineSplitter, LinesCutAnywhereAreReassembled) {
  const std::string stream = "{\"type\":\"ADDED\"}\n{\"type\":\"MODIFIED\"}\r\n\n{\"type\":\"DELETED\"}\n";
  // Every cut position, and byte by byte.
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    k8s::LineSplitter s(1024);
    const auto lines = feed_all(s, {stream.substr(0, cut), stream.substr(cut)});
    ASSERT_EQ(lines, (std::vector<std::string>{"{\"type\":\"ADDED\"}", "{\"type\":\"MODIFIED\"}", "{\"type\":\"DELETED\"}"}))
        << "cut at " << cut;
    EXPECT_EQ(s.pending(), 0u);
  }
  k8s::LineSplitter s(1024);
  std::vector<std::string> bytes;
  for (char c : stream) bytes.emplace_back(1, c);
  EXPECT_EQ(feed_all(s, bytes).size(), 3u);
}

TEST(KubernetesLineSplitter, AnUnfinishedLineIsHeldNotDelivered) {
  k8s::LineSplitter s(1024);
  const auto lines = feed_all(s, {"{\"type\":\"ADDED\"}\n{\"type\":\"MODI"});
  EXPECT_EQ(lines.size(), 1u);
  EXPECT_EQ(s.pending(), std::string("{\"type\":\"MODI").size());
}

TEST(KubernetesLineSplitter, BoundsTheLineAndStopsOnRequest) {
  k8s::LineSplitter s(8);
  k8s::LineSplitter::Result r{};
  EXPECT_EQ(feed_all(s, {"12345678\n"}, &r).size(), 1u);
  EXPECT_EQ(r, k8s::LineSplitter::Result::ok);
  feed_all(s, {"12345", "6789"}, &r);
  EXPECT_EQ(r, k8s::LineSplitter::Result::line_too_long);
  k8s::LineSplitter whole(8);
  feed_all(whole, {"123456789\n"}, &r);
  EXPECT_EQ(r, k8s::LineSplitter::Result::line_too_long);

  k8s::LineSplitter stopping(64);
  int seen = 0;
  EXPECT_EQ(stopping.feed("a\nb\nc\n", [&](std::string_view) { return ++seen < 2; }), k8s::LineSplitter::Result::stopped);
  EXPECT_EQ(seen, 2);
}

TEST(KubernetesBackoff, DoublesWithJitterUpToTheCapAndResets) {
  k8s::Backoff b(k8s::BackoffPolicy{}, 42);
  double expected = 200;
  for (int i = 0; i < 12; ++i) {
    const auto d = b.next().count();
    const double base = std::min(expected, 30000.0);
    EXPECT_GE(d, base * 0.8 - 1) << i;
    EXPECT_LE(d, base * 1.2 + 1) << i;
    expected *= 2;
  }
  b.reset();
  const auto first = b.next().count();
  EXPECT_GE(first, 159);
  EXPECT_LE(first, 241);
  // Jitter spreads: 100 draws of the first delay are not all equal.
  k8s::Backoff spread(k8s::BackoffPolicy{}, 7);
  std::set<long> values;
  for (int i = 0; i < 100; ++i) {
    spread.reset();
    values.insert(spread.next().count());
  }
  EXPECT_GT(values.size(), 10u);
}
