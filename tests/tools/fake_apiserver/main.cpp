// dsproxy_fake_apiserver: the fake Kubernetes API server as a process, for the end-to-end tests.
//
//   dsproxy_fake_apiserver --dir DIR [--listen ADDR] [--port N] [--objects FILE]
//                          [--control-port N] [--token T] [--bookmark-interval-ms MS]
//
// Writes DIR/{ca.crt,wrong-ca.crt,token,kubeconfig,kubeconfig-inline,kubeconfig-wrong-ca,
// serviceaccount/,port,control_port} and serves until SIGTERM/SIGINT. The control API
// (plain HTTP on 127.0.0.1:control_port) is described in README.md next to this file.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <boost/json/serialize.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "fake_apiserver/fake_api_server.hpp"
#include "fake_apiserver/object_store.hpp"
#include "fake_apiserver/objects_file.hpp"

int main(int argc, char** argv) {
  using namespace dsproxy::fake_api;
  CLI::App app{"fake Kubernetes API server for dsproxy's end-to-end tests"};
  FakeApiServerOptions options;
  std::string dir, objects_file;
  std::uint16_t control_port = 0;
  int bookmark_ms = 0;
  app.add_option("--dir", dir, "directory for TLS material, token, kubeconfig, port files")->required();
  app.add_option("--listen", options.listen_address, "address to serve HTTPS on (default 127.0.0.1)");
  app.add_option("--port", options.port, "port (default 0: any; see DIR/port)");
  app.add_option("--objects", objects_file, "initial objects: JSON or YAML (documents, List, array)");
  app.add_option("--control-port", control_port, "control API port on 127.0.0.1 (default 0: DIR/control_port)");
  app.add_option("--token", options.token, "bearer token to require (default: random, in DIR/token)");
  app.add_option("--bookmark-interval-ms", bookmark_ms, "BOOKMARK every MS to watches that allow them");
  app.add_option("--history", options.history_limit, "events retained for watches (default 10000)");
  CLI11_PARSE(app, argc, argv);
  options.dir = dir;
  options.bookmark_interval = std::chrono::milliseconds(bookmark_ms);

  // Block the stop signals before the server thread exists, so only sigwait below takes them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    FakeApiServer server(options);
    if (!objects_file.empty()) {
      for (auto& object : load_objects_file(objects_file)) {
        auto kind = object.find("kind");
        const ResourceInfo* resource = kind != object.end() && kind->value().is_string()
                                           ? find_resource_by_kind(kind->value().get_string())
                                           : nullptr;
        if (!resource) continue;  // ConfigMaps and the like in a shared manifest: not served
        server.upsert(resource->plural, std::move(object));
      }
    }
    server.start();
    std::uint16_t bound_control = server.start_control(control_port);
    {
      std::string path = dir + "/control_port";
      std::ofstream(path + ".tmp") << bound_control << "\n";
      std::rename((path + ".tmp").c_str(), path.c_str());
    }
    std::printf("fake apiserver: %s (control http://127.0.0.1:%u), resourceVersion %llu\n", server.url().c_str(),
                bound_control, static_cast<unsigned long long>(server.resource_version()));
    std::fflush(stdout);
    int received = 0;
    sigwait(&signals, &received);
    server.stop();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsproxy_fake_apiserver: %s\n", e.what());
    return 1;
  }
  return 0;
}
