"""Names shared by the C core and the reference model: verdicts, reasons, states, counters.

The order of each list is the order of the C enums in csrc/nat/hp_types.h and csrc/nat/hp_nat.h;
a unit test holds the two together.
"""

VERDICTS = ("FORWARD", "DROP", "PUNT")
FORWARD, DROP, PUNT = 0, 1, 2

OUT, IN = 0, 1  # direction: OUT = from a function (original), IN = from an ENI (reply)

REASONS = (
    "NONE",
    "VNET_TRUNCATED", "ETH_TRUNCATED", "ARP", "ETHERTYPE",
    "IPV4_TRUNCATED", "IPV4_BAD_VERSION", "IPV4_BAD_IHL", "IPV4_BAD_TOTAL_LEN",
    "IPV4_BAD_CHECKSUM", "FRAGMENT",
    "IPV6_TRUNCATED", "IPV6_BAD_VERSION", "IPV6_BAD_PAYLOAD_LEN",
    "IPV6_EXT_TOO_MANY", "IPV6_EXT_TRUNCATED",
    "ICMP", "PROTO", "L4_TRUNCATED", "TCP_BAD_DOFF", "UDP_BAD_LEN", "VNET_BAD_CSUM",
    "TTL_EXCEEDED", "TOO_BIG",
    "UNKNOWN_SOURCE", "V6_NOT_ALLOWED", "TCP_NOT_SYN", "TABLE_FULL", "PORTS_EXHAUSTED",
    "IN_NOT_ENI_ADDR", "IN_UNSOLICITED_SYN", "IN_NO_MATCH_TCP", "IN_NO_MATCH_UDP",
    "BAD_PORT", "NEIGH_MISS", "NO_ROUTE", "NOT_OUR_MAC", "TX_FULL",
    "TCP_BAD_FLAGS", "TCP_OUT_OF_WINDOW", "TCP_BAD_RST", "SPOOFED_SOURCE", "MARTIAN_DST",
    "SOURCE_ROUTE",
    "SG_DENIED", "FUNCTION_LIMIT", "L4_BAD_CHECKSUM",
)
R = {name: i for i, name in enumerate(REASONS)}

# Reasons that send a frame to the slow path instead of dropping it.
PUNT_REASONS = frozenset(("ARP", "FRAGMENT", "ICMP", "TTL_EXCEEDED", "TOO_BIG", "PORTS_EXHAUSTED",
                          "NEIGH_MISS"))

STATES = (
    "NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
    "LAST_ACK", "TIME_WAIT", "CLOSE", "UDP_FIRST", "UDP_STREAM",
)
S = {name: i for i, name in enumerate(STATES)}

COUNTERS = (
    "fwd_out_packets", "fwd_out_bytes", "fwd_in_packets", "fwd_in_bytes",
    "conn_created", "conn_established", "conn_expired", "journal_overflow",
    "reject_overflow", "rst_sent", "rst_limited",
    "conn_early_dropped", "refusal_sent", "refusal_limited", "hairpin_packets",
    "hairpin_refused", "tcp_ignored",
)

# Connection flags.
F_REPLY_SEEN, F_ASSURED, F_CLOSER_REPLY, F_FIN_SEEN, F_SYN_REPLY, F_HAIRPIN = 1, 2, 4, 8, 16, 32

# A UDP flow becomes a stream when a packet comes this long after its first reply (Linux's 2 s).
UDP_STREAM_MS = 2000

# Timeout profiles in seconds (docs/semantics.md 2.1).
PROFILES = {
    "aws": {"SYN_SENT": 120, "SYN_RECV": 60, "ESTABLISHED": 350, "FIN_WAIT": 120,
            "CLOSE_WAIT": 60, "LAST_ACK": 30, "TIME_WAIT": 120, "CLOSE": 10,
            "UDP_FIRST": 30, "UDP_STREAM": 180},
    "rfc": {"SYN_SENT": 240, "SYN_RECV": 240, "ESTABLISHED": 7440, "FIN_WAIT": 240,
            "CLOSE_WAIT": 240, "LAST_ACK": 240, "TIME_WAIT": 240, "CLOSE": 240,
            "UDP_FIRST": 300, "UDP_STREAM": 300},
}

DEFAULT_PORT_RANGE = (536, 65535)  # exactly 65,000 ports

MAPPINGS = ("endpoint-independent", "per-connection")

# Bounds shared by the config and the core (one set, checked in both).
# Connections: a table of 2**26 entries (about 4 GB with its index and stats) is far beyond any
# lab; the bound keeps every index computation of the core well clear of uint32 overflow.
MAX_CAPACITY = 1 << 26
# ENI ids a NAT (and its state file) has (HP_MAX_ENIS): a reclaimed ENI's id goes to a new one.
MAX_ENIS = 1024
MAX_TIMEOUT_S = 49 * 24 * 3600      # 49 days: milliseconds of it still fit in 32 bits
