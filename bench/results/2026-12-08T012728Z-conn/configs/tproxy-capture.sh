# Capture for dsproxy (its own --redirect) and for HAProxy (the same rules, other port):
# dsproxy redirect print --config dsproxy-cluster.yaml --node bench-node [--outbound-port 15101]
2026-12-08T01:27:28.232Z info iptables backend: nft (auto: no kubelet hint chain and 0 rules in either backend: nf_tables, the distributions' default; iptables-nft-restore and ip6tables-nft-restore)
#!/bin/sh
# dsproxy transparent redirect: what `dsproxy redirect install` applies, as a shell script.
# Node pod addresses: 1 IPv4, 1 IPv6.
# TCP from node pods -> :15001 (outbound), TCP to node pods from elsewhere -> :15006 (inbound).
# Capture mark 0x1000/0x1000 routes to lo via table 133 (rule pref 32000); the proxy's own sockets
# carry 0x539/0xfff and pass untouched.
# DNS (UDP and TCP port 53) from node pods -> :15053 (the DNS proxy).
# Sysctls are left alone (forwarding is on on any Kubernetes node); the kernel modules
# xt_TPROXY, xt_socket, xt_mark, xt_addrtype and xt_set are loaded on first use.
set -e

# ---- IPv4: 1 node pod address ----
# Policy routing: packets with the capture mark are delivered locally, to the proxy.
ip -4 rule show pref 32000 | grep -q . || ip -4 rule add fwmark 0x1000/0x1000 lookup 133 pref 32000
ip -4 route replace local 0.0.0.0/0 dev lo table 133
# The node's pod addresses, in the set the rules match (filled aside, then swapped in).
ipset -exist restore <<'EOF'
create DSPROXY_PODS4 hash:ip family inet hashsize 1024 maxelem 1048576
create DSPROXY_PODS4_NEXT hash:ip family inet hashsize 1024 maxelem 1048576
flush DSPROXY_PODS4_NEXT
add DSPROXY_PODS4_NEXT 10.244.0.10
swap DSPROXY_PODS4_NEXT DSPROXY_PODS4
destroy DSPROXY_PODS4_NEXT
EOF
# The chains, replaced atomically (":CHAIN - [0:0]" flushes an existing chain under --noflush).
iptables-nft-restore -w --noflush <<'EOF'
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
iptables-nft -w -t mangle -C PREROUTING -j DSPROXY_PREROUTING 2>/dev/null || iptables-nft -w -t mangle -I PREROUTING 1 -j DSPROXY_PREROUTING

# ---- IPv6: 1 node pod address ----
# Policy routing: packets with the capture mark are delivered locally, to the proxy.
ip -6 rule show pref 32000 | grep -q . || ip -6 rule add fwmark 0x1000/0x1000 lookup 133 pref 32000
ip -6 route replace local ::/0 dev lo table 133
# The node's pod addresses, in the set the rules match (filled aside, then swapped in).
ipset -exist restore <<'EOF'
create DSPROXY_PODS6 hash:ip family inet6 hashsize 1024 maxelem 1048576
create DSPROXY_PODS6_NEXT hash:ip family inet6 hashsize 1024 maxelem 1048576
flush DSPROXY_PODS6_NEXT
add DSPROXY_PODS6_NEXT fd00:10:244::a
swap DSPROXY_PODS6_NEXT DSPROXY_PODS6
destroy DSPROXY_PODS6_NEXT
EOF
# The chains, replaced atomically (":CHAIN - [0:0]" flushes an existing chain under --noflush).
ip6tables-nft-restore -w --noflush <<'EOF'
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
ip6tables-nft -w -t mangle -C PREROUTING -j DSPROXY_PREROUTING 2>/dev/null || ip6tables-nft -w -t mangle -I PREROUTING 1 -j DSPROXY_PREROUTING

# ---- To remove everything (`dsproxy redirect uninstall`), for each family: ----
# while iptables-nft -w -t mangle -D PREROUTING -j DSPROXY_PREROUTING 2>/dev/null; do :; done
# iptables-nft-restore -w --noflush <<'EOF'
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
# while ip6tables-nft -w -t mangle -D PREROUTING -j DSPROXY_PREROUTING 2>/dev/null; do :; done
# ip6tables-nft-restore -w --noflush <<'EOF'
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

# ---- ClusterIPs: ports with no servable endpoint answer SYN with a TCP reset; captured ----
# ---- ClusterIP traffic is untracked, so kube-proxy's DNAT never rewrites it            ----
ipset -exist restore <<'EOF'
create DSPROXY_PODS4 hash:ip family inet hashsize 1024 maxelem 1048576
create DSPROXY_OPEN4 hash:ip,port family inet hashsize 1024 maxelem 1048576
create DSPROXY_OPEN4_NEXT hash:ip,port family inet hashsize 1024 maxelem 1048576
flush DSPROXY_OPEN4_NEXT
add DSPROXY_OPEN4_NEXT 10.96.0.10,tcp:5201
add DSPROXY_OPEN4_NEXT 10.96.0.10,tcp:7000
swap DSPROXY_OPEN4_NEXT DSPROXY_OPEN4
destroy DSPROXY_OPEN4_NEXT
create DSPROXY_VIPS4 hash:ip family inet hashsize 1024 maxelem 1048576
create DSPROXY_VIPS4_NEXT hash:ip family inet hashsize 1024 maxelem 1048576
flush DSPROXY_VIPS4_NEXT
add DSPROXY_VIPS4_NEXT 10.96.0.10
swap DSPROXY_VIPS4_NEXT DSPROXY_VIPS4
destroy DSPROXY_VIPS4_NEXT
create DSPROXY_PODS6 hash:ip family inet6 hashsize 1024 maxelem 1048576
create DSPROXY_OPEN6 hash:ip,port family inet6 hashsize 1024 maxelem 1048576
create DSPROXY_OPEN6_NEXT hash:ip,port family inet6 hashsize 1024 maxelem 1048576
flush DSPROXY_OPEN6_NEXT
add DSPROXY_OPEN6_NEXT fd00:10:96::a,tcp:5201
add DSPROXY_OPEN6_NEXT fd00:10:96::a,tcp:7000
swap DSPROXY_OPEN6_NEXT DSPROXY_OPEN6
destroy DSPROXY_OPEN6_NEXT
create DSPROXY_VIPS6 hash:ip family inet6 hashsize 1024 maxelem 1048576
create DSPROXY_VIPS6_NEXT hash:ip family inet6 hashsize 1024 maxelem 1048576
flush DSPROXY_VIPS6_NEXT
add DSPROXY_VIPS6_NEXT fd00:10:96::a
swap DSPROXY_VIPS6_NEXT DSPROXY_VIPS6
destroy DSPROXY_VIPS6_NEXT
EOF
iptables-nft-restore -w --noflush <<'EOF'
*filter
:DSPROXY_REFUSE - [0:0]
-A DSPROXY_REFUSE -p tcp -m tcp --dport 53 -j RETURN
-A DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_OPEN4 dst,dst -j RETURN
-A DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_VIPS4 dst -j REJECT --reject-with tcp-reset
COMMIT
*raw
:DSPROXY_NOTRACK - [0:0]
-A DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_PODS4 src -m set --match-set DSPROXY_VIPS4 dst -j CT --notrack
-A DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_VIPS4 src -m set --match-set DSPROXY_PODS4 dst -j CT --notrack
-A DSPROXY_NOTRACK -p udp -m udp --dport 53 -m set --match-set DSPROXY_PODS4 src -m set --match-set DSPROXY_VIPS4 dst -j CT --notrack
-A DSPROXY_NOTRACK -p udp -m udp --sport 53 -m set --match-set DSPROXY_VIPS4 src -m set --match-set DSPROXY_PODS4 dst -j CT --notrack
COMMIT
EOF
iptables-nft -w -t filter -C INPUT -p tcp -m tcp --syn -j DSPROXY_REFUSE 2>/dev/null || iptables-nft -w -t filter -I INPUT 1 -p tcp -m tcp --syn -j DSPROXY_REFUSE
iptables-nft -w -t raw -C PREROUTING -j DSPROXY_NOTRACK 2>/dev/null || iptables-nft -w -t raw -I PREROUTING 1 -j DSPROXY_NOTRACK
iptables-nft -w -t raw -C OUTPUT -j DSPROXY_NOTRACK 2>/dev/null || iptables-nft -w -t raw -I OUTPUT 1 -j DSPROXY_NOTRACK
ip6tables-nft-restore -w --noflush <<'EOF'
*filter
:DSPROXY_REFUSE - [0:0]
-A DSPROXY_REFUSE -p tcp -m tcp --dport 53 -j RETURN
-A DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_OPEN6 dst,dst -j RETURN
-A DSPROXY_REFUSE -p tcp -m set --match-set DSPROXY_VIPS6 dst -j REJECT --reject-with tcp-reset
COMMIT
*raw
:DSPROXY_NOTRACK - [0:0]
-A DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_PODS6 src -m set --match-set DSPROXY_VIPS6 dst -j CT --notrack
-A DSPROXY_NOTRACK -p tcp -m set --match-set DSPROXY_VIPS6 src -m set --match-set DSPROXY_PODS6 dst -j CT --notrack
-A DSPROXY_NOTRACK -p udp -m udp --dport 53 -m set --match-set DSPROXY_PODS6 src -m set --match-set DSPROXY_VIPS6 dst -j CT --notrack
-A DSPROXY_NOTRACK -p udp -m udp --sport 53 -m set --match-set DSPROXY_VIPS6 src -m set --match-set DSPROXY_PODS6 dst -j CT --notrack
COMMIT
EOF
ip6tables-nft -w -t filter -C INPUT -p tcp -m tcp --syn -j DSPROXY_REFUSE 2>/dev/null || ip6tables-nft -w -t filter -I INPUT 1 -p tcp -m tcp --syn -j DSPROXY_REFUSE
ip6tables-nft -w -t raw -C PREROUTING -j DSPROXY_NOTRACK 2>/dev/null || ip6tables-nft -w -t raw -I PREROUTING 1 -j DSPROXY_NOTRACK
ip6tables-nft -w -t raw -C OUTPUT -j DSPROXY_NOTRACK 2>/dev/null || ip6tables-nft -w -t raw -I OUTPUT 1 -j DSPROXY_NOTRACK
