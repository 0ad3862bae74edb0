/* Shared vocabulary of the C core: verdicts, drop/punt reasons, connection states. */
#ifndef HP_TYPES_H
#define HP_TYPES_H

#include <stdint.h>
#include <stddef.h>

enum hp_dir { HP_DIR_OUT = 0, HP_DIR_IN = 1 };        /* OUT = original, IN = reply */

enum hp_verdict { HP_FORWARD = 0, HP_DROP = 1, HP_PUNT = 2 };

/* X-macro so the names reach Python (and the counters) without a second list. */
#define HP_REASONS(X) \
    X(NONE) \
    X(VNET_TRUNCATED) X(ETH_TRUNCATED) X(ARP) X(ETHERTYPE) \
    X(IPV4_TRUNCATED) X(IPV4_BAD_VERSION) X(IPV4_BAD_IHL) X(IPV4_BAD_TOTAL_LEN) \
    X(IPV4_BAD_CHECKSUM) X(FRAGMENT) \
    X(IPV6_TRUNCATED) X(IPV6_BAD_VERSION) X(IPV6_BAD_PAYLOAD_LEN) \
    X(IPV6_EXT_TOO_MANY) X(IPV6_EXT_TRUNCATED) \
    X(ICMP) X(PROTO) X(L4_TRUNCATED) X(TCP_BAD_DOFF) X(UDP_BAD_LEN) X(VNET_BAD_CSUM) \
    X(TTL_EXCEEDED) X(TOO_BIG) \
    X(UNKNOWN_SOURCE) X(V6_NOT_ALLOWED) X(TCP_NOT_SYN) X(TABLE_FULL) X(PORTS_EXHAUSTED) \
    X(IN_NOT_ENI_ADDR) X(IN_UNSOLICITED_SYN) X(IN_NO_MATCH_TCP) X(IN_NO_MATCH_UDP) \
    X(BAD_PORT) X(NEIGH_MISS) X(NO_ROUTE) X(NOT_OUR_MAC) X(TX_FULL) \
    X(TCP_BAD_FLAGS) X(TCP_OUT_OF_WINDOW) X(TCP_BAD_RST) X(SPOOFED_SOURCE) X(MARTIAN_DST) \
    X(SOURCE_ROUTE) \
    X(SG_DENIED) X(FUNCTION_LIMIT) X(L4_BAD_CHECKSUM)

#define HP_REASON_ENUM(name) HP_R_##name,
enum hp_reason { HP_REASONS(HP_REASON_ENUM) HP_R_COUNT };
#undef HP_REASON_ENUM

extern const char *const hp_reason_names[HP_R_COUNT];

/* TCP states follow RFC 7857 section 2 / Linux; UDP has two. The state also names the
 * timeout list a connection sits on. */
#define HP_STATES(X) \
    X(NONE) X(SYN_SENT) X(SYN_RECV) X(ESTABLISHED) X(FIN_WAIT) X(CLOSE_WAIT) \
    X(LAST_ACK) X(TIME_WAIT) X(CLOSE) X(UDP_FIRST) X(UDP_STREAM)

#define HP_STATE_ENUM(name) HP_S_##name,
enum hp_state { HP_STATES(HP_STATE_ENUM) HP_S_COUNT };
#undef HP_STATE_ENUM

extern const char *const hp_state_names[HP_S_COUNT];

/* Connection flags. */
enum {
    HP_F_REPLY_SEEN = 1,
    HP_F_ASSURED = 2,
    HP_F_CLOSER_REPLY = 4,   /* the first FIN came from the reply side */
    HP_F_FIN_SEEN = 8,       /* a FIN has been seen (closer is valid) */
    HP_F_SYN_REPLY = 16,     /* a SYN came from the reply side: simultaneous open (SYN_SENT2) */
    HP_F_HAIRPIN = 32,       /* between two functions through an ENI address (hairpinning) */
};

/* A UDP flow becomes a stream (UDP_STREAM's timeout) when a packet comes this long after its
 * first reply (Linux's 2 s): a lone query and answer keep UDP_FIRST's short timeout. */
#define HP_UDP_STREAM_MS 2000u

/* Timeouts for every state, in milliseconds. */
typedef struct hp_timeouts {
    uint64_t ms[HP_S_COUNT];
} hp_timeouts;

void hp_timeouts_profile(hp_timeouts *t, int rfc);

#endif
