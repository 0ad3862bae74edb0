# Declarations of csrc/dp/hp_ring.h and csrc/dp/hp_dataplane.h for the Cython bindings
# (hyperplane/_dataplane.pxi cimports this module as a namespace, so these names never clash
# with the NAT's declarations in _hp.pxd).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from hyperplane._lock cimport pthread_mutex_t

cdef extern from "hp_types.h" nogil:
    enum: HP_R_COUNT
    const char *const hp_reason_names[]

cdef extern from "hp_nat.h" nogil:
    # Declared again here (same C type) so the data plane's calls need nothing from _hp.pxd.
    ctypedef struct hp_result:
        uint8_t verdict
        uint8_t reason
        uint16_t port
        uint32_t conn

cdef extern from "hp_ring.h" nogil:
    enum: HP_RING_DEFAULT_FRAMES
    enum: HP_RING_FRAME_SIZE
    ctypedef struct hp_ring_stats:
        uint64_t rx_frames
        uint64_t rx_bytes
        uint64_t rx_outgoing
        uint64_t rx_truncated
        uint64_t rx_copied
        uint64_t rx_kernel_drops
        uint64_t tx_frames
        uint64_t tx_bytes
        uint64_t tx_full
        uint64_t tx_sends
        uint64_t tx_errors
        uint64_t tx_direct
    ctypedef struct hp_ring:
        int fd
        int ifindex
        int vnet
        uint32_t frame_size
        uint32_t rx_nr
        uint32_t tx_nr
        uint32_t rx_held
        uint32_t tx_queued
        hp_ring_stats st
    hp_ring *hp_ring_open(int ifindex, uint32_t rx_frames, uint32_t tx_frames, int vnet,
                          int qdisc_bypass)
    void hp_ring_close(hp_ring *r)
    int hp_ring_fd(const hp_ring *r)
    uint32_t hp_ring_rx_peek(hp_ring *r, uint8_t **data, uint32_t *lens, uint32_t max)
    void hp_ring_rx_release(hp_ring *r)
    int hp_ring_rx_ready(const hp_ring *r)
    uint8_t *hp_ring_tx_slot(hp_ring *r)
    uint32_t hp_ring_tx_max(const hp_ring *r)
    void hp_ring_tx_commit(hp_ring *r, uint32_t len)
    int hp_ring_tx_flush(hp_ring *r)
    int hp_ring_tx_copy(hp_ring *r, const uint8_t *vnet_hdr, const uint8_t *frame, uint32_t len)
    int hp_ring_tx_send(hp_ring *r, const uint8_t *frame, uint32_t len)
    void hp_ring_update_stats(hp_ring *r)

cdef extern from "hp_police.h" nogil:
    enum: HP_PC_COUNT
    const char *const hp_police_class_names[]
    ctypedef struct hp_punt_police:
        uint64_t policed[64]
        uint64_t policed_class[8]
        uint64_t strangers
    void hp_police_init(hp_punt_police *p, uint32_t per_s, uint32_t burst)
    int hp_police_punt(hp_punt_police *p, uint32_t port, int reason, const uint8_t *eth,
                       uint32_t elen, uint64_t now_ms)

cdef extern from "hp_dataplane.h" nogil:
    enum: HP_DP_MAX_PORTS
    enum: HP_DP_BATCH
    enum: HP_DP_PORT_NONE
    enum: HP_DP_INSIDE
    enum: HP_DP_ENI
    enum: HP_DP_C_COUNT
    const char *const hp_dp_counter_names[]

    ctypedef struct hp_dp_port:
        hp_ring *ring
        int ifindex
        uint8_t mac[6]
        uint8_t role
        uint8_t removed
        uint16_t eni
        uint8_t has_net[2]
        uint8_t has_gw[2]
        uint8_t plen[2]
        uint8_t net[2][16]
        uint8_t gw[2][16]

    ctypedef struct hp_dp_port_view:
        hp_dp_port port
        hp_ring_stats st
        uint32_t rx_nr
        uint32_t tx_nr
    uint32_t hp_dp_ports_view(hp_dp *dp, hp_dp_port_view *out, uint32_t max) nogil

    ctypedef struct hp_dp_punt:
        uint16_t in_port
        uint16_t out_port
        uint8_t reason
        uint8_t vnet[10]
        uint32_t conn
        uint32_t off
        uint32_t len

    ctypedef struct hp_dp:
        hp_dp_port ports[64]
        uint32_t n_ports
        int inside
        uint32_t spin_us
        uint32_t linear_max
        int thread_running
        uint64_t counters[32]
        uint64_t drops[64]
        hp_punt_police police

    # nat is an hp_nat * (declared void * here so this module needs no NAT declarations).
    hp_dp *hp_dp_create(void *nat, uint32_t neigh_cap, uint32_t punt_cap, uint32_t punt_bytes)
    void hp_dp_destroy(hp_dp *dp)
    int hp_dp_remove_port(hp_dp *dp, int port) nogil
    int hp_dp_add_port(hp_dp *dp, int ifindex, const uint8_t *mac, int role, int eni,
                       uint32_t rx_frames, uint32_t tx_frames, int qdisc_bypass)
    int hp_dp_set_subnet(hp_dp *dp, int port, int family, const uint8_t *prefix, int plen,
                         const uint8_t *gateway)
    int hp_dp_set_neigh(hp_dp *dp, int port, int family, const uint8_t *addr, const uint8_t *mac,
                        int flags)
    unsigned int hp_dp_age_neigh(hp_dp *dp, uint64_t max_age_ms)
    int hp_dp_del_neigh(hp_dp *dp, int port, int family, const uint8_t *addr)
    int hp_dp_get_neigh(hp_dp *dp, int port, int family, const uint8_t *addr, uint8_t *mac,
                        int *flags)
    void hp_dp_clear_neigh(hp_dp *dp)
    void hp_dp_set_lock(hp_dp *dp, pthread_mutex_t *lock)
    int64_t hp_dp_run(hp_dp *dp, int timeout_ms, uint32_t max_batches)
    void hp_dp_wake(hp_dp *dp)
    int hp_dp_start(hp_dp *dp)
    void hp_dp_stop(hp_dp *dp)
    uint32_t hp_dp_punt_pending(hp_dp *dp)
    uint32_t hp_dp_punt_wait(hp_dp *dp, int timeout_ms)
    uint32_t hp_dp_punt_take(hp_dp *dp)
    const hp_dp_punt *hp_dp_punt_get(const hp_dp *dp, uint32_t i)
    const uint8_t *hp_dp_punt_data(const hp_dp *dp, const hp_dp_punt *p)
    int hp_dp_inject(hp_dp *dp, int port, const uint8_t *frame, uint32_t len,
                     const uint8_t *vnet_hdr)
    int hp_dp_input(hp_dp *dp, int port, const uint8_t *frame, uint32_t len,
                    const uint8_t *vnet_hdr, hp_result *result)
    uint64_t hp_dp_now_ms()
    void hp_dp_update_stats(hp_dp *dp)

cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    enum: POLLIN
    int poll(pollfd *fds, unsigned long nfds, int timeout)
