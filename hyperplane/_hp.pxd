# Declarations of the C core's headers (csrc/) for the Cython bindings.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "hp_types.h":
    enum: HP_R_COUNT
    enum: HP_S_COUNT
    enum: HP_S_TIME_WAIT
    const char *const hp_reason_names[]
    const char *const hp_state_names[]
    ctypedef struct hp_timeouts:
        uint64_t ms[11]
    void hp_timeouts_profile(hp_timeouts *t, int rfc)

cdef extern from "hp_flow.h":
    ctypedef struct hp_flow_key:
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport
        uint16_t dport
        uint8_t family
        uint8_t proto
        uint16_t pad
    ctypedef struct hp_hash_seed:
        uint64_t k0
        uint64_t k1
    uint64_t hp_flow_hash(const hp_hash_seed *seed, const hp_flow_key *key) nogil

cdef extern from "hp_conntrack.h":
    enum: HP_CT_NONE
    enum: HP_MAX_CAPACITY
    enum: HP_MAX_ENIS
    uint64_t hp_ct_index_slots(uint64_t capacity)
    ctypedef struct hp_eni_addr:
        uint8_t addr[2][16]
        uint8_t has[2]
    ctypedef struct hp_conn:
        uint64_t last_seen_ms
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport
        uint16_t dport
        uint8_t family
        uint8_t proto
        uint16_t nat_port
        uint32_t start_s
        uint16_t eni
        uint8_t state
        uint8_t flags
    ctypedef struct hp_conn_stats:
        uint64_t bytes[2]
        uint64_t packets[2]
        uint32_t owner
        uint8_t seen
    ctypedef struct hp_tcp_win:
        pass
    ctypedef struct hp_conn_flowbase:
        pass
    ctypedef struct hp_flow_ival:
        uint64_t first_ms
        uint64_t last_ms
        uint64_t bytes
        uint32_t packets
        uint8_t tcp_flags
        uint8_t seen
    ctypedef struct hp_conn_record:
        hp_conn conn
        hp_conn_stats stats
        hp_conn_flowbase flowbase
    ctypedef struct hp_ct:
        hp_conn *conns
        hp_conn_stats *stats
        hp_conn_flowbase *flowbase
        uint32_t capacity
        uint32_t count
        uint32_t high_water
    void hp_ct_flow_read(const hp_conn *c, const hp_conn_stats *st, const hp_conn_flowbase *b,
                         hp_flow_ival *out) nogil
    void hp_ct_flow_reset(hp_ct *ct, uint32_t id) nogil
    uint32_t hp_ct_lookup(const hp_ct *ct, const hp_flow_key *key, int dir) nogil
    uint32_t hp_ct_insert(hp_ct *ct, const hp_flow_key *orig, uint16_t eni, uint16_t nat_port,
                          uint8_t state, uint64_t now_ms) nogil
    uint32_t hp_ct_next_live(const hp_ct *ct, uint32_t start) nogil
    size_t hp_ct_memory(const hp_ct *ct)

cdef extern from "hp_portalloc.h":
    ctypedef struct hp_pool_state:
        uint32_t nfree
    ctypedef struct hp_pool:
        uint32_t size
        hp_pool_state *st
    uint32_t hp_pool_in_use(const hp_pool *p) nogil
    uint32_t hp_pool_quarantined(const hp_pool *p) nogil
    size_t hp_pool_memory(const hp_pool *p)

cdef extern from "hp_events.h":
    enum: HP_EV_NEW
    enum: HP_EV_UPDATE
    enum: HP_EV_DESTROY
    enum: HP_DR_COUNT
    const char *const hp_destroy_reason_names[]
    ctypedef struct hp_event:
        uint64_t seq
        uint64_t now_ms
        hp_conn conn
        uint64_t packets[2]
        uint64_t bytes[2]
        uint32_t id
        uint32_t owner
        uint8_t type
        uint8_t old_state
        uint8_t old_flags
        uint8_t reason
    ctypedef struct hp_event_ring:
        uint64_t head
    hp_event_ring *hp_events_create(uint32_t size) nogil
    void hp_events_destroy(hp_event_ring *r) nogil
    uint32_t hp_events_read(const hp_event_ring *r, uint64_t *cursor, hp_event *out,
                            uint32_t max, uint64_t *lost) nogil

cdef extern from "hp_conntrack.h":
    enum: HP_CTF_FAMILY
    enum: HP_CTF_PROTO
    enum: HP_CTF_STATES
    enum: HP_CTF_ENI
    enum: HP_CTF_OWNER
    enum: HP_CTF_FLAGS
    enum: HP_CTF_ADDR
    enum: HP_CTF_PORT
    ctypedef struct hp_ct_filter:
        uint32_t what
        uint32_t states
        uint32_t owner
        uint16_t eni
        uint8_t family
        uint8_t proto
        uint8_t flags_mask
        uint8_t flags_want
        uint8_t plen[3]
        uint8_t addr[3][16]
        uint16_t port_lo[3]
        uint16_t port_hi[3]
    int hp_ct_match(const hp_ct *ct, const hp_ct_filter *f, const hp_conn *c,
                    uint32_t owner) nogil
    uint32_t hp_ct_scan(const hp_ct *ct, const hp_ct_filter *f, uint32_t start, uint32_t to,
                        uint32_t *ids, uint32_t max, uint32_t *next) nogil

cdef extern from "hp_nat.h":
    enum: HP_C_COUNT
    const char *const hp_counter_names[]
    ctypedef struct hp_nat_config:
        uint32_t capacity
        uint16_t port_lo
        uint16_t port_hi
        uint8_t per_connection
        uint64_t quarantine_ms
        uint16_t mtu_inside
        uint16_t mtu_outside
        uint32_t journal_size
        uint64_t port_seed
        hp_hash_seed hash_seed
        hp_timeouts timeouts
    ctypedef struct hp_source:
        uint8_t addr[16]
        uint8_t family
        uint32_t owner
    ctypedef struct hp_result:
        uint8_t verdict
        uint8_t reason
        uint16_t port
        uint32_t conn
    ctypedef struct hp_nat_shared:
        uint32_t j_count
    ctypedef struct hp_nat:
        hp_nat_config cfg
        hp_ct ct
        hp_nat_shared *sh
        hp_eni_addr *eni_addr
        uint32_t n_enis
        uint32_t n_groups
        hp_source *sources
        uint32_t n_sources
        uint64_t *counters
        uint64_t *drops
        uint8_t attached
        uint32_t repaired
        hp_event_ring *events
    void hp_nat_config_default(hp_nat_config *cfg)
    hp_nat *hp_nat_create(const hp_nat_config *cfg)
    int hp_nat_open(const hp_nat_config *cfg, const char *path, hp_nat **out, char *err,
                    size_t errlen)
    void hp_nat_destroy(hp_nat *nat)
    int hp_nat_add_eni(hp_nat *nat, const uint8_t *v4, const uint8_t *v6) nogil
    ctypedef struct hp_eni_prep:
        uint32_t id
    int hp_nat_eni_prepare(hp_nat *nat, const uint8_t *v4, const uint8_t *v6, int id,
                           hp_eni_prep *out) nogil
    int hp_nat_eni_commit(hp_nat *nat, hp_eni_prep *prep) nogil
    ctypedef struct hp_eni_pools:
        pass
    int hp_nat_eni_release(hp_nat *nat, int eni, hp_eni_pools **unmap) nogil
    void hp_nat_eni_unmap(hp_eni_pools *pools) nogil
    int hp_nat_add_group(hp_nat *nat) nogil
    int hp_nat_group_add_eni(hp_nat *nat, int group, int eni) nogil
    int hp_nat_group_retire_eni(hp_nat *nat, int group, int eni) nogil
    int hp_nat_group_set_can_grow(hp_nat *nat, int group, int can_grow) nogil
    int hp_nat_set_source_group(hp_nat *nat, int family, const uint8_t *addr, int group) nogil
    int hp_nat_add_source_mac(hp_nat *nat, int family, const uint8_t *addr, int group,
                              int allow_v6, const uint8_t *mac) nogil
    void hp_nat_translate(hp_nat *nat, uint8_t **frames, const uint32_t *lens, uint32_t n,
                          int dir, uint16_t in_eni, int vnet, uint64_t now_ms,
                          hp_result *out) nogil
    void hp_nat_translate_ex(hp_nat *nat, uint8_t **frames, const uint32_t *lens, uint32_t n,
                             int dir, uint16_t in_eni, int vnet, int check_mtu, uint64_t now_ms,
                             hp_result *out) nogil
    uint32_t hp_nat_lookup(const hp_nat *nat, const hp_flow_key *key, int dir, uint64_t now_ms) nogil
    size_t hp_nat_expire(hp_nat *nat, uint64_t now_ms, size_t max, hp_conn_record *out,
                         size_t out_max) nogil
    void hp_nat_delete_conn(hp_nat *nat, uint32_t id, uint64_t now_ms) nogil
    void hp_nat_remove_conn(hp_nat *nat, uint32_t id, uint64_t now_ms,
                            hp_conn_record *copy_to) nogil
    hp_pool *hp_nat_pool(hp_nat *nat, int eni, int family, int proto) nogil

cdef extern from "hp_quota.h":
    enum: HP_FC_COUNT
    enum: HP_GROUP_MAX_ENIS
    const char *const hp_func_counter_names[]
    ctypedef struct hp_func_pool:
        uint32_t eni
        uint32_t held[2][2]
    ctypedef struct hp_func:
        uint32_t max_conns
        uint32_t max_ports
        uint32_t conns
        uint32_t n_pools
        uint64_t counters[16]
        hp_func_pool pools[1024]
    int hp_quota_set(hp_nat *nat, int family, const uint8_t *addr, uint32_t max_conns,
                     uint32_t max_ports) nogil
    hp_func *hp_quota_func(hp_nat *nat, uint32_t owner) nogil
    void hp_quota_recount(hp_nat *nat) nogil
    void hp_quota_drain_all(hp_nat *nat, uint64_t now_ms) nogil
    uint32_t hp_quota_share_used(const hp_nat *nat, uint32_t eni) nogil

cdef extern from "hp_conntrack.h":
    void hp_ct_lookup_batch(const hp_ct *ct, const hp_flow_key *keys, uint32_t n, int dir,
                            uint32_t *ids) nogil

cdef extern from "hp_secgroup.h":
    ctypedef struct hp_sg_rule:
        uint8_t prefix[16]
        uint16_t port_lo
        uint16_t port_hi
        uint8_t family
        uint8_t proto
        uint8_t plen
    ctypedef struct hp_sg_set:
        uint32_t n
        uint64_t *hits
    hp_sg_set *hp_sg_set_new(const hp_sg_rule *rules, uint32_t n)
    void hp_sg_set_free(hp_sg_set *s) nogil

cdef extern from "hp_reject.h":
    enum: HP_ENI_NONE
    enum: HP_REJECT_RING
    ctypedef struct hp_reject:
        uint64_t ms
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport
        uint16_t dport
        uint16_t eni
        uint16_t len
        uint8_t family
        uint8_t proto
        uint8_t tcp_flags
        uint8_t reason
        uint8_t dir
    ctypedef struct hp_reject_ring:
        uint32_t count
    ctypedef struct hp_rate:
        uint32_t per_s
        uint32_t burst
    ctypedef struct hp_eni_counters:
        uint64_t packets[2]
        uint64_t bytes[2]
        uint64_t attempts[2]
        uint64_t established[2]
        uint64_t active[2]
        uint64_t port_errors
        uint64_t idle_timeouts
        uint64_t drops
        uint64_t rst_sent
        uint64_t drop_reasons[HP_R_COUNT]
    void hp_rate_init(hp_rate *r, uint32_t per_s, uint32_t burst) nogil
    uint32_t hp_reject_take(hp_reject_ring *ring, hp_reject *out, uint32_t max) nogil

cdef extern from "hp_nat.h":
    ctypedef struct hp_group:
        hp_sg_set *sg
        uint64_t sg_denied
    ctypedef struct hp_nat_obs "hp_nat":
        hp_group *groups
        uint32_t n_groups
        hp_eni_counters *eni_ctr
        hp_reject_ring rejects
        hp_rate rst_rate
    hp_sg_set *hp_nat_swap_group_rules(hp_nat *nat, int group, hp_sg_set *set) nogil
