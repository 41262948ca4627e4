# Capture for dsproxy (its own --redirect) and for HAProxy (the same rules, other port):
# dsproxy redirect print --config dsproxy-cluster.yaml --node bench-node [--outbound-port 15101]
#!/bin/sh
# dsproxy transparent redirect: what `dsproxy redirect install` applies, as a shell script.
# Node pod addresses: 1 IPv4, 1 IPv6.
# TCP from node pods -> :15001 (outbound), TCP to node pods from elsewhere -> :15006 (inbound).
# Capture mark 0x1000/0x1000 routes to lo via table 133 (rule pref 32000); the proxy's own sockets
# carry 0x539/0xfff and pass untouched.
# DNS (UDP and TCP port 53) from node pods -> :15053 (the DNS proxy).
# Sysctls are left alone (forwarding is on on any Kubernetes node); the kernel modules
# xt_TPROXY, xt_socket, xt_mark and xt_addrtype are loaded on first use.
set -e

# ---- IPv4: 1 node pod address ----
# Policy routing: packets with the capture mark are delivered locally, to the proxy.
ip -4 rule show pref 32000 | grep -q . || ip -4 rule add fwmark 0x1000/0x1000 lookup 133 pref 32000
ip -4 route replace local 0.0.0.0/0 dev lo table 133
# The chains, replaced atomically (":CHAIN - [0:0]" flushes an existing chain under --noflush).
iptables-restore -w --noflush <<'EOF'
*mangle
:DSPROXY_PREROUTING - [0:0]
:DSPROXY_DIVERT - [0:0]
:DSPROXY_OUTBOUND - [0:0]
:DSPROXY_INBOUND - [0:0]
:DSPROXY_DNS - [0:0]
-A DSPROXY_PREROUTING -m mark --mark 0x539/0xfff -j RETURN
-A DSPROXY_PREROUTING -p tcp -m socket --transparent -j DSPROXY_DIVERT
-A DSPROXY_PREROUTING -p udp -m udp --dport 53 -j DSPROXY_DNS
-A DSPROXY_PREROUTING -p tcp -m tcp --dport 53 -j DSPROXY_DNS
-A DSPROXY_PREROUTING -p tcp -m addrtype --dst-type LOCAL -j RETURN
-A DSPROXY_PREROUTING -p tcp -j DSPROXY_OUTBOUND
-A DSPROXY_PREROUTING -p tcp -j DSPROXY_INBOUND
-A DSPROXY_DIVERT -j MARK --set-xmark 0x1000/0x1000
-A DSPROXY_DIVERT -j ACCEPT
-A DSPROXY_OUTBOUND -s 10.244.0.10/32 -p tcp -j TPROXY --on-port 15001 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
-A DSPROXY_INBOUND -d 10.244.0.10/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -s 10.244.0.10/32 -p udp -m udp --dport 53 -j TPROXY --on-port 15053 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -s 10.244.0.10/32 -p tcp -m tcp --dport 53 -j TPROXY --on-port 15053 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
COMMIT
EOF
# Capture starts with the jump from PREROUTING, added once.
iptables -w -t mangle -C PREROUTING -j DSPROXY_PREROUTING 2>/dev/null || iptables -w -t mangle -I PREROUTING 1 -j DSPROXY_PREROUTING

# ---- IPv6: 1 node pod address ----
# Policy routing: packets with the capture mark are delivered locally, to the proxy.
ip -6 rule show pref 32000 | grep -q . || ip -6 rule add fwmark 0x1000/0x1000 lookup 133 pref 32000
ip -6 route replace local ::/0 dev lo table 133
# The chains, replaced atomically (":CHAIN - [0:0]" flushes an existing chain under --noflush).
ip6tables-restore -w --noflush <<'EOF'
*mangle
:DSPROXY_PREROUTING - [0:0]
:DSPROXY_DIVERT - [0:0]
:DSPROXY_OUTBOUND - [0:0]
:DSPROXY_INBOUND - [0:0]
:DSPROXY_DNS - [0:0]
-A DSPROXY_PREROUTING -m mark --mark 0x539/0xfff -j RETURN
-A DSPROXY_PREROUTING -p tcp -m socket --transparent -j DSPROXY_DIVERT
-A DSPROXY_PREROUTING -p udp -m udp --dport 53 -j DSPROXY_DNS
-A DSPROXY_PREROUTING -p tcp -m tcp --dport 53 -j DSPROXY_DNS
-A DSPROXY_PREROUTING -p tcp -m addrtype --dst-type LOCAL -j RETURN
-A DSPROXY_PREROUTING -p tcp -j DSPROXY_OUTBOUND
-A DSPROXY_PREROUTING -p tcp -j DSPROXY_INBOUND
-A DSPROXY_DIVERT -j MARK --set-xmark 0x1000/0x1000
-A DSPROXY_DIVERT -j ACCEPT
-A DSPROXY_OUTBOUND -s fd00:10:244::a/128 -p tcp -j TPROXY --on-port 15001 --on-ip :: --tproxy-mark 0x1000/0x1000
-A DSPROXY_INBOUND -d fd00:10:244::a/128 -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -s fd00:10:244::a/128 -p udp -m udp --dport 53 -j TPROXY --on-port 15053 --on-ip :: --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -s fd00:10:244::a/128 -p tcp -m tcp --dport 53 -j TPROXY --on-port 15053 --on-ip :: --tproxy-mark 0x1000/0x1000
COMMIT
EOF
# Capture starts with the jump from PREROUTING, added once.
ip6tables -w -t mangle -C PREROUTING -j DSPROXY_PREROUTING 2>/dev/null || ip6tables -w -t mangle -I PREROUTING 1 -j DSPROXY_PREROUTING

# ---- To remove everything (`dsproxy redirect uninstall`), for each family: ----
# while iptables -w -t mangle -D PREROUTING -j DSPROXY_PREROUTING 2>/dev/null; do :; done
# iptables-restore -w --noflush <<'EOF'
#   *mangle
#   :DSPROXY_PREROUTING - [0:0]
#   :DSPROXY_DIVERT - [0:0]
#   :DSPROXY_OUTBOUND - [0:0]
#   :DSPROXY_INBOUND - [0:0]
#   :DSPROXY_DNS - [0:0]
#   -X DSPROXY_PREROUTING
#   -X DSPROXY_DIVERT
#   -X DSPROXY_OUTBOUND
#   -X DSPROXY_INBOUND
#   -X DSPROXY_DNS
#   COMMIT
# EOF
# while ip -4 rule del pref 32000 2>/dev/null; do :; done
# ip -4 route flush table 133
# while ip6tables -w -t mangle -D PREROUTING -j DSPROXY_PREROUTING 2>/dev/null; do :; done
# ip6tables-restore -w --noflush <<'EOF'
#   *mangle
#   :DSPROXY_PREROUTING - [0:0]
#   :DSPROXY_DIVERT - [0:0]
#   :DSPROXY_OUTBOUND - [0:0]
#   :DSPROXY_INBOUND - [0:0]
#   :DSPROXY_DNS - [0:0]
#   -X DSPROXY_PREROUTING
#   -X DSPROXY_DIVERT
#   -X DSPROXY_OUTBOUND
#   -X DSPROXY_INBOUND
#   -X DSPROXY_DNS
#   COMMIT
# EOF
# while ip -6 rule del pref 32000 2>/dev/null; do :; done
# ip -6 route flush table 133

# ---- Refusals: ClusterIP ports with no servable endpoint answer SYN with a TCP reset ----
iptables-restore -w --noflush <<'EOF'
*filter
:DSPROXY_REFUSE - [0:0]
-A DSPROXY_REFUSE -p tcp -m tcp --dport 53 -j RETURN
-A DSPROXY_REFUSE -d 10.96.0.10/32 -p tcp -m tcp --dport 5201 -j RETURN
-A DSPROXY_REFUSE -d 10.96.0.10/32 -p tcp -m tcp --dport 7000 -j RETURN
-A DSPROXY_REFUSE -d 10.96.0.10/32 -p tcp -j REJECT --reject-with tcp-reset
COMMIT
EOF
iptables -w -t filter -C INPUT -p tcp -m tcp --syn -j DSPROXY_REFUSE 2>/dev/null || iptables -w -t filter -I INPUT 1 -p tcp -m tcp --syn -j DSPROXY_REFUSE
ip6tables-restore -w --noflush <<'EOF'
*filter
:DSPROXY_REFUSE - [0:0]
-A DSPROXY_REFUSE -p tcp -m tcp --dport 53 -j RETURN
-A DSPROXY_REFUSE -d fd00:10:96::a/128 -p tcp -m tcp --dport 5201 -j RETURN
-A DSPROXY_REFUSE -d fd00:10:96::a/128 -p tcp -m tcp --dport 7000 -j RETURN
-A DSPROXY_REFUSE -d fd00:10:96::a/128 -p tcp -j REJECT --reject-with tcp-reset
COMMIT
EOF
ip6tables -w -t filter -C INPUT -p tcp -m tcp --syn -j DSPROXY_REFUSE 2>/dev/null || ip6tables -w -t filter -I INPUT 1 -p tcp -m tcp --syn -j DSPROXY_REFUSE
