#include "proxy/connect_scheduler.hpp"

#include <algorithm>

namespace dsproxy::proxy {

ConnectScheduler::ConnectScheduler(ConnectSchedulerOptions options,
                                   std::function<std::optional<BackendTargets>()> next_backend)
    : options_(options), next_backend_(std::move(next_backend)) {}

std::vector<ConnectScheduler::Action> ConnectScheduler::start(TimePoint now) {
  std::vector<Action> out;
  overall_deadline_ = now + options_.connect_timeout;
  begin_backend(now, out);
  return out;
}

void ConnectScheduler::begin_backend(TimePoint now, std::vector<Action>& out) {
  if (backends_tried_ >= options_.max_backends || now >= overall_deadline_) return finish_failed(out);
  auto targets = next_backend_();
  if (!targets || targets->addresses.empty()) return finish_failed(out);
  const int remaining = options_.max_backends - backends_tried_;
  ++backends_tried_;
  current_tag_ = targets->tag;
  backend_deadline_ = now + (overall_deadline_ - now) / remaining;
  second_address_.reset();
  second_due_.reset();
  if (targets->addresses.size() > 1) {
    second_address_ = targets->addresses[1];
    second_due_ = now + options_.attempt_delay;
  }
  start_attempt(targets->addresses[0], false, out);
}

void ConnectScheduler::start_attempt(const net::SocketAddress& address, bool second, std::vector<Action>& out) {
  attempts_.push_back({address, backends_tried_ - 1, current_tag_, second, AttemptState::running});
  out.push_back({ActionKind::start, static_cast<int>(attempts_.size()) - 1});
}

bool ConnectScheduler::backend_has_running() const {
  return std::any_of(attempts_.begin(), attempts_.end(), [&](const Attempt& a) {
    return a.backend == backends_tried_ - 1 && a.state == AttemptState::running;
  });
}

void ConnectScheduler::end_backend(TimePoint now, AttemptState running_becomes, std::vector<Action>& out) {
  for (std::size_t i = 0; i < attempts_.size(); ++i) {
    if (attempts_[i].state != AttemptState::running) continue;
    attempts_[i].state = running_becomes;
    out.push_back({running_becomes == AttemptState::abandoned ? ActionKind::abandon : ActionKind::cancel,
                   static_cast<int>(i)});
  }
  second_address_.reset();
  second_due_.reset();
  begin_backend(now, out);
}

void ConnectScheduler::finish_failed(std::vector<Action>& out) {
  finished_ = true;
  out.push_back({ActionKind::fail, -1});
}

std::vector<ConnectScheduler::Action> ConnectScheduler::on_result(int attempt, bool connected, TimePoint now) {
  std::vector<Action> out;
  if (finished_ || attempt < 0 || attempt >= static_cast<int>(attempts_.size())) return out;
  Attempt& a = attempts_[static_cast<std::size_t>(attempt)];
  if (a.state != AttemptState::running) return out;  // cancelled or abandoned: its result is moot
  if (connected) {
    a.state = AttemptState::connected;
    for (std::size_t i = 0; i < attempts_.size(); ++i)
      if (attempts_[i].state == AttemptState::running) {
        attempts_[i].state = AttemptState::cancelled;
        out.push_back({ActionKind::cancel, static_cast<int>(i)});
      }
    finished_ = true;
    out.push_back({ActionKind::succeed, attempt});
    return out;
  }
  a.state = AttemptState::failed;
  // RFC 8305: a failure starts the next address at once instead of waiting out the delay.
  if (second_address_) {
    const auto next = *second_address_;
    second_address_.reset();
    second_due_.reset();
    start_attempt(next, true, out);
    return out;
  }
  if (!backend_has_running()) begin_backend(now, out);
  return out;
}

std::vector<ConnectScheduler::Action> ConnectScheduler::on_timer(TimePoint now) {
  std::vector<Action> out;
  if (finished_) return out;
  if (now >= overall_deadline_) {
    timed_out_ = true;
    for (std::size_t i = 0; i < attempts_.size(); ++i)
      if (attempts_[i].state == AttemptState::running) {
        attempts_[i].state = AttemptState::abandoned;
        out.push_back({ActionKind::abandon, static_cast<int>(i)});
      }
    finish_failed(out);
    return out;
  }
  // A backend whose time is up is left before its second family could be started: an attempt
  // started and abandoned in the same breath would count as a failure of an endpoint never
  // really tried (and, towards a local pod, might even connect before it is thrown away).
  if (now >= backend_deadline_) {
    end_backend(now, AttemptState::abandoned, out);
    return out;
  }
  if (second_due_ && now >= *second_due_) {
    const auto next = *second_address_;
    second_address_.reset();
    second_due_.reset();
    start_attempt(next, true, out);
  }
  return out;
}

std::vector<ConnectScheduler::Action> ConnectScheduler::give_up(int attempt) {
  std::vector<Action> out;
  if (finished_) return out;
  for (std::size_t i = 0; i < attempts_.size(); ++i) {
    if (attempts_[i].state != AttemptState::running) continue;
    if (static_cast<int>(i) == attempt) {
      attempts_[i].state = AttemptState::failed;
    } else {
      attempts_[i].state = AttemptState::cancelled;
      out.push_back({ActionKind::cancel, static_cast<int>(i)});
    }
  }
  second_address_.reset();
  second_due_.reset();
  finish_failed(out);
  return out;
}

ConnectScheduler::TimePoint ConnectScheduler::next_deadline() const {
  if (finished_) return TimePoint::max();
  TimePoint t = std::min(overall_deadline_, backend_deadline_);
  if (second_due_) t = std::min(t, *second_due_);
  return t;
}

}  // namespace dsproxy::proxy
