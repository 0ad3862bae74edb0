/* Traffic tools of `hyperplane bench`, compiled with the system cc on first use.
 *
 *   hpbench send DST DPORT NDPORTS SPORT NSPORTS RATE SECONDS START PAYLOAD [COUNT [IFNAME MAC]]
 *       UDP datagrams of PAYLOAD bytes at RATE per second (0: as fast as it can) for SECONDS,
 *       or until COUNT (0: no limit) were offered. With IFNAME and MAC (the next hop's), whole
 *       Ethernet frames go out of an AF_PACKET socket that bypasses the qdisc, so the sender
 *       skips its own IP output path; else from a raw IPv4 socket. Either way every datagram
 *       can carry its own source port. Datagram
 *       i (counting from START) goes from port SPORT + i % NSPORTS to DPORT + (i / NSPORTS) %
 *       NDPORTS: the flows cycle. Prints {"offered":..,"sent":..,"errors":..,"elapsed":..}.
 *   hpbench echo PORT SECONDS               UDP echo server
 *   hpbench ping DST PORT COUNT GAP_US      UDP ping-pong; prints every RTT in ns, -1 if lost
 *   hpbench tcpsrv PORT SECONDS             answers each request line with one line, then
 *                                           closes when the client does
 *   hpbench crr DST PORT SECONDS MAX PAR    TCP connect, request, response, close: PAR at once,
 *                                           at most MAX in all; prints {"done":..,"failed":..}
 *   hpbench urr DST PORT SECONDS MAX PAR    the same over UDP: a new socket (a new flow) per
 *                                           request
 * Every loop is bounded by SECONDS (at most 600) and by its count.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SECONDS 600.0
#define MAX_BURST 1024          /* a late wake-up catches up at most this much */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "hpbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double seconds_arg(const char *s)
{
    double v = atof(s);
    return v < 0 ? 0 : v > MAX_SECONDS ? MAX_SECONDS : v;
}

static struct sockaddr_in addr_of(const char *ip, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "hpbench: bad address %s\n", ip);
        exit(2);
    }
    return a;
}

static void sleep_until(double t)
{
    double d = t - now();
    if (d <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)d, .tv_nsec = (long)((d - (time_t)d) * 1e9)};
    nanosleep(&ts, NULL);
}

/* user + system time of this process, the kernel work done inside its system calls included
 * (with tick accounting, softirq work run on the way out of a send() is charged to it) */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* --- send ------------------------------------------------------------------------------- */

struct frame {
    struct ether_header eth;              /* sent only on the AF_PACKET path */
    struct iphdr ip;
    struct udphdr udp;
    unsigned char payload[1472];
} __attribute__((packed));

static uint16_t ip_checksum(const void *hdr, size_t len)
{
    const uint16_t *w = hdr;
    uint32_t sum = 0;
    for (size_t i = 0; i < len / 2; i++)
        sum += w[i];
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) {
        fprintf(stderr, "hpbench: bad MAC %s\n", s);
        exit(2);
    }
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
}

/* An AF_PACKET socket bound to ifname that hands frames straight to the driver (no qdisc);
 * fills in the frame's Ethernet source. */
static int packet_socket(const char *ifname, struct ether_header *eth)
{
    int fd = socket(AF_PACKET, SOCK_RAW, 0);      /* protocol 0: receives nothing */
    if (fd < 0)
        die("AF_PACKET socket (needs root)");
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
        die("the interface's MAC");
    memcpy(eth->ether_shost, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(ifname)};
    if (!ll.sll_ifindex || bind(fd, (void *)&ll, sizeof ll) < 0)
        die("binding to the interface");
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0)
        die("PACKET_QDISC_BYPASS");
    return fd;
}

static int cmd_send(int argc, char **argv)
{
    if (argc != 11 && argc != 12 && argc != 14)
        return 2;
    struct sockaddr_in dst = addr_of(argv[2], 0);
    uint64_t count = argc >= 12 ? strtoull(argv[11], NULL, 10) : 0;
    const char *ifname = argc == 14 ? argv[12] : NULL;
    uint32_t dport = atoi(argv[3]), ndports = atoi(argv[4]);
    uint32_t sport = atoi(argv[5]), nsports = atoi(argv[6]);
    double rate = atof(argv[7]), seconds = seconds_arg(argv[8]);
    uint64_t index = strtoull(argv[9], NULL, 10);
    size_t payload = atoi(argv[10]);
    if (ndports < 1 || nsports < 1 || payload > sizeof(((struct frame *)0)->payload))
        return 2;

    /* the source address the kernel would pick for dst */
    int probe = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in src;
    socklen_t sl = sizeof src;
    dst.sin_port = htons(9);
    if (probe < 0 || connect(probe, (void *)&dst, sizeof dst) < 0 ||
        getsockname(probe, (void *)&src, &sl) < 0)
        die("finding the source address");
    close(probe);
    dst.sin_port = 0;

    static struct frame d[BATCH];
    struct ether_header eth = {.ether_type = htons(ETHERTYPE_IP)};
    int fd;
    size_t skip = sizeof eth;                     /* where what is sent starts in a frame */
    if (ifname) {
        parse_mac(argv[13], eth.ether_dhost);
        fd = packet_socket(ifname, &eth);
        skip = 0;
    } else {
        fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
        if (fd < 0)
            die("raw socket (needs root)");
        if (connect(fd, (void *)&dst, sizeof dst) < 0)
            die("connect");
    }
    /* room for the datagrams queued on the way (veth backlogs hold on to their buffers), and
     * never blocking: a datagram the path cannot take now is offered and lost, not waited for
     * (a sender that waits offers less than it says) */
    int sndbuf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
    prctl(PR_SET_TIMERSLACK, 1000UL);

    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(&d[i], 0, sizeof d[i]);
        d[i].eth = eth;
        d[i].ip.version = 4;
        d[i].ip.ihl = 5;
        d[i].ip.ttl = 64;
        d[i].ip.protocol = IPPROTO_UDP;
        d[i].ip.saddr = src.sin_addr.s_addr;
        d[i].ip.daddr = dst.sin_addr.s_addr;
        d[i].ip.tot_len = htons((uint16_t)(28 + payload));
        d[i].ip.check = ip_checksum(&d[i].ip, sizeof d[i].ip);   /* the raw socket's own */
        d[i].udp.len = htons((uint16_t)(8 + payload));
        d[i].udp.check = 0;                   /* none: IPv4 allows it, every middle keeps it */
        iov[i].iov_base = (char *)&d[i] + skip;
        iov[i].iov_len = sizeof eth - skip + 28 + payload;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    uint64_t offered = 0, sent = 0, errors = 0;
    double start = now(), base = start, end = start + seconds;
    for (;;) {
        double t = now();
        if (t >= end || (count && offered >= count))
            break;
        uint64_t due = rate > 0 ? (uint64_t)((t - base) * rate) + 1 : offered + BATCH;
        if (due <= offered) {
            sleep_until(base + (offered + 1) / rate);
            continue;
        }
        if (due - offered > MAX_BURST) {        /* we fell behind: forgive the debt */
            base += (double)(due - offered - MAX_BURST) / rate;
            due = offered + MAX_BURST;
        }
        if (count && due > count)
            due = count;
        unsigned n = due - offered > BATCH ? BATCH : (unsigned)(due - offered);
        for (unsigned i = 0; i < n; i++) {
            uint64_t k = index + offered + i;
            d[i].udp.source = htons((uint16_t)(sport + k % nsports));
            d[i].udp.dest = htons((uint16_t)(dport + (k / nsports) % ndports));
        }
        int r = sendmmsg(fd, msgs, n, MSG_DONTWAIT);
        if (r < 0) {
            if (errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED && errno != EPERM &&
                errno != EHOSTUNREACH && errno != ENETUNREACH && errno != ENETDOWN)
                die("sendmmsg");
            errors++;
            offered++;                          /* that datagram was offered and lost */
            continue;
        }
        offered += r;
        sent += r;
    }
    printf("{\"offered\": %llu, \"sent\": %llu, \"errors\": %llu, \"elapsed\": %.6f, "
           "\"next\": %llu, \"cpu_s\": %.4f, \"via\": \"%s\"}\n", (unsigned long long)offered,
           (unsigned long long)sent, (unsigned long long)errors, now() - start,
           (unsigned long long)(index + offered), cpu_seconds(), ifname ? "packet" : "raw");
    return 0;
}

/* --- echo / ping ------------------------------------------------------------------------ */

static int udp_bound(int port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (void *)&a, sizeof a) < 0)
        die("bind");
    return fd;
}

static int cmd_echo(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int fd = udp_bound(atoi(argv[2]));
    double end = now() + seconds_arg(argv[3]);
    unsigned char buf[2048];
    while (now() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (void *)&from, &fl);
        if (n > 0)
            sendto(fd, buf, n, 0, (void *)&from, fl);
    }
    return 0;
}

static int cmd_ping(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    struct sockaddr_in dst = addr_of(argv[2], atoi(argv[3]));
    long count = atol(argv[4]);
    double gap = atof(argv[5]) * 1e-6, end = now() + MAX_SECONDS;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (void *)&dst, sizeof dst) < 0)
        die("ping socket");
    printf("[");
    for (long seq = 0; seq < count && now() < end; seq++) {
        uint64_t msg[3] = {(uint64_t)seq, 0, 0}, back[3];
        double t0 = now(), rtt = -1;
        if (send(fd, msg, sizeof msg, 0) == sizeof msg) {
            double deadline = t0 + 0.1;
            while (now() < deadline) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                int ms = (int)((deadline - now()) * 1000) + 1;
                if (poll(&p, 1, ms) <= 0)
                    continue;
                if (recv(fd, back, sizeof back, 0) == sizeof back && back[0] == (uint64_t)seq) {
                    rtt = now() - t0;
                    break;
                }
            }
        }
        printf("%s%.0f", seq ? "," : "", rtt < 0 ? -1.0 : rtt * 1e9);
        sleep_until(t0 + gap);
    }
    printf("]\n");
    return 0;
}

/* --- TCP and UDP request/response -------------------------------------------------------- */

static const char REQUEST[] = "GET /\n", RESPONSE[] = "200 OK\n";

static int cmd_tcpsrv(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (void *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0)
        die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    double end = now() + seconds_arg(argv[3]);
    struct epoll_event evs[256];
    char buf[512];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (int k = 0; k < 256; k++) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0)
                        break;
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0 && memchr(buf, '\n', r)) {
                if (write(fd, RESPONSE, sizeof RESPONSE - 1) < 0)
                    r = 0;
            }
            if (r == 0 || (r < 0 && errno != EAGAIN))
                close(fd);                      /* the client closed (or broke): so do we */
        }
    }
    return 0;
}

struct slot {
    int fd;
    double started;
};

/* One request/response exchange per new socket, `par` at once; `stream` picks TCP or UDP. */
static int request_loop(int argc, char **argv, int stream)
{
    if (argc != 7)
        return 2;
    struct sockaddr_in dst = addr_of(argv[2], atoi(argv[3]));
    double seconds = seconds_arg(argv[4]);
    long max = atol(argv[5]);
    int par = atoi(argv[6]);
    if (par < 1 || par > 1024)
        return 2;
    int ep = epoll_create1(0);
    struct slot *slots = calloc(par, sizeof *slots);
    long started = 0, done = 0, failed = 0;
    double start = now(), end = start + seconds;
    char buf[256];

    for (;;) {
        double t = now();
        for (int i = 0; i < par; i++) {         /* time out stuck exchanges, start new ones */
            struct slot *s = &slots[i];
            if (s->fd > 0 && t - s->started > 1.0) {
                close(s->fd);
                s->fd = 0;
                failed++;
            }
            if (s->fd == 0 && started < max && t < end) {
                int fd = socket(AF_INET, (stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK, 0);
                if (fd < 0)
                    die("socket");
                if (connect(fd, (void *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
                    close(fd);
                    failed++;
                    started++;
                    continue;
                }
                if (!stream && send(fd, REQUEST, sizeof REQUEST - 1, 0) < 0) {
                    close(fd);
                    failed++;
                    started++;
                    continue;
                }
                struct epoll_event ev = {.events = stream ? EPOLLOUT : EPOLLIN, .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                s->fd = fd;
                s->started = t;
                started++;
            }
        }
        int busy = 0;
        for (int i = 0; i < par; i++)
            busy += slots[i].fd > 0;
        if (busy == 0)
            break;
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 10);
        for (int k = 0; k < n; k++) {
            struct slot *s = &slots[evs[k].data.u32];
            if (s->fd <= 0)
                continue;
            if (evs[k].events & (EPOLLERR | EPOLLHUP) && !(evs[k].events & EPOLLIN)) {
                close(s->fd);
                s->fd = 0;
                failed++;
                continue;
            }
            if (evs[k].events & EPOLLOUT) {     /* TCP connected: send the request */
                if (write(s->fd, REQUEST, sizeof REQUEST - 1) < 0) {
                    close(s->fd);
                    s->fd = 0;
                    failed++;
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[k].data.u32};
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            ssize_t r = recv(s->fd, buf, sizeof buf, 0);
            if (r > 0 && memchr(buf, '\n', r)) {
                done++;
                close(s->fd);
                s->fd = 0;
            } else if (r == 0 || (r < 0 && errno != EAGAIN)) {
                close(s->fd);
                s->fd = 0;
                failed++;
            }
        }
    }
    printf("{\"done\": %ld, \"failed\": %ld, \"elapsed\": %.6f}\n", done, failed, now() - start);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 2;
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    if (argc >= 2) {
        const char *c = argv[1];
        rc = !strcmp(c, "send")     ? cmd_send(argc, argv)
             : !strcmp(c, "echo")   ? cmd_echo(argc, argv)
             : !strcmp(c, "ping")   ? cmd_ping(argc, argv)
             : !strcmp(c, "tcpsrv") ? cmd_tcpsrv(argc, argv)
             : !strcmp(c, "crr")    ? request_loop(argc, argv, 1)
             : !strcmp(c, "urr")    ? request_loop(argc, argv, 0)
                                    : 2;
    }
    if (rc == 2)
        fprintf(stderr, "usage: see the comment at the top of hpbench.c\n");
    fflush(stdout);
    return rc;
}
