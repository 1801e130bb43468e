/* SPDX-License-Identifier: GPL-2.0 */
/*
 * packet.h: reading the headers of a packet that a cgroup_skb/ingress
 * program sees (the kernel hands it over from the network header on), for
 * the tracer's DNS capture and for enforcement's inbound checks and DNS
 * grants. Reads go through bpf_skb_load_bytes: nothing depends on the
 * packet being linear.
 */
#ifndef CONNGUARD_PACKET_H
#define CONNGUARD_PACKET_H

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define DNS_PORT 53

/* A TCP or UDP packet's addresses and ports (host byte order), and where
 * its transport header starts. */
struct packet {
    __u8 saddr[16]; /* the sender (the remote end), IPv4 mapped (::ffff:a.b.c.d) */
    __u8 daddr[16]; /* local */
    __u16 sport;
    __u16 dport;
    __u16 family;
    __u8 proto;     /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 pad;
    __u32 l4_offset;
};

/* Offset of the TCP or UDP header in an IPv6 packet, past the extension
 * headers the stack leaves in place (*proto says which); -1 if neither, -2
 * if not found within a few headers. */
static __always_inline int ipv6_l4_offset(struct __sk_buff *skb, __u8 nexthdr, __u8 *proto)
{
    int off = 40;

    for (int i = 0; i < 4; i++) {
        __u8 h[2];

        if (nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_UDP) {
            *proto = nexthdr;
            return off;
        }
        if (nexthdr != 0 && nexthdr != 43 && nexthdr != 60 && nexthdr != 44 && nexthdr != 51)
            return -1; /* another protocol: not ours */
        if (bpf_skb_load_bytes(skb, off, h, 2))
            return -2;
        if (nexthdr == 44)
            off += 8;
        else if (nexthdr == 51)
            off += (h[1] + 2) * 4;
        else
            off += (h[1] + 1) * 8;
        nexthdr = h[0];
    }
    if (nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_UDP) {
        *proto = nexthdr;
        return off;
    }
    return -2;
}

/* Fills *p for a TCP or UDP packet. 1: it is one; 0: another protocol;
 * -1: could not be parsed. */
static __always_inline int packet_parse(struct __sk_buff *skb, struct packet *p)
{
    __u8 ports[4];
    int off;

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        __u8 ip[20];
        if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
            return -1;
        if (ip[9] != IPPROTO_TCP && ip[9] != IPPROTO_UDP)
            return 0;
        p->proto = ip[9];
        off = (ip[0] & 0x0f) * 4;
        if (off < 20)
            return -1;
        p->family = AF_INET;
        __builtin_memset(p->saddr, 0, 16);
        __builtin_memset(p->daddr, 0, 16);
        p->saddr[10] = p->saddr[11] = 0xff;
        p->daddr[10] = p->daddr[11] = 0xff;
        __builtin_memcpy(p->saddr + 12, ip + 12, 4);
        __builtin_memcpy(p->daddr + 12, ip + 16, 4);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        __u8 ip[40];
        if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
            return -1;
        off = ipv6_l4_offset(skb, ip[6], &p->proto);
        if (off == -1)
            return 0;
        if (off < 0)
            return -1;
        p->family = AF_INET6;
        __builtin_memcpy(p->saddr, ip + 8, 16);
        __builtin_memcpy(p->daddr, ip + 24, 16);
    } else {
        return 0;
    }
    if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
        return -1;
    p->sport = ((__u16)ports[0] << 8) | ports[1];
    p->dport = ((__u16)ports[2] << 8) | ports[3];
    p->l4_offset = off;
    return 1;
}

/* Whether the packet may be a DNS reply, from what the socket says (two
 * field reads): a socket connected to port 53 (glibc's resolver connects
 * its UDP socket; DNS over TCP), or an unconnected UDP socket (dig, dnsperf
 * and servers alike) whose packet comes from port 53, read in place for
 * IPv4 (no helper call: a UDP server's every datagram comes here). A socket
 * bound to port 53 is a server, whose datagrams are queries. */
static __always_inline int may_be_dns_reply(struct __sk_buff *skb, struct bpf_sock *sk)
{
    __u32 rp;

    if (sk->state == BPF_TCP_CLOSE) {
        const __u8 *data = (const __u8 *)(long)skb->data, *end = (const __u8 *)(long)skb->data_end;
        const __u8 *udp;

        if (skb->local_port == DNS_PORT)
            return 0;
        if (skb->protocol != bpf_htons(ETH_P_IP) || data + 20 > end)
            return 1; /* IPv6, or headers not in place: packet_parse decides */
        if (data[9] != IPPROTO_UDP)
            return 0;
        udp = data + (data[0] & 0x0f) * 4;
        if (udp + 2 > end)
            return 1;
        return udp[0] == 0 && udp[1] == DNS_PORT;
    }
    if (sk->state != BPF_TCP_ESTABLISHED)
        return 0;
    /* __sk_buff.remote_port is in network byte order, in the upper half on
     * little-endian machines. */
    rp = skb->remote_port;
    return rp == ((__u32)bpf_htons(DNS_PORT) << 16) || rp == bpf_htons(DNS_PORT);
}

/* Where the DNS message of a reply from port 53 starts (*off), how many of
 * its bytes the packet holds (*avail) and its own length (*len): UDP past
 * its header; TCP past its header and the 2-byte length that starts a
 * reply (a reply's later segments are not read). 0 if there is none. */
static __always_inline int dns_message_at(struct __sk_buff *skb, const struct packet *p, __u32 *off, __u32 *avail,
                                          __u32 *len)
{
    __u32 at = p->l4_offset;

    if (p->sport != DNS_PORT)
        return 0;
    if (p->proto == IPPROTO_UDP) {
        at += 8;
        if (skb->len <= at)
            return 0;
        *avail = skb->len - at;
        *len = *avail;
    } else {
        __u8 b[2];
        if (bpf_skb_load_bytes(skb, at + 12, b, 1))
            return 0;
        at += (b[0] >> 4) * 4;
        if (skb->len < at + 2 + 12 || bpf_skb_load_bytes(skb, at, b, 2))
            return 0;
        *len = ((__u32)b[0] << 8) | b[1];
        at += 2;
        *avail = skb->len - at;
    }
    *off = at;
    return 1;
}

/* How many of `avail` bytes to copy, at most `max`, in a form every
 * verifier bounds: a 64-bit register, clamped behind a compiler barrier, so
 * that the register checked is the one passed (6.1's verifier does not carry
 * a bound across a 32-bit copy of a register, and clang makes such copies). */
static __always_inline __u64 copy_length(__u32 avail, __u32 max)
{
    __u64 n = avail;

    if (n > max)
        n = max;
    barrier_var(n);
    return n;
}

#define DNS_REPEAT_NS 1000000000ULL /* an answer repeated within this is handled once */

/* A 64-bit hash of the first `n` bytes (12 to CG_DNS_MAX_BYTES) of a DNS
 * message at `data`, a buffer of at least CG_DNS_MAX_BYTES + 8 bytes, the
 * id (its first 2 bytes) left out, so that a resolver's answer to the same
 * question with the same records hashes the same. 8 bytes at a time; the
 * loop has no branch but its end, which 6.1's verifier needs to walk it. */
static __always_inline __u64 dns_mix(__u64 h, __u64 w)
{
    h = (h ^ w) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

static __always_inline __u64 dns_message_hash(const __u8 *data, __u64 n)
{
    __u64 words = n >> 3, rest = n & 7;
    __u64 h = dns_mix(0xcbf29ce484222325ULL ^ n, *(const __u64 *)data & ~0xffffULL); /* the id masked */

    for (__u32 i = 1; i < CG_DNS_MAX_BYTES / 8; i++) {
        if (i >= words)
            break;
        h = dns_mix(h, *(const __u64 *)(data + (__u64)i * 8));
    }
    if (rest) /* little-endian: the bytes before n */
        h = dns_mix(h, *(const __u64 *)(data + (words << 3)) & ((1ULL << (rest << 3)) - 1));
    return h;
}

#endif
