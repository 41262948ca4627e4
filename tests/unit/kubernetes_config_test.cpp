// The API server configuration: kubeconfig parsing, in-cluster environment, the rotating token.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <functional>
#include <vector>

#include "sources/kubernetes/api_server_config.hpp"
#include "sources/kubernetes/bearer_token.hpp"

namespace k8s = dsproxy::sources::kubernetes;
namespace fs = std::filesystem;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "dsproxy-k8s-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path path() const { return path_; }
  fs::path write(const std::string& name, const std::string& content) const {
    const fs::path p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary | std::ios::trunc) << content;
    return p;
  }

 private:
  fs::path path_;
};

std::string throws_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const k8s::KubernetesConfigError& e) {
    return e.what();
  }
  return "<no KubernetesConfigError>";
}

constexpr const char* kSecret = "s3cr3t-token-value";

}  // namespace

TEST(KubernetesServerUrl, ParsesHostsPortsAndPaths) {
  k8s::ApiServerConfig c;
  k8s::parse_server_url("https://api.example:6443", "t", c);
  EXPECT_EQ(c.host, "api.example");
  EXPECT_EQ(c.port, 6443);
  EXPECT_EQ(c.base_path, "");
  k8s::parse_server_url("https://[fd00::1]:8443/k8s/clusters/c-1/", "t", c);
  EXPECT_EQ(c.host, "fd00::1");
  EXPECT_EQ(c.port, 8443);
  EXPECT_EQ(c.base_path, "/k8s/clusters/c-1");
  EXPECT_EQ(c.authority(), "[fd00::1]:8443");
  EXPECT_EQ(c.url(), "https://[fd00::1]:8443/k8s/clusters/c-1");
  k8s::parse_server_url("https://10.0.0.1", "t", c);
  EXPECT_EQ(c.port, 443);
  EXPECT_EQ(c.authority(), "10.0.0.1:443");
}

TEST(KubernetesServerUrl, RefusesPlainHttpAndMalformedUrls) {
  k8s::ApiServerConfig c;
  EXPECT_NE(throws_message([&] { k8s::parse_server_url("http://api:8080", "t", c); }).find("plain http"),
            std::string::npos);
  for (const char* bad : {"api:6443", "https://", "https://fd00::1:443", "https://[fd00::1", "https://[nothost]:1",
                          "https://h:0", "https://h:70000", "https://h:x", "https://u:p@h", "https://h/?a=b"}) {
    EXPECT_NE(throws_message([&] { k8s::parse_server_url(bad, "t", c); }), "<no KubernetesConfigError>") << bad;
  }
}

TEST(KubernetesInCluster, ReadsEnvironmentAndServiceAccountFiles) {
  TempDir dir;
  dir.write("ca.crt", "CA PEM");
  dir.write("token", std::string(kSecret) + "\n");
  dir.write("namespace", "kube-system\n");
  std::map<std::string, std::string> env{{"KUBERNETES_SERVICE_HOST", "fd00:10:96::1"},
                                         {"KUBERNETES_SERVICE_PORT", "443"}};
  auto lookup = [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  EXPECT_TRUE(k8s::running_in_cluster(lookup));
  const k8s::ApiServerConfig c = k8s::in_cluster_config(dir.path().string(), lookup);
  EXPECT_EQ(c.host, "fd00:10:96::1");
  EXPECT_EQ(c.authority(), "[fd00:10:96::1]:443");  // bracketed: an IPv6 API server in a URL and Host
  EXPECT_EQ(c.ca_pem, "CA PEM");
  ASSERT_TRUE(c.token);
  EXPECT_EQ(c.token->current(), kSecret);
  EXPECT_TRUE(c.token->file_backed());
  EXPECT_EQ(c.default_namespace, "kube-system");
  EXPECT_EQ(c.describe().find(kSecret), std::string::npos);

  env["KUBERNETES_SERVICE_HOST"] = "10.96.0.1";
  EXPECT_EQ(k8s::in_cluster_config(dir.path().string(), lookup).authority(), "10.96.0.1:443");

  env.erase("KUBERNETES_SERVICE_PORT");
  EXPECT_NE(throws_message([&] { k8s::in_cluster_config(dir.path().string(), lookup); }).find("KUBERNETES_SERVICE_PORT"),
            std::string::npos);
  env.clear();
  EXPECT_FALSE(k8s::running_in_cluster(lookup));
}

TEST(KubernetesInCluster, MissingTokenOrCaNamesTheFile) {
  TempDir dir;
  dir.write("ca.crt", "CA PEM");
  auto lookup = [](const char* name) -> const char* {
    if (std::string_view(name) == "KUBERNETES_SERVICE_HOST") return "10.96.0.1";
    if (std::string_view(name) == "KUBERNETES_SERVICE_PORT") return "443";
    return nullptr;
  };
  EXPECT_NE(throws_message([&] { k8s::in_cluster_config(dir.path().string(), lookup); }).find("/token"),
            std::string::npos);
  fs::remove(dir.path() / "ca.crt");
  dir.write("token", kSecret);
  EXPECT_NE(throws_message([&] { k8s::in_cluster_config(dir.path().string(), lookup); }).find("ca.crt"),
            std::string::npos);
}

namespace {

std::string kubeconfig(const std::string& cluster_extra, const std::string& user_fields,
                       const std::string& current = "dev") {
  return "apiVersion: v1\nkind: Config\ncurrent-context: " + current +
         "\n"
         "contexts:\n"
         "- name: other\n  context: {cluster: c2, user: u2}\n"
         "- name: dev\n  context: {cluster: c1, user: u1, namespace: team}\n"
         "clusters:\n"
         "- name: c2\n  cluster: {server: 'https://other:1'}\n"
         "- name: c1\n  cluster:\n    server: https://[fd00::5]:6443\n" +
         cluster_extra +
         "users:\n"
         "- name: u2\n  user: {token: other-token}\n"
         "- name: u1\n  user:\n" +
         user_fields;
}

}  // namespace

TEST(KubernetesKubeconfig, CurrentContextWithEmbeddedDataAndToken) {
  TempDir dir;
  // base64("CA PEM"), base64("CERT"), base64("KEY")
  const auto path = dir.write("config", kubeconfig("    certificate-authority-data: Q0EgUEVN\n",
                                                   "    token: " + std::string(kSecret) +
                                                       "\n    client-certificate-data: Q0VSVA==\n"
                                                       "    client-key-data: S0VZ\n"));
  const k8s::ApiServerConfig c = k8s::kubeconfig_config(path.string());
  EXPECT_EQ(c.host, "fd00::5");
  EXPECT_EQ(c.port, 6443);
  EXPECT_EQ(c.ca_pem, "CA PEM");
  EXPECT_EQ(c.client_cert_pem, "CERT");
  EXPECT_EQ(c.client_key_pem, "KEY");
  ASSERT_TRUE(c.token);
  EXPECT_FALSE(c.token->file_backed());
  EXPECT_EQ(c.token->current(), kSecret);
  EXPECT_EQ(c.default_namespace, "team");
  EXPECT_NE(c.origin.find("context dev"), std::string::npos);
  EXPECT_EQ(c.describe().find(kSecret), std::string::npos);
  EXPECT_EQ(c.describe().find("KEY"), std::string::npos);

  const k8s::ApiServerConfig other = k8s::kubeconfig_config(path.string(), "other");
  EXPECT_EQ(other.host, "other");
  EXPECT_EQ(other.token->current(), "other-token");
}

TEST(KubernetesKubeconfig, RelativeFilesAreRelativeToTheKubeconfig) {
  TempDir dir;
  dir.write("pki/ca.pem", "CA FILE");
  dir.write("pki/client.pem", "CERT FILE");
  dir.write("pki/client.key", "KEY FILE");
  dir.write("pki/token", std::string(kSecret) + "\n");
  const auto path = dir.write("sub/../config",
                              kubeconfig("    certificate-authority: pki/ca.pem\n    tls-server-name: api.internal\n",
                                         "    tokenFile: pki/token\n    client-certificate: pki/client.pem\n"
                                         "    client-key: " + (dir.path() / "pki/client.key").string() + "\n"));
  // Read from another working directory: paths must not depend on it.
  const auto cwd = fs::current_path();
  fs::current_path("/");
  const k8s::ApiServerConfig c = k8s::kubeconfig_config(path.string());
  fs::current_path(cwd);
  EXPECT_EQ(c.ca_pem, "CA FILE");
  EXPECT_EQ(c.client_cert_pem, "CERT FILE");
  EXPECT_EQ(c.client_key_pem, "KEY FILE");
  EXPECT_EQ(c.tls_server_name, "api.internal");
  ASSERT_TRUE(c.token);
  EXPECT_TRUE(c.token->file_backed());
  EXPECT_EQ(c.token->current(), kSecret);
}

TEST(KubernetesKubeconfig, RefusesWhatItCannotHonour) {
  TempDir dir;
  struct Case {
    std::string text;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {kubeconfig("    insecure-skip-tls-verify: true\n", "    token: t\n"), "always verifies"},
      {kubeconfig("", "    exec: {command: aws}\n"), "exec and auth-provider"},
      {kubeconfig("", "    auth-provider: {name: gcp}\n"), "exec and auth-provider"},
      {kubeconfig("", "    username: admin\n    password: hunter2\n"), "basic authentication"},
      {kubeconfig("", "    client-certificate-data: Q0VSVA==\n"), "both client-certificate and client-key"},
      {kubeconfig("", "    token: t\n", "missing"), "no context named \"missing\""},
      {kubeconfig("", "    token: t\n", "''"), "no current-context"},
      {kubeconfig("    certificate-authority-data: '%%%'\n", "    token: t\n"), "not valid base64"},
      {kubeconfig("    certificate-authority: nowhere.pem\n", "    token: t\n"), "nowhere.pem"},
      {kubeconfig("", "    token: [a, b]\n"), "token is not a string"},
      {"- just a list\n", "not a YAML mapping"},
      {"a: [unterminated\n", "not valid YAML"},
  };
  for (const auto& c : cases) {
    const auto path = dir.write("config", c.text);
    const std::string message = throws_message([&] { k8s::kubeconfig_config(path.string()); });
    EXPECT_NE(message.find(c.expected), std::string::npos) << message;
    EXPECT_EQ(message.find("hunter2"), std::string::npos) << message;
  }
  EXPECT_NE(throws_message([&] { k8s::kubeconfig_config((dir.path() / "absent").string()); }).find("absent"),
            std::string::npos);
}

TEST(KubernetesBearerToken, RereadsTheFileWhenTheKubeletSwapsItsSymlink) {
  // The kubelet's projected volume: token -> ..data/token, ..data -> a timestamped directory that
  // is replaced atomically by re-pointing ..data.
  TempDir dir;
  dir.write("v1/token", "token-one\n");
  dir.write("v2/token", "token-two\n");
  fs::create_directory_symlink("v1", dir.path() / "..data");
  fs::create_symlink("..data/token", dir.path() / "token");
  auto token = k8s::BearerToken::from_file((dir.path() / "token").string());
  EXPECT_EQ(token->current(), "token-one");
  EXPECT_EQ(token->current(), "token-one");
  EXPECT_EQ(token->reads(), 1u);  // unchanged: a stat, no read

  fs::create_directory_symlink("v2", dir.path() / "..data_tmp");
  fs::rename(dir.path() / "..data_tmp", dir.path() / "..data");
  EXPECT_EQ(token->current(), "token-two");
  EXPECT_EQ(token->reads(), 2u);
}

TEST(KubernetesBearerToken, InvalidateForcesAReadAndAVanishedFileKeepsTheLastToken) {
  TempDir dir;
  const auto path = dir.write("token", "aaaa");
  auto token = k8s::BearerToken::from_file(path.string());
  EXPECT_EQ(token->current(), "aaaa");
  token->invalidate();
  EXPECT_EQ(token->current(), "aaaa");
  EXPECT_EQ(token->reads(), 2u);

  fs::remove(path);
  EXPECT_EQ(token->current(), "aaaa");  // mid-rotation: keep what worked
  dir.write("token", "bbbb");
  EXPECT_EQ(token->current(), "bbbb");  // a new inode

  dir.write("token", "");
  token->invalidate();
  EXPECT_EQ(token->current(), "bbbb");  // an empty file is no token

  EXPECT_THROW(k8s::BearerToken::from_file((dir.path() / "absent").string()), k8s::KubernetesConfigError);
  EXPECT_THROW(k8s::BearerToken::from_file(path.string()), k8s::KubernetesConfigError);  // empty
  try {
    dir.write("big", std::string(70 * 1024, 'x'));
    k8s::BearerToken::from_file((dir.path() / "big").string());
    ADD_FAILURE() << "a 70 KiB token was accepted";
  } catch (const k8s::KubernetesConfigError& e) {
    EXPECT_EQ(std::string(e.what()).find("xxxx"), std::string::npos);  // never the content
  }
}
