# Capture for nginx, in the node namespace (its stream listen sockets cannot be IP_TRANSPARENT)
iptables -w -t nat -A PREROUTING -s 10.244.0.10 -d 10.244.1.20 -p tcp --dport 7000 -j REDIRECT --to-ports 27000
iptables -w -t nat -A PREROUTING -s 10.244.0.10 -d 10.244.1.20 -p tcp --dport 5201 -j REDIRECT --to-ports 25201
iptables -w -t mangle -N BENCH_DIVERT
iptables -w -t mangle -A BENCH_DIVERT -j MARK --set-xmark 0x2000/0x2000
iptables -w -t mangle -A BENCH_DIVERT -j ACCEPT
iptables -w -t mangle -A PREROUTING -p tcp -m socket --transparent -j BENCH_DIVERT
ip -4 rule add fwmark 0x2000/0x2000 lookup 134 pref 32100
ip -4 route add local 0.0.0.0/0 dev lo table 134
ip6tables -w -t nat -A PREROUTING -s fd00:10:244::a -d fd00:10:244:1::14 -p tcp --dport 7000 -j REDIRECT --to-ports 27000
ip6tables -w -t nat -A PREROUTING -s fd00:10:244::a -d fd00:10:244:1::14 -p tcp --dport 5201 -j REDIRECT --to-ports 25201
ip6tables -w -t mangle -N BENCH_DIVERT
ip6tables -w -t mangle -A BENCH_DIVERT -j MARK --set-xmark 0x2000/0x2000
ip6tables -w -t mangle -A BENCH_DIVERT -j ACCEPT
ip6tables -w -t mangle -A PREROUTING -p tcp -m socket --transparent -j BENCH_DIVERT
ip -6 rule add fwmark 0x2000/0x2000 lookup 134 pref 32100
ip -6 route add local ::/0 dev lo table 134
sysctl -q -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=5
