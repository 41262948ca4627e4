// rules_update: how long dsproxy's refusal-set updates take on a real kernel, through the same
// code the daemon runs (VipRefusals + ProcessRunner -> ipset / iptables-restore). Not a test:
// bench/rules_scale.sh runs it inside a network namespace of its own and prints the numbers.
//
//   rules_update --services N [--rounds R] [--no-kernel]
//
// --no-kernel: a runner that runs nothing and answers success, so only dsproxy's own work is
// timed (diffing, formatting), not ipset's.
//
// N dual-stack Services (an IPv4 and an IPv6 ClusterIP, two open ports each), then per round:
// close one port of one Service, open it again, add a Service, remove it; each once through
// apply (the whole list, diffed) and once through apply_changes (only the change, as the control
// plane can hand it over). Prints one JSON object: install time, the median and max of each kind
// of one-Service update per entry point, uninstall time, all in milliseconds.

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "redirect/command_runner.hpp"
#include "redirect/redirector.hpp"
#include "redirect/vip_refusals.hpp"

using namespace dsproxy;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

redirect::VipOpenPorts service_v4(int i) {
  return {*net::IpAddress::parse(fmt::format("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256)), {80, 443}};
}
redirect::VipOpenPorts service_v6(int i) {
  return {*net::IpAddress::parse(fmt::format("fd00:10:96::{:x}:{:x}", i / 65536 + 1, i % 65536)), {80, 443}};
}

class NullRunner final : public redirect::CommandRunner {
 public:
  redirect::CommandResult run(const redirect::Command&) override { return {}; }
};

struct Series {
  std::vector<double> ms;
  std::string json(const char* name) const {
    auto sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    return fmt::format("\"{}\":{{\"median_ms\":{:.2f},\"max_ms\":{:.2f}}}", name, sorted[sorted.size() / 2], sorted.back());
  }
};

}  // namespace

int main(int argc, char** argv) {
  int services = 20000, rounds = 5;
  bool kernel = true;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--no-kernel") kernel = false;
    else if (flag == "--services" && i + 1 < argc) services = std::atoi(argv[++i]);
    else if (flag == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
  }
  if (services < 2 || services > 1000000 || rounds < 1 || rounds > 1000) {
    std::fprintf(stderr, "usage: rules_update --services N (2..1000000) [--rounds R (1..1000)]\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);
  redirect::RedirectOptions options;
  options.dns_capture = true;  // as `dsproxy run` has it
  redirect::ProcessRunner process_runner;
  NullRunner null_runner;
  redirect::CommandRunner& runner = kernel ? static_cast<redirect::CommandRunner&>(process_runner) : null_runner;
  redirect::Redirector capture(options, runner);
  redirect::VipRefusals refusals(options, runner);
  try {
    capture.install({*net::IpAddress::parse("10.244.0.10"), *net::IpAddress::parse("fd00:10:244::a")});
    std::vector<redirect::VipOpenPorts> vips;
    for (int i = 0; i < services; ++i) {
      vips.push_back(service_v4(i));
      vips.push_back(service_v6(i));
    }
    auto t0 = Clock::now();
    refusals.apply(vips);
    const double install_ms = ms_since(t0);

    Series close_port, open_port, add_service, remove_service;
    Series close_port_delta, open_port_delta, add_service_delta, remove_service_delta;
    auto timed = [&](Series& series, const redirect::VipChanges& changes) {
      const auto start = Clock::now();
      refusals.apply_changes(changes);
      series.ms.push_back(ms_since(start));
    };
    for (int r = 0; r < rounds; ++r) {
      auto& victim = vips[static_cast<std::size_t>(2 * (r * 7919 % services))];
      victim.open_ports = {80};
      t0 = Clock::now();
      refusals.apply(vips);
      close_port.ms.push_back(ms_since(t0));
      victim.open_ports = {80, 443};
      t0 = Clock::now();
      refusals.apply(vips);
      open_port.ms.push_back(ms_since(t0));
      vips.push_back(service_v4(services + r));
      vips.push_back(service_v6(services + r));
      t0 = Clock::now();
      refusals.apply(vips);
      add_service.ms.push_back(ms_since(t0));
      vips.resize(vips.size() - 2);
      t0 = Clock::now();
      refusals.apply(vips);
      remove_service.ms.push_back(ms_since(t0));

      const auto vip = victim.vip;
      timed(close_port_delta, {{{vip, {80}}}, {}});
      timed(open_port_delta, {{{vip, {80, 443}}}, {}});
      timed(add_service_delta, {{service_v4(services + r), service_v6(services + r)}, {}});
      timed(remove_service_delta, {{}, {service_v4(services + r).vip, service_v6(services + r).vip}});
    }
    t0 = Clock::now();
    refusals.uninstall();
    const double uninstall_ms = ms_since(t0);
    capture.uninstall();
    std::printf("{\"services\":%d,\"clusterips\":%d,\"open_ports\":%d,\"rounds\":%d,\"install_ms\":%.1f,%s,%s,%s,%s,"
                "\"changes\":{%s,%s,%s,%s},\"uninstall_ms\":%.1f}\n",
                services, 2 * services, 4 * services, rounds, install_ms, close_port.json("close_one_port").c_str(),
                open_port.json("open_one_port").c_str(), add_service.json("add_one_service").c_str(),
                remove_service.json("remove_one_service").c_str(), close_port_delta.json("close_one_port").c_str(),
                open_port_delta.json("open_one_port").c_str(), add_service_delta.json("add_one_service").c_str(),
                remove_service_delta.json("remove_one_service").c_str(), uninstall_ms);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rules_update: %s\n", e.what());
    try {
      refusals.uninstall();
    } catch (...) {
    }
    try {
      capture.uninstall();
    } catch (...) {
    }
    return 1;
  }
  return 0;
}
