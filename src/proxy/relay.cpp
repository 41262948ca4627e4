#include "proxy/relay.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <map>
#include <memory>

#include <spdlog/spdlog.h>

#include <new>

#include "proxy/log_throttle.hpp"
#include "proxy/pipe_pool.hpp"

namespace dsproxy::proxy {

namespace {

// Why callbacks and not one coroutine per direction: an idle proxied connection is what a node
// proxy holds most of, and its cost is what sits in memory while it waits. Two direction
// coroutines joined by awaitable operators cost about 8.6 KiB per connection (frames, parallel
// group state, spawned entry points); this object, which owns both sockets, and its two pending
// read waits cost a few hundred bytes, and no coroutine frame stays alive beside them.

// Reads of up to this size are copied through the worker's scratch buffer: for the small
// messages of request/response traffic, recv + send cost less than splice's two pipe operations
// (the kernel must also copy a small segment into a page of its own before it can splice it). A
// read that fills the buffer marks the direction as bulk, and its next read is a splice.
constexpr std::size_t kChunk = 16 * 1024;
// Transfers in a row before a busy direction yields to the rest of the worker's connections.
constexpr int kBudget = 16;

// One per worker thread, shared by all of its connections: bytes stay in it only within one
// Relay::move() call, which sends them or saves what the receiver could not take in the
// direction's own buffer before it returns.
char* worker_scratch() {
  static thread_local char scratch[kChunk];
  return scratch;
}

class Relay;

// Idle detection for every relay of one io_context: one timer per distinct idle timeout instead
// of one timer (and one pending wait) per connection. At each tick a relay whose activity counter
// has not moved since the previous tick is reset, so it fires between 1x and 2x the timeout.
// An asio service, so it lives and dies with its io_context.
class IdleSweeper : public boost::asio::execution_context::service {
 public:
  static inline boost::asio::execution_context::id id;
  explicit IdleSweeper(boost::asio::execution_context& context) : service(context) {}

  static IdleSweeper& of(const boost::asio::any_io_executor& executor) {
    return boost::asio::use_service<IdleSweeper>(boost::asio::query(executor, boost::asio::execution::context));
  }

  void add(Relay& relay, std::chrono::milliseconds period, const boost::asio::any_io_executor& executor);
  void remove(Relay& relay);

 private:
  struct Wheel {
    explicit Wheel(const boost::asio::any_io_executor& executor) : timer(executor) {}
    boost::asio::steady_timer timer;
    Relay* head = nullptr;
    bool armed = false;
  };
  void arm(std::chrono::milliseconds period, Wheel& wheel);
  void tick(std::chrono::milliseconds period, Wheel& wheel);
  // The io_context is going away with relays still open (a stop without drain, or a drain whose
  // grace ran out): they own their connections, so destroying them resets the sockets, and their
  // handlers are destroyed without being called. Runs before the reactor shuts down (services
  // stop in reverse order of creation), so the sockets can still deregister.
  void shutdown() override;

  std::map<std::chrono::milliseconds, std::unique_ptr<Wheel>> wheels_;
};

class Relay {
  friend class IdleSweeper;  // destroys the relays still open when its io_context goes away

 public:
  using Handler = boost::asio::any_completion_handler<void(RelayResult)>;

  // Takes the sockets and the handler only once the relay exists: if allocating it throws, they
  // are still the caller's (start_relay resets the sockets).
  static void start(tcp::socket&& downstream, tcp::socket&& upstream, const RelayOptions& options,
                    Handler&& handler) {
    // Registration can throw (bad_alloc); until it has succeeded no wait holds the relay, so it
    // can still be destroyed (closing both sockets, after a reset) rather than leaked.
    auto destroy = [](Relay* r) { delete r; };  // the destructor is private: only we end a relay
    std::unique_ptr<Relay, decltype(destroy)> owned(
        new Relay(std::move(downstream), std::move(upstream), options, std::move(handler)), destroy);
    try {
      owned->sweeper_ = &IdleSweeper::of(owned->downstream_.get_executor());
      owned->sweeper_->add(*owned, owned->idle_timeout_, owned->downstream_.get_executor());
    } catch (...) {
      net::reset_connection(owned->downstream_);
      net::reset_connection(owned->upstream_);
      throw;
    }
    Relay* relay = owned.release();
    try {
      relay->begin();
    } catch (const std::exception& e) {
      relay->fault(e);
    }
    // Both directions may have ended before any wait was started (a peer that sent its data and
    // FIN at once, and the other end likewise): nothing else would finish it.
    if (relay->pending_ == 0) relay->finish();
  }

  // Used by IdleSweeper, on this relay's thread.
  Relay* sweep_prev = nullptr;
  Relay* sweep_next = nullptr;
  bool swept = false;  // registered with the sweeper
  static constexpr std::uint64_t kNeverSwept = ~std::uint64_t{0};  // activity_ never gets there
  std::uint64_t sweep_seen = kNeverSwept;
  bool idle_since_last_sweep() const { return activity_ == sweep_seen; }
  bool ended() const { return dirs_[0].done && dirs_[1].done; }  // only finishing waits are left
  void mark_swept() { sweep_seen = activity_; }
  // RelayHandle::reset: like an idle expiry, counted as a revocation.
  static void revoke(void* self) {
    auto* r = static_cast<Relay*>(self);
    if (r->ended()) return;
    r->result_.revoked = true;
    net::reset_connection(r->downstream_);
    net::reset_connection(r->upstream_);
    for (auto& d : r->dirs_)
      if (!d.done) r->direction_done(d);
  }
  void expire() {
    // Idle for a whole period: reset both sides. Pending waits complete with operation_aborted
    // and the last one finishes the relay.
    result_.idle_timeout = true;
    net::reset_connection(downstream_);
    net::reset_connection(upstream_);
    for (auto& d : dirs_)
      if (!d.done) direction_done(d);
  }

 private:
  // One direction: bytes read from `from` are written to `to`. Between a read and the write
  // that drains it, the bytes sit in `pipe` (splice), or at `out` (the worker's scratch buffer
  // within one move() call, `buffer` when the receiver could not take them at once).
  struct Direction {
    tcp::socket* from = nullptr;
    tcp::socket* to = nullptr;
    std::uint64_t* bytes = nullptr;
    Pipe pipe;
    std::size_t pipe_pending = 0;
    const char* out = nullptr;
    std::size_t out_pending = 0;
    std::unique_ptr<char[]> buffer;  // allocated on the first short write only
    bool bulk = false;       // the last read filled the scratch buffer: splice the next one
    bool copy_only = false;  // splice was refused for these sockets
    bool done = false;
  };

  Relay(tcp::socket downstream, tcp::socket upstream, const RelayOptions& options, Handler handler)
      : downstream_(std::move(downstream)),
        upstream_(std::move(upstream)),
        idle_timeout_(options.idle_timeout),
        handle_(options.handle),
        handler_(std::move(handler)),
        test_fault_countdown_(options.test_fault_at_move) {
    if (handle_) {
      handle_->target_ = this;
      handle_->reset_ = &Relay::revoke;
    }
    dirs_[0].from = &downstream_;
    dirs_[0].to = &upstream_;
    dirs_[0].bytes = &result_.bytes_to_upstream;
    dirs_[1].from = &upstream_;
    dirs_[1].to = &downstream_;
    dirs_[1].bytes = &result_.bytes_to_downstream;
  }

  // On the way out with its io_context (IdleSweeper::shutdown), on the control thread: pipes go
  // straight back to the kernel, not into that thread's pool, which never lent them.
  void close_pipes() {
    for (auto& d : dirs_)
      if (d.pipe.valid()) {
        ::close(d.pipe.read_fd);
        ::close(d.pipe.write_fd);
        d.pipe = Pipe{};
      }
  }

  // Resets both sockets now. Not left to the destructor: asio's socket destructor turns a
  // user-set SO_LINGER off again before closing (so that it never blocks), which would send a FIN.
  void linger_reset() {
    net::reset_connection(downstream_);
    net::reset_connection(upstream_);
  }

  // Closes both sockets (members): the last FIN or the reset goes out here.
  ~Relay() {
    if (handle_) *handle_ = RelayHandle{};
    if (swept) sweeper_->remove(*this);
    for (auto& d : dirs_) PipePool::for_this_thread().release(d.pipe, d.pipe_pending == 0);
  }

  void begin() {
    // Our own splice/recv/send calls below must never block the worker thread. (asio's setter
    // always calls ioctl, its getter only reads a flag; asio would set the flag itself at the
    // first async_wait anyway, so there is no ioctl to save by setting it later.)
    boost::system::error_code ignored;
    if (!downstream_.non_blocking()) downstream_.non_blocking(true, ignored);
    if (!upstream_.non_blocking()) upstream_.non_blocking(true, ignored);
    move(0);
    // The upstream was connected a moment ago and (for the request/response protocols that make
    // up most short connections) has not answered the request move(0) has just forwarded: a read
    // now would mostly cost a recv() that says EAGAIN before the wait it ends in anyway. The wait
    // alone (EPOLL_CTL_MOD, which re-checks readiness) also catches a server that speaks first.
    if (!dirs_[1].done) wait(upstream_, tcp::socket::wait_read, 1);
  }

  // ---- lifetime: every started wait holds one count; the last one to finish ends the relay ----

  // Every callback runs inside this: an exception (the data path uses error codes, so in
  // practice std::bad_alloc) ends this connection only, with a reset of both sides, and the
  // relay still finishes normally once its last wait is back. Left to escape, it would unwind
  // through the worker's io_context::run() with the count below never decremented: the relay,
  // its sockets and its gauges would leak, and a drain would wait for it until the grace ran out.
  template <typename Fn>
  auto guarded(Fn fn) {
    ++pending_;
    return [this, fn](auto... args) {
      try {
        fn(args...);
      } catch (const std::exception& e) {
        fault(e);
      }
      if (--pending_ == 0) finish();
    };
  }

  // Scheduling a wait or a post allocates: if that throws, the count taken for the callback that
  // will never run is given back before the exception goes on to the caller's guard.
  template <typename Schedule>
  void schedule(Schedule&& schedule_it) {
    const int before = pending_;
    try {
      schedule_it();
    } catch (...) {
      pending_ = before;
      throw;
    }
  }

  void fault(const std::exception& e) {
    result_.fault = true;
    static LogThrottle throttle;
    if (const auto suppressed = throttle.admit(std::chrono::steady_clock::now()))
      spdlog::error("relay: a callback threw ({}); its connection is reset on both sides, the worker goes on "
                    "({} similar fault(s) not logged; see worker_faults)",
                    e.what(), *suppressed);
    net::reset_connection(downstream_);
    net::reset_connection(upstream_);
    for (auto& d : dirs_)
      if (!d.done) direction_done(d);
  }

  void finish() {
    // Both directions ended and no wait is outstanding: the sockets close with this object, and
    // the handler is posted, so it runs on a clean stack after they are closed. A post that
    // cannot allocate destroys the handler uncalled (its gauges are released all the same);
    // the relay must still go.
    auto executor = downstream_.get_executor();
    try {
      boost::asio::post(executor, [handler = std::move(handler_), result = result_]() mutable {
        std::move(handler)(result);
      });
    } catch (const std::exception&) {
    }
    delete this;
  }

  void direction_done(Direction& d) {
    d.done = true;
    PipePool::for_this_thread().release(d.pipe, d.pipe_pending == 0);
    d.pipe = Pipe{};
    d.pipe_pending = 0;
    d.out_pending = 0;
  }

  // Ends both directions abruptly: reset `victim` (the side that still looks healthy) and close
  // `culprit` (already broken). Pending waits on both complete with operation_aborted.
  void abort(tcp::socket& culprit, tcp::socket& victim) {
    result_.reset = true;
    result_.upstream_reset = &culprit == &upstream_;
    net::reset_connection(victim);
    boost::system::error_code ignored;
    culprit.close(ignored);
    for (auto& d : dirs_)
      if (!d.done) direction_done(d);
  }

  void wait(tcp::socket& socket, tcp::socket::wait_type type, int index) {
    schedule([&] {
      socket.async_wait(type, guarded([this, index](boost::system::error_code ec) {
        Direction& d = dirs_[index];
        if (d.done) return;
        // Aborted, or the other direction closed a socket meanwhile: this direction is over.
        if (ec || !d.from->is_open() || !d.to->is_open()) return direction_done(d);
        move(index);
      }));
    });
  }

  // Moves as much as the sockets allow right now, then waits for whichever side stopped it.
  // A read shorter than asked for means the socket was drained: the relay waits then instead of
  // trying once more for EAGAIN. That is safe because asio starts a wait with EPOLL_CTL_MOD
  // whenever no other wait of the same kind is queued on that socket (always so here: each socket
  // has at most one read wait and one write wait, from different directions), and the kernel
  // re-checks readiness on MOD: bytes or a FIN that arrived in between complete the wait at once.
  // Whatever a read brought is flushed before anything else runs, because bytes in the worker's
  // scratch buffer must not outlive this call (flush() moves what the receiver refuses into the
  // direction's own buffer). Descriptors are re-read from the sockets on every call: a cached
  // number could belong to another connection by now.
  void move(int index) {
    if (test_fault_countdown_ > 0 && --test_fault_countdown_ == 0) throw std::bad_alloc();  // tests only
    Direction& d = dirs_[index];
    for (int budget = kBudget; budget > 0; --budget) {
      if (d.done) return;
      if (!flush(d, index)) return;  // waiting for `to` to drain, or ended
      const Step step = read(d);
      switch (step) {
        case Step::progress:
          if (!flush(d, index)) return;
          continue;
        case Step::drained:
          if (!flush(d, index)) return;
          return wait(*d.from, tcp::socket::wait_read, index);
        case Step::would_block: return wait(*d.from, tcp::socket::wait_read, index);
        case Step::eof: {
          // Half-close: forward the FIN and keep the other direction flowing. When the other
          // direction has already ended, closing both sockets (right after this) sends the FIN.
          boost::system::error_code ignored;
          if (!dirs_[1 - index].done) d.to->shutdown(tcp::socket::shutdown_send, ignored);
          return direction_done(d);
        }
        case Step::failed: return abort(*d.from, *d.to);
      }
    }
    // A busy direction yields after its budget, so one bulk stream cannot starve the others.
    schedule([&] {
      boost::asio::post(downstream_.get_executor(), guarded([this, index] {
        if (!dirs_[index].done) move(index);
      }));
    });
  }

  // progress: a full read, more may be waiting; drained: a short read, the socket had nothing
  // more. Either way the bytes read still need flushing.
  enum class Step { progress, drained, would_block, eof, failed };

  Step read(Direction& d) {
    return d.bulk && !d.copy_only ? read_into_pipe(d) : read_into_scratch(d);
  }

  Step read_into_pipe(Direction& d) {
    PipePool& pool = PipePool::for_this_thread();
    if (!d.pipe.valid()) d.pipe = pool.acquire();
    if (!d.pipe.valid()) return read_into_scratch(d);  // pipes exhausted: copy this round
    const ssize_t n = ::splice(d.from->native_handle(), nullptr, d.pipe.write_fd, nullptr, d.pipe.capacity,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      d.pipe_pending = static_cast<std::size_t>(n);
      d.bulk = static_cast<std::size_t>(n) >= kChunk;
      ++activity_;
      return static_cast<std::size_t>(n) < d.pipe.capacity ? Step::drained : Step::progress;
    }
    const int err = errno;
    // An idle connection holds no pipe: give it back while waiting.
    pool.release(d.pipe);
    d.pipe = Pipe{};
    if (n == 0) {
      // Not always the end: splice also returns 0 at TCP's urgent mark once the FIN is queued
      // behind it. recv reads through the mark, and says 0 only at the real end.
      d.bulk = false;
      return read_into_scratch(d);
    }
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
      // splice stops at TCP's urgent mark and says EAGAIN although bytes are queued, and the
      // socket stays readable: splicing again after the wait would spin on this worker for
      // ever. The next read copies instead (recv reads through the mark); a full copy turns
      // splicing back on.
      d.bulk = false;
      return Step::would_block;
    }
    if (err == EINVAL) {
      d.copy_only = true;
      return read_into_scratch(d);
    }
    return Step::failed;  // ECONNRESET and friends
  }

  Step read_into_scratch(Direction& d) {
    char* scratch = worker_scratch();
    const ssize_t n = ::recv(d.from->native_handle(), scratch, kChunk, MSG_DONTWAIT);
    if (n > 0) {
      d.out = scratch;
      d.out_pending = static_cast<std::size_t>(n);
      d.bulk = static_cast<std::size_t>(n) == kChunk;
      ++activity_;
      return static_cast<std::size_t>(n) < kChunk ? Step::drained : Step::progress;
    }
    if (n == 0) return Step::eof;
    const int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return Step::would_block;
    return Step::failed;
  }

  // Moves what is left of the scratch buffer into the direction's own buffer.
  void keep_out(Direction& d) {
    if (!d.buffer) d.buffer = std::make_unique<char[]>(kChunk);
    if (d.out != d.buffer.get()) std::memmove(d.buffer.get(), d.out, d.out_pending);
    d.out = d.buffer.get();
  }

  // Writes what the direction holds to `to`. Returns true when it all went out; false when it
  // started a wait for `to` (or ended the connection on a write error).
  bool flush(Direction& d, int index) {
    while (d.pipe_pending > 0 || d.out_pending > 0) {
      ssize_t m;
      if (d.pipe_pending > 0)
        m = ::splice(d.pipe.read_fd, nullptr, d.to->native_handle(), nullptr, d.pipe_pending,
                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      else
        m = ::send(d.to->native_handle(), d.out, d.out_pending, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (m > 0) {
        *d.bytes += static_cast<std::uint64_t>(m);
        if (d.pipe_pending > 0) {
          d.pipe_pending -= static_cast<std::size_t>(m);
        } else {
          d.out += m;
          d.out_pending -= static_cast<std::size_t>(m);
        }
        continue;
      }
      const int err = errno;
      if (m < 0 && err == EINTR) continue;
      if (m < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
        if (d.out_pending > 0) keep_out(d);  // the scratch buffer is not ours past this call
        wait(*d.to, tcp::socket::wait_write, index);
        return false;
      }
      abort(*d.to, *d.from);  // EPIPE / ECONNRESET: the receiver is gone
      return false;
    }
    if (d.pipe.valid()) {
      // Drained: back to the pool, so an idle connection holds no pipe.
      PipePool::for_this_thread().release(d.pipe);
      d.pipe = Pipe{};
    }
    return true;
  }

  tcp::socket downstream_;
  tcp::socket upstream_;
  IdleSweeper* sweeper_ = nullptr;
  std::chrono::milliseconds idle_timeout_;
  std::shared_ptr<RelayHandle> handle_;
  Handler handler_;
  Direction dirs_[2];
  RelayResult result_;
  std::uint64_t activity_ = 0;  // bumped per successful read; the sweeper compares snapshots
  int pending_ = 0;
  int test_fault_countdown_ = 0;  // RelayOptions::test_fault_at_move
};

void IdleSweeper::add(Relay& relay, std::chrono::milliseconds period, const boost::asio::any_io_executor& executor) {
  auto& wheel = wheels_[period];
  if (!wheel) wheel = std::make_unique<Wheel>(executor);
  relay.sweep_prev = nullptr;
  relay.sweep_next = wheel->head;
  if (wheel->head) wheel->head->sweep_prev = &relay;
  wheel->head = &relay;
  relay.swept = true;
  // The wheel's timer is already running: its next tick may come at once. A snapshot taken now
  // would let that tick reset a connection that has had no time to move a byte, so the first
  // tick only takes the snapshot, and the reset comes after 1x to 2x the timeout as promised.
  relay.sweep_seen = Relay::kNeverSwept;
  if (!wheel->armed) arm(period, *wheel);
}

void IdleSweeper::remove(Relay& relay) {
  if (!relay.swept) return;
  relay.swept = false;
  if (relay.sweep_prev) relay.sweep_prev->sweep_next = relay.sweep_next;
  if (relay.sweep_next) relay.sweep_next->sweep_prev = relay.sweep_prev;
  for (auto& [period, wheel] : wheels_)
    if (wheel->head == &relay) wheel->head = relay.sweep_next;
  relay.sweep_prev = relay.sweep_next = nullptr;
}

void IdleSweeper::shutdown() {
  for (auto& [period, wheel] : wheels_)
    while (Relay* r = wheel->head) {
      remove(*r);
      r->close_pipes();
      // A relay still open here is being cut short (a drain whose grace ran out, a stop): its
      // peers must see a reset, never a FIN, which would read as a clean end of stream and
      // silently truncate a transfer.
      r->linger_reset();
      delete r;
    }
  wheels_.clear();
}

void IdleSweeper::arm(std::chrono::milliseconds period, Wheel& wheel) {
  wheel.armed = true;
  wheel.timer.expires_after(period);
  // The wheel outlives its pending wait: both belong to this service, which the io_context
  // destroys only after abandoning the wait.
  wheel.timer.async_wait([this, period, &wheel](boost::system::error_code ec) {
    wheel.armed = false;
    if (!ec) tick(period, wheel);
  });
}

void IdleSweeper::tick(std::chrono::milliseconds period, Wheel& wheel) {
  for (Relay* r = wheel.head; r;) {
    Relay* next = r->sweep_next;  // expire() may unlink r
    // An ended relay only waits for its last (aborted) waits to come back on this turn.
    if (!r->ended() && r->idle_since_last_sweep()) r->expire();
    else r->mark_swept();
    r = next;
  }
  if (wheel.head) arm(period, wheel);
}

}  // namespace

void start_relay(tcp::socket downstream, tcp::socket upstream, const RelayOptions& options,
                 boost::asio::any_completion_handler<void(RelayResult)> handler) {
  try {
    Relay::start(std::move(downstream), std::move(upstream), options, std::move(handler));
  } catch (...) {
    // No relay could be made (std::bad_alloc): the connection ends by a reset, as any fault's
    // does, never by the plain close these sockets would otherwise get here.
    net::reset_connection(downstream);
    net::reset_connection(upstream);
    throw;
  }
}

}  // namespace dsproxy::proxy
