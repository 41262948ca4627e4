#pragma once
// What loading or issuing a certificate throws (control-plane side only; the data path gets
// error codes, see peer_verification.hpp). Messages name files and OpenSSL's reason strings,
// never key material: nothing here ever formats a key or a PEM block into a message.

#include <stdexcept>
#include <string>

namespace dsproxy::identity {

class IdentityError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// OpenSSL's queued errors as one line of reason strings ("" when the queue is empty); clears the
// queue. The reason strings are fixed texts from OpenSSL's tables: they never carry key bytes.
std::string openssl_errors();

}  // namespace dsproxy::identity
