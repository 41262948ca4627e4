#include <gtest/gtest.h>

#include "identity/spiffe_id.hpp"

namespace identity_spiffe_id_test {  // named: unity builds put several test files in one translation unit

using dsproxy::identity::SpiffeId;

TEST(SpiffeId, ParsesAndFormatsTheIstioForm) {
  const auto id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep");
  ASSERT_TRUE(id);
  EXPECT_EQ(id->trust_domain, "cluster.local");
  EXPECT_EQ(id->ns, "default");
  EXPECT_EQ(id->service_account, "sleep");
  EXPECT_EQ(id->uri(), "spiffe://cluster.local/ns/default/sa/sleep");
  EXPECT_EQ(SpiffeId::parse(id->uri()), id);
  EXPECT_EQ(SpiffeId::why_invalid(id->uri()), "");
  const auto other = SpiffeId::parse("spiffe://my-corp.example_1/ns/kube-system/sa/a.b-c");
  ASSERT_TRUE(other);
  EXPECT_NE(*id, *other);
  EXPECT_TRUE(*id < *other || *other < *id);
}

TEST(SpiffeId, RejectsEverythingElse) {
  for (const char* bad : {
           "",
           "spiffe://",
           "spiffe://cluster.local",
           "spiffe://cluster.local/",
           "spiffe:///ns/a/sa/b",                         // empty trust domain
           "SPIFFE://cluster.local/ns/a/sa/b",            // scheme case
           "https://cluster.local/ns/a/sa/b",             // scheme
           "spiffe://Cluster.local/ns/a/sa/b",            // upper-case trust domain
           "spiffe://cluster.local:443/ns/a/sa/b",        // port
           "spiffe://user@cluster.local/ns/a/sa/b",       // userinfo
           "spiffe://cluster.local/ns/a/sa/b/extra",      // extra segment
           "spiffe://cluster.local/ns/a/sa/b/",           // trailing slash
           "spiffe://cluster.local//ns/a/sa/b",           // empty segment
           "spiffe://cluster.local/ns//sa/b",             // empty namespace
           "spiffe://cluster.local/ns/a/sa/",             // empty service account
           "spiffe://cluster.local/ns/a/sa",              // missing service account
           "spiffe://cluster.local/sa/b/ns/a",            // order
           "spiffe://cluster.local/ns/a/b/sa/c",          // extra segment in the middle
           "spiffe://cluster.local/ns/A/sa/b",            // upper case name
           "spiffe://cluster.local/ns/a_b/sa/b",          // underscore in a Kubernetes name
           "spiffe://cluster.local/ns/a/sa/b?x=1",        // query
           "spiffe://cluster.local/ns/a/sa/b#f",          // fragment
           "spiffe://cluster.local/ns/%61/sa/b",          // percent-encoding
           "spiffe://cluster.local/ns/../sa/b",           // dot segments
           "spiffe://cluster.local/ns/-a/sa/b",           // not starting with alnum
           "spiffe://cluster.local/ns/a/sa/b ",           // space
           "spiffe://cluster.local/ns/a/sa/b\n",
       }) {
    EXPECT_FALSE(SpiffeId::parse(bad)) << bad;
    EXPECT_NE(SpiffeId::why_invalid(bad), "") << bad;
  }
  EXPECT_FALSE(SpiffeId::parse("spiffe://cluster.local/ns/" + std::string(254, 'a') + "/sa/b"));
  EXPECT_FALSE(SpiffeId::make("cluster.local", "", "b"));
  EXPECT_FALSE(SpiffeId::make("cluster.local", "a", "B"));
  EXPECT_TRUE(SpiffeId::make("cluster.local", "a", "b"));
}

}  // namespace identity_spiffe_id_test
