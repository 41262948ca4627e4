#pragma once
// Renders the admin API's /config_dump the way `istioctl proxy-config` prints it.
// Pure text-in, text-out so the tables are unit-tested without a running proxy.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dsproxy::cli {

// Throws std::runtime_error if `config_dump` is not the JSON the admin API serves.
std::string listeners_table(std::string_view config_dump, std::optional<std::uint16_t> port);
std::string listeners_json(std::string_view config_dump, std::optional<std::uint16_t> port);  // pretty array
std::string endpoints_table(std::string_view config_dump, std::optional<std::uint16_t> port);
std::string endpoints_json(std::string_view config_dump, std::optional<std::uint16_t> port);
// NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL, as istioctl ztunnel-config workloads.
std::string workloads_table(std::string_view config_dump);
std::string workloads_json(std::string_view config_dump);

// `proxy-config authz`: per local workload, the AuthorizationPolicies that apply to it
// (NAMESPACE WORKLOAD ADDRESSES POLICY ACTION SCOPE RULES NOTES); a workload no policy selects
// gets one row saying it allows everything.
std::string authz_table(std::string_view config_dump);
std::string authz_json(std::string_view config_dump);  // the dump's "authz" object, pretty

}  // namespace dsproxy::cli
