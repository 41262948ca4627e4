# shellcheck shell=bash
# The paths under test ("peers"): how each is configured, started, checked and stopped in the
# node namespace of bench/lib/topo.sh. Each proxy gets ONE worker.
#
#   direct          no proxy: the client's packets are only routed by the node (the limit)
#   dsproxy         dsproxy run --redirect --workers 1, client -> server pod IP (passthrough)
#   dsproxy-svc     the same, client -> the Service's ClusterIP (routed to the pod by dsproxy)
#   dsproxy-w2      dsproxy with --workers 2
#   dsproxy-explicit  dsproxy run --workers 1 without --redirect (no capture rules), with
#                   --forward listeners on the node's own addresses: the client dials the node,
#                   dsproxy connects to the server pod from the node's address (no IP_TRANSPARENT).
#                   The baseline of the target "TPROXY within 5 % of explicit addressing".
#   haproxy-splice  HAProxy, TPROXY capture by the same rules (dsproxy redirect install pointed
#                   at HAProxy's port), transparent bind, usesrc clientip, splice forced
#   haproxy         the same without splice
#   nginx           nginx stream; its listen sockets cannot be IP_TRANSPARENT, so capture is a
#                   nat REDIRECT per destination port, upstream proxy_bind $remote_addr transparent
#
# After peer_start: PEER_PIDS (every process of the peer), PEER_MAIN_PID (the one that serves
# connections: CPU and RSS are read from it), PEER_DST4 / PEER_DST6 (where the client connects).

PEER_PIDS=()
PEER_MAIN_PID=
PEER_DST4=
PEER_DST6=
PEER_ERROR=
PEER_LOG_NAME=

# Telemetry off, like the peers: HAProxy and nginx log no line per connection and export no
# metrics as configured here, while dsproxy's defaults are an access-log line per connection
# (text) and Prometheus counters on :15020. What those cost is bench/telemetry_cost.sh's to say.
DSPROXY_TELEMETRY_ARGS=(--access-log off --metrics-port 0)

HAPROXY_PORT=15101
NGINX_ECHO_PORT=27000
NGINX_IPERF_PORT=25201
NGINX_MARK=0x2000
NGINX_TABLE=134
NGINX_RULE_PREF=32100

peer_describe() {
  case $1 in
    direct) echo "direct: client -> server pod, routed through the node namespace, no proxy (the limit)" ;;
    dsproxy) echo "dsproxy --workers 1, ${DSPROXY_TELEMETRY_ARGS[*]}, TPROXY (dsproxy run --redirect), client -> server pod IP (passthrough)" ;;
    dsproxy-svc) echo "dsproxy --workers 1, ${DSPROXY_TELEMETRY_ARGS[*]}, TPROXY, client -> Service ClusterIP (service routing)" ;;
    dsproxy-w2) echo "dsproxy --workers 2, ${DSPROXY_TELEMETRY_ARGS[*]}, TPROXY, passthrough" ;;
    dsproxy-explicit) echo "dsproxy --workers 1, ${DSPROXY_TELEMETRY_ARGS[*]}, explicit addressing: no --redirect, no capture rules; client -> the node's address ($NODE_GW_CLIENT4 / $NODE_IP6), --forward to the server pod, upstream from the node's own address" ;;
    haproxy-splice) echo "HAProxy $(haproxy_version), nbthread 1, TPROXY, splice forced (option splice-request/splice-response)" ;;
    haproxy) echo "HAProxy $(haproxy_version), nbthread 1, TPROXY, no splice" ;;
    nginx) echo "nginx $(nginx_version) stream, worker_processes 1, nat REDIRECT capture, proxy_bind \$remote_addr transparent" ;;
    *) echo "$1" ;;
  esac
}

haproxy_version() { haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }'; }
nginx_version() { nginx -v 2>&1 | sed -n 's|.*nginx/||p'; }

# The configuration files of every peer, written to directory $1 (printed with the results).
peer_write_configs() {
  local dir=$1
  mkdir -p "$dir"
  topo_write_k8s_config "$dir/dsproxy-cluster.yaml"
  _haproxy_config splice >"$dir/haproxy-splice.cfg"
  _haproxy_config nosplice >"$dir/haproxy.cfg"
  _nginx_config "$BENCH_TMP" >"$dir/nginx.conf"
  {
    echo "# Capture for nginx, in the node namespace (its stream listen sockets cannot be IP_TRANSPARENT)"
    _nginx_rules_script
  } >"$dir/nginx-capture.sh"
  {
    echo "# Capture for dsproxy (its own --redirect) and for HAProxy (the same rules, other port):"
    echo "# dsproxy redirect print --config dsproxy-cluster.yaml --node $BENCH_NODE_NAME [--outbound-port $HAPROXY_PORT]"
    "$DSPROXY_BIN" redirect print --config "$dir/dsproxy-cluster.yaml" --node "$BENCH_NODE_NAME"
  } >"$dir/tproxy-capture.sh" 2>&1
  {
    echo "dsproxy run --config dsproxy-cluster.yaml --node $BENCH_NODE_NAME --redirect --workers 1 ${DSPROXY_TELEMETRY_ARGS[*]}"
    echo "dsproxy run --config dsproxy-cluster.yaml --node $BENCH_NODE_NAME --redirect --workers 2 ${DSPROXY_TELEMETRY_ARGS[*]}   # dsproxy-w2"
    echo "dsproxy run --config dsproxy-cluster.yaml --node $BENCH_NODE_NAME --workers 1 ${DSPROXY_TELEMETRY_ARGS[*]} $(_dsproxy_forward_args)   # dsproxy-explicit"
    echo "haproxy -f haproxy-splice.cfg -db    # after dsproxy redirect install --outbound-port $HAPROXY_PORT --inbound-port 15106"
    echo "haproxy -f haproxy.cfg -db           # idem"
    echo "nginx -c nginx.conf -e <log>          # after nginx-capture.sh"
  } >"$dir/commands.txt"
}

# HAProxy: one frontend per family on the capture port, bound transparent so the TPROXY rules
# can deliver to it; a server without a port connects to the port the client dialled; `source
# ... usesrc clientip` keeps the client's address, as dsproxy does. maxconn is sized to the
# descriptor limit (two sockets per proxied connection).
_haproxy_config() {
  local splice=$1 maxpipes
  # HAProxy counts two descriptors per pipe against the limit: keep the pipes within what the
  # connections leave (a bulk test needs one pipe per direction per stream, 16 at most).
  maxpipes=$(((BENCH_FD_LIMIT - 2 * BENCH_PEER_MAXCONN - 200) / 2))
  ((maxpipes > BENCH_PEER_MAXCONN / 4)) && maxpipes=$((BENCH_PEER_MAXCONN / 4))
  ((maxpipes < 16)) && maxpipes=16
  cat <<EOF
global
    nbthread 1
    maxconn $BENCH_PEER_MAXCONN
EOF
  [[ $splice == splice ]] && echo "    maxpipes $maxpipes"
  cat <<EOF
    # no logging: neither dsproxy (run with --access-log off --metrics-port 0) nor nginx (error log only) logs traffic

defaults
    mode tcp
    maxconn $BENCH_PEER_MAXCONN
    timeout connect 10s
    timeout client 1h
    timeout server 1h
EOF
  if [[ $splice == splice ]]; then
    echo "    option splice-request"
    echo "    option splice-response"
  fi
  cat <<EOF

frontend capture_v4
    bind 0.0.0.0:$HAPROXY_PORT transparent
    default_backend pod_v4

frontend capture_v6
    bind :::$HAPROXY_PORT v6only transparent
    default_backend pod_v6

backend pod_v4
    source 0.0.0.0 usesrc clientip
    server pod $SERVER_IP4

backend pod_v6
    source [::] usesrc clientip
    server pod [$SERVER_IP6]
EOF
}

_nginx_config() {
  local tmp=$1
  cat <<EOF
user root;
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx.error.log warn;
worker_rlimit_nofile $BENCH_FD_LIMIT;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;

events {
    worker_connections $((2 * BENCH_PEER_MAXCONN + 64));
}

stream {
    proxy_connect_timeout 10s;
    proxy_timeout 1h;
    # The client's own address as the source, as dsproxy and HAProxy (usesrc clientip) do.
    proxy_bind \$remote_addr transparent;

    server { listen 0.0.0.0:$NGINX_ECHO_PORT;               proxy_pass $SERVER_IP4:$ECHO_PORT; }
    server { listen [::]:$NGINX_ECHO_PORT ipv6only=on;      proxy_pass [$SERVER_IP6]:$ECHO_PORT; }
    server { listen 0.0.0.0:$NGINX_IPERF_PORT;              proxy_pass $SERVER_IP4:$IPERF_PORT; }
    server { listen [::]:$NGINX_IPERF_PORT ipv6only=on;     proxy_pass [$SERVER_IP6]:$IPERF_PORT; }
}
EOF
}

# nginx's capture: the client's connections to the server pod are REDIRECTed (nat) to nginx's
# ports; the server's answers to nginx's transparent upstream sockets are diverted to the local
# stack by -m socket --transparent and a policy route, as in dsproxy's rules. Conntrack's
# TIME_WAIT timeout is shortened in the node namespace so the nat table cannot fill up during
# the connection-rate tests.
_nginx_rules_script() {
  local f ipt src dst
  for f in 4 6; do
    if [[ $f == 4 ]]; then ipt=iptables src=$CLIENT_IP4 dst=$SERVER_IP4; else ipt=ip6tables src=$CLIENT_IP6 dst=$SERVER_IP6; fi
    echo "$ipt -w -t nat -A PREROUTING -s $src -d $dst -p tcp --dport $ECHO_PORT -j REDIRECT --to-ports $NGINX_ECHO_PORT"
    echo "$ipt -w -t nat -A PREROUTING -s $src -d $dst -p tcp --dport $IPERF_PORT -j REDIRECT --to-ports $NGINX_IPERF_PORT"
    echo "$ipt -w -t mangle -N BENCH_DIVERT"
    echo "$ipt -w -t mangle -A BENCH_DIVERT -j MARK --set-xmark $NGINX_MARK/$NGINX_MARK"
    echo "$ipt -w -t mangle -A BENCH_DIVERT -j ACCEPT"
    echo "$ipt -w -t mangle -A PREROUTING -p tcp -m socket --transparent -j BENCH_DIVERT"
    echo "ip -$f rule add fwmark $NGINX_MARK/$NGINX_MARK lookup $NGINX_TABLE pref $NGINX_RULE_PREF"
    if [[ $f == 4 ]]; then
      echo "ip -4 route add local 0.0.0.0/0 dev lo table $NGINX_TABLE"
    else
      echo "ip -6 route add local ::/0 dev lo table $NGINX_TABLE"
    fi
  done
  echo "sysctl -q -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=5"
}

# Waits (bounded) until a TCP listener on port $1 exists in the node namespace.
_wait_node_listen() {
  local port=$1 i
  for ((i = 0; i < 100; i++)); do
    in_node ss -Hltn "sport = :$port" 2>/dev/null | grep -q LISTEN && return 0
    sleep 0.05
  done
  return 1
}

# HTTP GET on the node's loopback without curl; prints the raw response.
node_http_get() {
  # shellcheck disable=SC2016
  in_node timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
    cat <&3' _ "$1" "$2" 2>/dev/null
}

# dsproxy's counters as one JSON object (the body of GET /stats), or {} when unavailable.
dsproxy_stats_json() {
  local body
  body=$(node_http_get 15000 /stats | sed '1,/^\r\?$/d')
  if [[ $body == \{* ]]; then echo "$body" | tr -d '\r\n'; else echo '{}'; fi
}

# The --forward options of dsproxy-explicit: a listener on the node's own address on the
# client's link per family and measured port, each forwarding to the server pod's same port.
_dsproxy_forward_args() {
  local port
  for port in "$ECHO_PORT" "$IPERF_PORT"; do
    printf -- '--forward %s:%s=%s:%s ' "$NODE_GW_CLIENT4" "$port" "$SERVER_IP4" "$port"
    printf -- '--forward [%s]:%s=[%s]:%s ' "$NODE_IP6" "$port" "$SERVER_IP6" "$port"
  done
}

# _start_dsproxy WORKERS ARGS...: dsproxy run with ARGS (--redirect, or --forward ...).
_start_dsproxy() {
  local workers=$1 i
  shift
  # Started with ip netns exec, not in_node: $! of a backgrounded function is a subshell's pid,
  # while ip netns exec execs the program, so $! is the proxy's own pid.
  ip netns exec "$(ns_node)" "$DSPROXY_BIN" run --config "$BENCH_CONFIG_DIR/dsproxy-cluster.yaml" --node "$BENCH_NODE_NAME" \
    --workers "$workers" "${DSPROXY_TELEMETRY_ARGS[@]}" "$@" >>"$BENCH_TMP/dsproxy.log" 2>&1 &
  PEER_MAIN_PID=$!
  PEER_PIDS=("$PEER_MAIN_PID")
  for ((i = 0; i < 100; i++)); do
    kill -0 "$PEER_MAIN_PID" 2>/dev/null || {
      PEER_ERROR="dsproxy exited at start (log $BENCH_TMP/dsproxy.log)"
      return 1
    }
    [[ $(node_http_get 15021 /healthz/ready | head -n 1) == "HTTP/1."?" 200"* ]] && return 0
    sleep 0.1
  done
  PEER_ERROR="dsproxy not ready after 10 s"
  return 1
}

# dsproxy-explicit: ready, and listening on both forwarded ports.
_start_dsproxy_explicit() {
  local -a forwards
  read -r -a forwards <<<"$(_dsproxy_forward_args)"
  _start_dsproxy 1 "${forwards[@]}" || return 1
  if ! _wait_node_listen "$ECHO_PORT" || ! _wait_node_listen "$IPERF_PORT"; then
    PEER_ERROR="dsproxy --forward did not listen on :$ECHO_PORT and :$IPERF_PORT (log $BENCH_TMP/dsproxy.log)"
    return 1
  fi
}

_start_haproxy() {
  local variant=$1 cfg
  cfg="$BENCH_CONFIG_DIR/$variant.cfg"
  in_node "$DSPROXY_BIN" redirect install --config "$BENCH_CONFIG_DIR/dsproxy-cluster.yaml" \
    --node "$BENCH_NODE_NAME" --outbound-port "$HAPROXY_PORT" --inbound-port 15106 \
    >>"$BENCH_TMP/haproxy.log" 2>&1 || {
    PEER_ERROR="dsproxy redirect install for HAProxy failed"
    return 1
  }
  ip netns exec "$(ns_node)" haproxy -f "$cfg" -db >>"$BENCH_TMP/haproxy.log" 2>&1 &
  PEER_MAIN_PID=$!
  PEER_PIDS=("$PEER_MAIN_PID")
  _wait_node_listen "$HAPROXY_PORT" || {
    PEER_ERROR="haproxy did not listen (log $BENCH_TMP/haproxy.log)"
    return 1
  }
}

_start_nginx() {
  local i line
  while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] && continue
    # shellcheck disable=SC2086 # the generated lines are plain words
    in_node $line >>"$BENCH_TMP/nginx.log" 2>&1 || {
      PEER_ERROR="nginx capture rule failed: $line"
      return 1
    }
  done < <(_nginx_rules_script)
  rm -f "$BENCH_TMP/nginx.pid"
  ip netns exec "$(ns_node)" nginx -c "$BENCH_CONFIG_DIR/nginx.conf" -e "$BENCH_TMP/nginx.error.log" >>"$BENCH_TMP/nginx.log" 2>&1 &
  local master=$!
  PEER_PIDS=("$master")
  _wait_node_listen "$NGINX_ECHO_PORT" || {
    PEER_ERROR="nginx did not listen (log $BENCH_TMP/nginx.error.log)"
    return 1
  }
  for ((i = 0; i < 50; i++)); do
    PEER_MAIN_PID=$(pgrep -P "$master" | head -n 1)
    [[ -n $PEER_MAIN_PID ]] && break
    sleep 0.05
  done
  [[ -n $PEER_MAIN_PID ]] || {
    PEER_ERROR="nginx started no worker"
    return 1
  }
  PEER_PIDS+=("$PEER_MAIN_PID")
}

# peer_start NAME: starts the peer in the node namespace (built by topo_up). Returns non-zero
# with PEER_ERROR set when it could not be started.
peer_start() {
  PEER_PIDS=()
  PEER_MAIN_PID=
  PEER_ERROR=
  PEER_LOG_NAME=${1%%-*}
  PEER_DST4=$SERVER_IP4
  PEER_DST6=$SERVER_IP6
  case $1 in
    direct) return 0 ;;
    dsproxy) _start_dsproxy 1 --redirect ;;
    dsproxy-w2) _start_dsproxy 2 --redirect ;;
    dsproxy-svc)
      PEER_DST4=$VIP4
      PEER_DST6=$VIP6
      _start_dsproxy 1 --redirect
      ;;
    dsproxy-explicit)
      PEER_DST4=$NODE_GW_CLIENT4
      PEER_DST6=$NODE_IP6
      _start_dsproxy_explicit
      ;;
    haproxy-splice) _start_haproxy haproxy-splice ;;
    haproxy) _start_haproxy haproxy ;;
    nginx) _start_nginx ;;
    *)
      PEER_ERROR="unknown peer $1"
      return 1
      ;;
  esac
}

# The client-side port for destination port $2 of peer $1 (nginx redirects per port, but the
# client still dials the server's own port: the redirect is invisible to it).
peer_port() { echo "$2"; }

# Stops the peer's processes (SIGTERM, bounded wait, SIGKILL). The namespace, with every rule
# the peer added, is deleted by topo_down afterwards.
peer_stop() {
  local pid i
  for pid in "${PEER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for ((i = 0; i < 80; i++)); do
    local alive=0
    for pid in "${PEER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PEER_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for pid in "${PEER_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  PEER_PIDS=()
  PEER_MAIN_PID=
}
