/*
 * connguard_dns.h: the one parser of DNS answers, for both sides.
 *
 * A workload's DNS answers say which addresses a name stands for. To allow an
 * allowed name's addresses before the application can connect to them, the
 * kernel side reads each answer as it arrives (a cgroup_skb program, before
 * the socket has it); user space reads the same answers (for `peer_name`, the
 * names a workload resolved, and learning by name). Both run this code: the
 * kernel one step at a time from bpf_loop (the verifier checks one step, not
 * every path through a packet), user space in a plain loop
 * (cg_dns_parse). Fuzzed in Fuzz/ (target "dns").
 *
 * What it reads: the header, the one question (its name, lowercased, as text
 * and as two hashes: the whole name, and the name without its first label,
 * for one-label patterns such as *.example.test), then up to
 * CG_DNS_MAX_ANSWERS answer records. The CNAME chain is followed from the
 * question's name: an A or AAAA record counts only if its owner is the
 * question's name or a name a CNAME of the chain pointed to.
 *
 * What it refuses (CG_DNS_MALFORMED, and why in `error`): a read past the
 * end, a label over 63 bytes, a name over 253 characters, a compression
 * pointer that does not point strictly before every place the name has been
 * read from (so no loop), more than CG_DNS_MAX_JUMPS pointers in a name, the
 * reserved label types, an A/AAAA record of the wrong length, a CNAME whose
 * name does not end where its record does. Nothing is allocated; every read
 * is masked into the buffer, and every loop is bounded.
 */
#ifndef CONNGUARD_DNS_H
#define CONNGUARD_DNS_H

#include "connguard.h" /* CG_DNS_MAX_BYTES, with the record that carries a message */

#define CG_DNS_BUF 2048          /* power of two: every read is buf[off & CG_DNS_MASK] */
#define CG_DNS_MASK (CG_DNS_BUF - 1)
#define CG_DNS_MAX_ANSWERS 32
#define CG_DNS_MAX_ADDRESSES 16
#define CG_DNS_MAX_CHAIN 8
#define CG_DNS_MAX_JUMPS 16
#define CG_DNS_NAME_LEN 256      /* the question's name, dotted, NUL-terminated */
#define CG_DNS_MAX_STEPS 40000   /* one byte (or one fixed field) a step */

enum cg_dns_result {
    CG_DNS_MORE = 0,
    CG_DNS_OK = 1,           /* an answer (rcode 0): addresses filled */
    CG_DNS_MALFORMED = 2,    /* see error */
    CG_DNS_NOT_ANSWER = 3,   /* a query, another opcode, an error rcode (NXDOMAIN), not one question */
};

enum cg_dns_error {
    CG_DNS_E_NONE = 0,
    CG_DNS_E_SHORT = 1,      /* a read past the end */
    CG_DNS_E_LABEL = 2,      /* reserved label type (0x40, 0x80) */
    CG_DNS_E_NAME = 3,       /* a name over 253 characters */
    CG_DNS_E_POINTER = 4,    /* a pointer that does not go back, or too many */
    CG_DNS_E_RDATA = 5,      /* a record's data past the end, or of the wrong length */
    CG_DNS_E_STEPS = 6,
};

enum cg_dns_phase {
    CG_DNS_PHASE_HEADER = 0,
    CG_DNS_PHASE_NAME = 1,
    CG_DNS_PHASE_QUESTION = 2,   /* qtype, qclass */
    CG_DNS_PHASE_RECORD = 3,     /* type, class, ttl, rdlength, and the data of A/AAAA */
};

enum cg_dns_name_kind {
    CG_DNS_NAME_QUESTION = 0,
    CG_DNS_NAME_OWNER = 1,
    CG_DNS_NAME_CNAME = 2,
};

struct cg_dns_address {
    __u8 addr[16];        /* IPv4 as ::ffff:a.b.c.d, as everywhere in connguard.h */
    __u32 ttl;
    __u32 family;         /* 4 or 6 */
};

struct cg_dns_answer {
    __u64 qname_hash;         /* cg_dns_hash of the whole name */
    __u64 qname_parent_hash;  /* of the name without its first label; 0 for a one-label name */
    __u32 result;             /* enum cg_dns_result */
    __u32 error;              /* enum cg_dns_error */
    __u32 addresses;
    __u32 answers_read;
    __u16 id;
    __u16 qtype;
    __u16 rcode;
    __u16 flags;
    char qname[CG_DNS_NAME_LEN];
    struct cg_dns_address address[CG_DNS_MAX_ADDRESSES];
};

struct cg_dns_state {
    __u64 hash;
    __u64 parent_hash;
    __u64 owner_hash;
    __u64 chain[CG_DNS_MAX_CHAIN];
    __u32 len;            /* bytes in buf */
    __u32 complete;       /* buf holds the whole message (else a short read only ends it) */
    __u32 off;
    __u32 phase;
    __u32 kind;           /* enum cg_dns_name_kind */
    __u32 ret;            /* where the name's record goes on after its first pointer; 0: no pointer yet */
    __u32 lowest;         /* a pointer must point before this */
    __u32 name_len;
    __u32 label_left;
    __u32 labels;
    __u32 jumps;
    __u32 records_left;
    __u32 rdata_end;
    __u32 chain_len;
    __u32 steps;
    __u32 rr_type;
};

struct cg_dns_work {
    struct cg_dns_state s;
    struct cg_dns_answer a;
    __u8 buf[CG_DNS_BUF];
};

#define CG_DNS_FNV_BASIS 0xcbf29ce484222325ULL
#define CG_DNS_FNV_PRIME 0x100000001b3ULL

static inline __u64 cg_dns_fold(__u64 h, __u8 c) { return (h ^ c) * CG_DNS_FNV_PRIME; }

static inline __u8 cg_dns_byte(const struct cg_dns_work *w, __u32 off) { return w->buf[off & CG_DNS_MASK]; }

static inline int cg_dns_fail(struct cg_dns_work *w, __u32 error)
{
    /* A message cut short by the copy is read as far as it goes. */
    if (error == CG_DNS_E_SHORT && !w->s.complete && w->s.phase != CG_DNS_PHASE_HEADER && w->a.qname_hash != 0) {
        w->a.result = CG_DNS_OK;
        return CG_DNS_OK;
    }
    w->a.result = CG_DNS_MALFORMED;
    w->a.error = error;
    return CG_DNS_MALFORMED;
}

static inline void cg_dns_start_name(struct cg_dns_work *w, __u32 kind)
{
    w->s.phase = CG_DNS_PHASE_NAME;
    w->s.kind = kind;
    w->s.hash = CG_DNS_FNV_BASIS;
    w->s.parent_hash = CG_DNS_FNV_BASIS;
    w->s.ret = 0;
    w->s.lowest = w->s.off;
    w->s.name_len = 0;
    w->s.label_left = 0;
    w->s.labels = 0;
    w->s.jumps = 0;
}

static inline int cg_dns_in_chain(const struct cg_dns_work *w, __u64 h)
{
    for (__u32 i = 0; i < CG_DNS_MAX_CHAIN; i++)
        if (i < w->s.chain_len && w->s.chain[i] == h)
            return 1;
    return 0;
}

/* The next record, or the end. */
static inline int cg_dns_next_record(struct cg_dns_work *w)
{
    if (w->s.records_left == 0) {
        w->a.result = CG_DNS_OK;
        return CG_DNS_OK;
    }
    w->s.records_left--;
    w->a.answers_read++;
    cg_dns_start_name(w, CG_DNS_NAME_OWNER);
    return CG_DNS_MORE;
}

/* A name was read whole. */
static inline int cg_dns_name_done(struct cg_dns_work *w)
{
    switch (w->s.kind) {
    case CG_DNS_NAME_QUESTION:
        w->a.qname_hash = w->s.hash;
        w->a.qname_parent_hash = w->s.labels >= 2 ? w->s.parent_hash : 0;
        w->a.qname[w->s.name_len & (CG_DNS_NAME_LEN - 1)] = 0;
        w->s.chain[0] = w->s.hash;
        w->s.chain_len = 1;
        w->s.phase = CG_DNS_PHASE_QUESTION;
        return CG_DNS_MORE;
    case CG_DNS_NAME_OWNER:
        w->s.owner_hash = w->s.hash;
        w->s.phase = CG_DNS_PHASE_RECORD;
        return CG_DNS_MORE;
    default: /* CNAME: its target joins the chain if its owner is on it */
        if (w->s.off != w->s.rdata_end)
            return cg_dns_fail(w, CG_DNS_E_RDATA);
        if (cg_dns_in_chain(w, w->s.owner_hash) && !cg_dns_in_chain(w, w->s.hash) && w->s.chain_len < CG_DNS_MAX_CHAIN) {
            w->s.chain[w->s.chain_len & (CG_DNS_MAX_CHAIN - 1)] = w->s.hash;
            w->s.chain_len++;
        }
        return cg_dns_next_record(w);
    }
}

/* One byte of a name. */
static inline int cg_dns_name_step(struct cg_dns_work *w)
{
    __u32 off = w->s.off;
    if (off >= w->s.len)
        return cg_dns_fail(w, CG_DNS_E_SHORT);
    __u8 b = cg_dns_byte(w, off);
    if (w->s.label_left > 0) {
        if (b >= 'A' && b <= 'Z')
            b += 'a' - 'A';
        w->s.hash = cg_dns_fold(w->s.hash, b);
        if (w->s.labels >= 2)
            w->s.parent_hash = cg_dns_fold(w->s.parent_hash, b);
        if (w->s.kind == CG_DNS_NAME_QUESTION)
            w->a.qname[w->s.name_len & (CG_DNS_NAME_LEN - 1)] = (char)b;
        w->s.name_len++;
        w->s.label_left--;
        w->s.off = off + 1;
        return CG_DNS_MORE;
    }
    if (b == 0) {
        w->s.off = w->s.ret ? w->s.ret : off + 1;
        return cg_dns_name_done(w);
    }
    if ((b & 0xC0) == 0xC0) {
        if (off + 1 >= w->s.len)
            return cg_dns_fail(w, CG_DNS_E_SHORT);
        __u32 target = ((__u32)(b & 0x3F) << 8) | cg_dns_byte(w, off + 1);
        /* Strictly before every place this name was read from: each jump
         * goes further back, so a name cannot come round to itself. */
        if (target >= w->s.lowest || ++w->s.jumps > CG_DNS_MAX_JUMPS)
            return cg_dns_fail(w, CG_DNS_E_POINTER);
        if (w->s.ret == 0)
            w->s.ret = off + 2;
        w->s.lowest = target;
        w->s.off = target;
        return CG_DNS_MORE;
    }
    if (b & 0xC0)
        return cg_dns_fail(w, CG_DNS_E_LABEL);
    /* A label of b (1..63) bytes; its length is hashed too, so that "ab.c"
     * and "a.bc" differ. */
    w->s.labels++;
    if (w->s.labels >= 2) {
        if (w->s.kind == CG_DNS_NAME_QUESTION)
            w->a.qname[w->s.name_len & (CG_DNS_NAME_LEN - 1)] = '.';
        w->s.name_len++;
        w->s.parent_hash = cg_dns_fold(w->s.parent_hash, b);
    }
    w->s.hash = cg_dns_fold(w->s.hash, b);
    if (w->s.name_len + b > 253)
        return cg_dns_fail(w, CG_DNS_E_NAME);
    w->s.label_left = b;
    w->s.off = off + 1;
    return CG_DNS_MORE;
}

static inline __u32 cg_dns_u16(const struct cg_dns_work *w, __u32 off)
{
    return ((__u32)cg_dns_byte(w, off) << 8) | cg_dns_byte(w, off + 1);
}

/* One step: returns CG_DNS_MORE until the answer is read or refused. */
static inline int cg_dns_step(struct cg_dns_work *w)
{
    if (++w->s.steps > CG_DNS_MAX_STEPS)
        return cg_dns_fail(w, CG_DNS_E_STEPS);
    __u32 off = w->s.off;
    switch (w->s.phase) {
    case CG_DNS_PHASE_HEADER: {
        if (w->s.len < 12)
            return cg_dns_fail(w, CG_DNS_E_SHORT);
        __u32 flags = cg_dns_u16(w, 2);
        w->a.id = (__u16)cg_dns_u16(w, 0);
        w->a.flags = (__u16)flags;
        w->a.rcode = flags & 0xF;
        __u32 questions = cg_dns_u16(w, 4), answers = cg_dns_u16(w, 6);
        /* QR set, opcode QUERY, one question: an answer to a lookup. */
        if (!(flags & 0x8000) || ((flags >> 11) & 0xF) != 0 || questions != 1) {
            w->a.result = CG_DNS_NOT_ANSWER;
            return CG_DNS_NOT_ANSWER;
        }
        w->s.records_left = answers < CG_DNS_MAX_ANSWERS ? answers : CG_DNS_MAX_ANSWERS;
        w->s.off = 12;
        cg_dns_start_name(w, CG_DNS_NAME_QUESTION);
        return CG_DNS_MORE;
    }
    case CG_DNS_PHASE_NAME:
        return cg_dns_name_step(w);
    case CG_DNS_PHASE_QUESTION:
        if (off + 4 > w->s.len)
            return cg_dns_fail(w, CG_DNS_E_SHORT);
        w->a.qtype = (__u16)cg_dns_u16(w, off);
        w->s.off = off + 4;
        if (w->a.rcode != 0) {
            w->a.result = CG_DNS_NOT_ANSWER;
            return CG_DNS_NOT_ANSWER;
        }
        return cg_dns_next_record(w);
    default: { /* CG_DNS_PHASE_RECORD */
        if (off + 10 > w->s.len)
            return cg_dns_fail(w, CG_DNS_E_SHORT);
        __u32 type = cg_dns_u16(w, off), class = cg_dns_u16(w, off + 2);
        __u32 ttl = (cg_dns_u16(w, off + 4) << 16) | cg_dns_u16(w, off + 6);
        __u32 length = cg_dns_u16(w, off + 8);
        __u32 data = off + 10;
        w->s.rdata_end = data + length;
        if (w->s.rdata_end > w->s.len)
            return cg_dns_fail(w, w->s.complete ? CG_DNS_E_RDATA : CG_DNS_E_SHORT);
        w->s.rr_type = type;
        if (class == 1 && (type == 1 || type == 28)) {  /* A, AAAA */
            __u32 size = type == 1 ? 4 : 16;
            if (length != size)
                return cg_dns_fail(w, CG_DNS_E_RDATA);
            if (cg_dns_in_chain(w, w->s.owner_hash) && w->a.addresses < CG_DNS_MAX_ADDRESSES) {
                struct cg_dns_address *a = &w->a.address[w->a.addresses & (CG_DNS_MAX_ADDRESSES - 1)];
                for (__u32 i = 0; i < 16; i++)
                    a->addr[i] = 0;
                if (type == 1) {
                    a->addr[10] = 0xff;
                    a->addr[11] = 0xff;
                    for (__u32 i = 0; i < 4; i++)
                        a->addr[12 + i] = cg_dns_byte(w, data + i);
                    a->family = 4;
                } else {
                    for (__u32 i = 0; i < 16; i++)
                        a->addr[i] = cg_dns_byte(w, data + i);
                    a->family = 6;
                }
                a->ttl = ttl;
                w->a.addresses++;
            }
            w->s.off = w->s.rdata_end;
            return cg_dns_next_record(w);
        }
        if (class == 1 && type == 5) {  /* CNAME */
            w->s.off = data;
            cg_dns_start_name(w, CG_DNS_NAME_CNAME);
            return CG_DNS_MORE;
        }
        w->s.off = w->s.rdata_end;
        return cg_dns_next_record(w);
    }
    }
}

/* Prepares `w` for a message of `len` bytes already in w->buf (at most
 * CG_DNS_MAX_BYTES of them); `complete`: the message is not longer. */
static inline void cg_dns_begin(struct cg_dns_work *w, __u32 len, int complete)
{
    __u8 *s = (__u8 *)&w->s, *a = (__u8 *)&w->a;
    for (__u32 i = 0; i < sizeof(w->s); i++)
        s[i] = 0;
    for (__u32 i = 0; i < sizeof(w->a); i++)
        a[i] = 0;
    w->s.len = len < CG_DNS_MAX_BYTES ? len : CG_DNS_MAX_BYTES;
    w->s.complete = complete && len <= CG_DNS_MAX_BYTES;
}

#ifndef __VMLINUX_H__
/* User space: the two hashes the parser computes for a question's name, of
 * a dotted name of `len` bytes (no final dot; already lowercase): what rules
 * on names are keyed by in the kernel. */
static inline void cg_dns_hash_text(const char *name, __u32 len, __u64 *hash, __u64 *parent_hash)
{
    __u64 h = CG_DNS_FNV_BASIS, p = CG_DNS_FNV_BASIS;
    __u32 labels = 0, i = 0;
    while (i < len) {
        __u32 end = i;
        while (end < len && name[end] != '.')
            end++;
        labels++;
        h = cg_dns_fold(h, (__u8)(end - i));
        if (labels >= 2)
            p = cg_dns_fold(p, (__u8)(end - i));
        for (__u32 j = i; j < end; j++) {
            h = cg_dns_fold(h, (__u8)name[j]);
            if (labels >= 2)
                p = cg_dns_fold(p, (__u8)name[j]);
        }
        i = end + 1;
    }
    *hash = h;
    *parent_hash = labels >= 2 ? p : 0;
}

/* User space: the whole parse of the `len` bytes at `data` of a message
 * `message_len` bytes long (more when the copy was cut). */
static inline int cg_dns_parse_part(struct cg_dns_work *w, const __u8 *data, __u32 len, __u32 message_len)
{
    __u32 n = len < CG_DNS_MAX_BYTES ? len : CG_DNS_MAX_BYTES;
    for (__u32 i = 0; i < n; i++)
        w->buf[i] = data[i];
    cg_dns_begin(w, n, message_len <= n);
    int r = CG_DNS_MORE;
    while (r == CG_DNS_MORE)
        r = cg_dns_step(w);
    return r;
}

/* User space: the whole parse of `len` bytes at `data`. */
static inline int cg_dns_parse(struct cg_dns_work *w, const __u8 *data, __u32 len)
{
    return cg_dns_parse_part(w, data, len, len);
}
#endif

#endif
