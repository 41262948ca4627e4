#!/bin/sh
# dsproxy transparent redirect: what `dsproxy redirect install` applies, as a shell script.
# Node pod addresses: 2 IPv4, 2 IPv6.
# TCP from node pods -> :15001 (outbound), TCP to node pods from elsewhere -> :15006 (inbound).
# Capture mark 0x1000/0x1000 routes to lo via table 133 (rule pref 32000); the proxy's own sockets
# carry 0x539/0xfff and pass untouched.
# DNS (UDP and TCP port 53) from node pods -> :15053 (the DNS proxy).
# Sysctls are left alone (forwarding is on on any Kubernetes node); the kernel modules
# xt_TPROXY, xt_socket, xt_mark, xt_addrtype and xt_set are loaded on first use.
set -e

# ---- IPv4: 2 node pod addresses ----
# Policy routing: packets with the capture mark are delivered locally, to the proxy.
ip -4 rule show pref 32000 | grep -q . || ip -4 rule add fwmark 0x1000/0x1000 lookup 133 pref 32000
ip -4 route replace local 0.0.0.0/0 dev lo table 133
# The node's pod addresses, in the set the rules match (filled aside, then swapped in).
ipset -exist restore <<'EOF'
create DSPROXY_PODS4 hash:ip family inet hashsize 1024 maxelem 1048576
create DSPROXY_PODS4_NEXT hash:ip family inet hashsize 1024 maxelem 1048576
flush DSPROXY_PODS4_NEXT
add DSPROXY_PODS4_NEXT 10.244.0.12
add DSPROXY_PODS4_NEXT 10.244.0.5
swap DSPROXY_PODS4_NEXT DSPROXY_PODS4
destroy DSPROXY_PODS4_NEXT
EOF
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
-A DSPROXY_OUTBOUND -p tcp -m set --match-set DSPROXY_PODS4 src -j TPROXY --on-port 15001 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
-A DSPROXY_INBOUND -p tcp -m set --match-set DSPROXY_PODS4 dst -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -p udp -m udp --dport 53 -m set --match-set DSPROXY_PODS4 src -j TPROXY --on-port 15053 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -p tcp -m tcp --dport 53 -m set --match-set DSPROXY_PODS4 src -j TPROXY --on-port 15053 --on-ip 0.0.0.0 --tproxy-mark 0x1000/0x1000
COMMIT
EOF
# Capture starts with the jump from PREROUTING, added once.
iptables -w -t mangle -C PREROUTING -j DSPROXY_PREROUTING 2>/dev/null || iptables -w -t mangle -I PREROUTING 1 -j DSPROXY_PREROUTING

# ---- IPv6: 2 node pod addresses ----
# Policy routing: packets with the capture mark are delivered locally, to the proxy.
ip -6 rule show pref 32000 | grep -q . || ip -6 rule add fwmark 0x1000/0x1000 lookup 133 pref 32000
ip -6 route replace local ::/0 dev lo table 133
# The node's pod addresses, in the set the rules match (filled aside, then swapped in).
ipset -exist restore <<'EOF'
create DSPROXY_PODS6 hash:ip family inet6 hashsize 1024 maxelem 1048576
create DSPROXY_PODS6_NEXT hash:ip family inet6 hashsize 1024 maxelem 1048576
flush DSPROXY_PODS6_NEXT
add DSPROXY_PODS6_NEXT fd00:10:244::1a
add DSPROXY_PODS6_NEXT fd00:10:244::5
swap DSPROXY_PODS6_NEXT DSPROXY_PODS6
destroy DSPROXY_PODS6_NEXT
EOF
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
-A DSPROXY_OUTBOUND -p tcp -m set --match-set DSPROXY_PODS6 src -j TPROXY --on-port 15001 --on-ip :: --tproxy-mark 0x1000/0x1000
-A DSPROXY_INBOUND -p tcp -m set --match-set DSPROXY_PODS6 dst -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -p udp -m udp --dport 53 -m set --match-set DSPROXY_PODS6 src -j TPROXY --on-port 15053 --on-ip :: --tproxy-mark 0x1000/0x1000
-A DSPROXY_DNS -p tcp -m tcp --dport 53 -m set --match-set DSPROXY_PODS6 src -j TPROXY --on-port 15053 --on-ip :: --tproxy-mark 0x1000/0x1000
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
# ipset destroy DSPROXY_PODS4
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
# ipset destroy DSPROXY_PODS6
