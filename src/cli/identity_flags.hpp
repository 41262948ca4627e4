#pragma once
// `dsproxy run`'s identity and HBONE flags (issue 11): --ca-cert/--ca-key (local issuer) or
// --cert-dir (external issuer), --trust-bundle, --trust-domain, --cert-lifetime-s, --hbone-port.

#include <CLI/CLI.hpp>
#include <cstdint>

#include "identity/identity_options.hpp"

namespace dsproxy::cli {

void add_identity_flags(CLI::App& run, identity::IdentityOptions& options, std::uint16_t& hbone_port);
// After parsing: throws std::invalid_argument with IdentityOptions::validate()'s message.
void check_identity_flags(const identity::IdentityOptions& options);

}  // namespace dsproxy::cli
