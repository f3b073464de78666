/*
 * ring.c - the host<->DPU channel: a single-producer, single-consumer ring
 * in shared memory (see dpdpu_ring.h for the model and the contract).
 *
 * Layout of the region: a 4 KiB header (below), then the data area.  The
 * header's first line is written once by the creator before it stores the
 * magic; every other line is written by one side only, so the two sides
 * never write the same cache line on the fast path.
 *
 * A record is {u32 len, u32 kind} followed by len payload bytes, padded to
 * 8 bytes.  Records never straddle the end of the data area: a PAD record
 * fills the tail instead.  A bulk message is a FIRST record, MORE records
 * and a LAST record, each starting on a 64-byte boundary with a 56-byte
 * prefix (in FIRST, the u64 length of the whole message) so that its data
 * is cache-line aligned; ABORT tells the consumer that the message in
 * progress was dropped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "dpdpu_ring.h"
#include "internal.h"

#define RING_MAGIC 0x474e5255504450ull /* "DPDPURNG" minus the last byte, little endian */
#define RING_VERSION 1u
#define RING_HDR_SIZE 4096u
#define CACHE_LINE 64
#define SLICE_NS ((uint64_t)DPDPU_RING_SLICE_US * 1000)
#define PATH_CAP (DPDPU_RING_NAME_MAX + 64)
/* Bulk chunks: where their data starts, and what their lengths are multiples of. */
#define BULK_ALIGN 64u
#define BULK_PREFIX (BULK_ALIGN - sizeof(struct rec_hdr))
#define DEFAULT_CHUNK ((uint64_t)1 << 20)

enum rec_kind {
    REC_MSG = 1,
    REC_PAD = 2,
    REC_FIRST = 3,
    REC_MORE = 4,
    REC_LAST = 5,
    REC_ABORT = 6
};

struct rec_hdr {
    uint32_t len;
    uint32_t kind;
};

struct ring_hdr {
    /* Written by the creator before the magic; read-only afterwards. */
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t capacity;
    uint64_t file_size;
    uint64_t max_message;
    uint32_t creator_role;
    uint32_t reserved0;
    char pad0[CACHE_LINE - 48];

    /* Producer position: bytes ever published. */
    uint64_t tail;
    char pad1[CACHE_LINE - 8];

    /* Consumer position: bytes ever released. */
    uint64_t head;
    char pad2[CACHE_LINE - 8];

    /* Doorbell the consumer sleeps on; the producer bumps data_seq. */
    uint32_t data_seq;
    uint32_t cons_sleeping;
    char pad3[CACHE_LINE - 8];

    /* Doorbell the producer sleeps on; the consumer bumps room_seq. */
    uint32_t room_seq;
    uint32_t prod_sleeping;
    char pad4[CACHE_LINE - 8];

    /* Who holds each end, indexed by enum dpdpu_ring_role. */
    int32_t pid[2];
    uint32_t closed[2];
    uint32_t dead[2];
    uint64_t start[2]; /* process start time (clock ticks after boot), against pid reuse */
    char pad5[CACHE_LINE - 40];
} __attribute__((aligned(CACHE_LINE)));

_Static_assert(sizeof(struct ring_hdr) == 6 * CACHE_LINE, "ring header lines");
_Static_assert(sizeof(struct ring_hdr) <= RING_HDR_SIZE, "ring header size");

/* One mapping of a region, shared by the handles of this process that use it. */
struct ring_map {
    void *base;
    size_t size;
    int64_t refs; /* __atomic */
};

/* Where the consumer is; saved at each release so that peeks can be undone. */
struct rx_state {
    uint64_t cur;   /* next record to read */
    uint64_t total; /* length of the bulk message in progress */
    uint64_t off;   /* bytes of it passed so far */
    int in_bulk;
    uint32_t spans;    /* spans peeked since the last release */
    uint64_t messages; /* messages completed since the last release */
    uint64_t bytes;
};

struct dpdpu_ring {
    struct ring_hdr *h;
    uint8_t *data;
    uint64_t cap;
    uint64_t mask;
    uint64_t max_msg;
    uint32_t role;
    int creator;
    pid_t pid;  /* process that opened the handle */
    int closed; /* __atomic: any thread may close */
    int64_t spin_ns;
    struct ring_map *map;
    char path[PATH_CAP]; /* removed at close when creator is set */

    /* producer */
    uint64_t wpos;      /* end of the last reservation */
    uint64_t published; /* what tail was last set to */
    uint64_t head_cache;
    uint64_t pending_msgs;
    uint64_t pending_bytes;
    int tx_active; /* a bulk message left half sent */
    const void *tx_data;
    uint64_t tx_total;
    uint64_t tx_done;

    /* consumer */
    uint64_t tail_cache;
    struct rx_state rx;
    struct rx_state rx_saved;

    /* Counters, and where a bulk message left half done stands: written by
     * the thread using the handle (count(), note_partial()), read by
     * dpdpu_ring_stats() from any thread. */
    struct dpdpu_ring_stats st;
};

static uint32_t tmp_counter;

/* --- helpers ------------------------------------------------------------- */

/* Add to a counter of st: one writer, so a plain read and an atomic store. */
static inline void count(uint64_t *counter, uint64_t n)
{
    __atomic_store_n(counter, *counter + n, __ATOMIC_RELAXED);
}

static inline void cpu_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static inline uint64_t rec_size(uint64_t len)
{
    return sizeof(struct rec_hdr) + ((len + 7) & ~(uint64_t)7);
}

/* Half the ring: a record this long, plus the padding that may precede it,
 * always fits in an empty ring, so a send never depends on the consumer
 * stepping over padding first. */
static inline uint64_t ring_max_message(uint64_t cap)
{
    return cap / 2 - sizeof(struct rec_hdr);
}

static int futex_wait(uint32_t *word, uint32_t expected, int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    /* Not FUTEX_PRIVATE: the word is shared with another process. */
    if (syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0) == 0)
        return 0;
    return errno;
}

static void futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Fields 3 (state) and 22 (start time) of /proc/PID/stat.
 * \return 1 when read, 0 when the process does not exist, -1 if unknown */
static int proc_stat(int32_t pid, char *state, uint64_t *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    if (n <= 0)
        return n < 0 && err == ESRCH ? 0 : -1;
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses. */
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ' || p[2] == '\0')
        return -1;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return -1;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 1;
}

static uint64_t my_start_time(void)
{
    char state;
    uint64_t start = 0;
    return proc_stat((int32_t)getpid(), &state, &start) == 1 ? start : 0;
}

/* A zombie counts as dead: a killed child stays one until its parent, which
 * may be the very process blocked on the ring, reaps it. */
static int process_alive(int32_t pid, uint64_t start)
{
    char state;
    uint64_t started = 0;
    if (pid == (int32_t)getpid())
        return 1;
    int rc = proc_stat(pid, &state, &started);
    if (rc == 0)
        return 0;
    if (rc < 0)
        return !(kill(pid, 0) < 0 && errno == ESRCH);
    if (state == 'Z' || state == 'X' || state == 'x')
        return 0;
    return start == 0 || started == start;
}

static inline uint32_t peer_of(const struct dpdpu_ring *r)
{
    return r->role ^ 1u;
}

static inline int peer_gone(const struct dpdpu_ring *r)
{
    uint32_t p = peer_of(r);
    return __atomic_load_n(&r->h->closed[p], __ATOMIC_ACQUIRE) || __atomic_load_n(&r->h->dead[p], __ATOMIC_ACQUIRE);
}

/* Record the peer as dead if its process has gone. */
static void check_peer_alive(struct dpdpu_ring *r)
{
    uint32_t p = peer_of(r);
    int32_t pid = __atomic_load_n(&r->h->pid[p], __ATOMIC_ACQUIRE);
    if (pid <= 0 || __atomic_load_n(&r->h->closed[p], __ATOMIC_ACQUIRE))
        return;
    if (!process_alive(pid, __atomic_load_n(&r->h->start[p], __ATOMIC_ACQUIRE)))
        __atomic_store_n(&r->h->dead[p], 1, __ATOMIC_RELEASE);
}

/* Is what this end waits for there?  Producer: need bytes of room;
 * consumer: a record it has not read. */
static inline int ready(struct dpdpu_ring *r, uint64_t need)
{
    if (r->role == DPDPU_RING_CONSUMER) {
        r->tail_cache = __atomic_load_n(&r->h->tail, __ATOMIC_ACQUIRE);
        return r->tail_cache != r->rx.cur;
    }
    r->head_cache = __atomic_load_n(&r->h->head, __ATOMIC_ACQUIRE);
    return r->cap - (r->wpos - r->head_cache) >= need;
}

/* SHUTDOWN if the wait cannot succeed any more, else 0.  A consumer whose
 * producer is gone still takes what was published before. */
static inline int ended(struct dpdpu_ring *r, uint64_t need)
{
    if (__atomic_load_n(&r->closed, __ATOMIC_ACQUIRE))
        return DPDPU_ERR_SHUTDOWN;
    if (!peer_gone(r))
        return 0;
    if (r->role == DPDPU_RING_CONSUMER && ready(r, need))
        return 1;
    return DPDPU_ERR_SHUTDOWN;
}

/* Wake the peer if it announced that it sleeps. */
static void doorbell(struct dpdpu_ring *r)
{
    uint32_t *seq, *sleeping;
    if (r->role == DPDPU_RING_PRODUCER) {
        seq = &r->h->data_seq;
        sleeping = &r->h->cons_sleeping;
    } else {
        seq = &r->h->room_seq;
        sleeping = &r->h->prod_sleeping;
    }
    /* Orders our position store before reading the flag; the sleeper orders
     * its flag store before reading our position, so one of us sees the other. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleeping, __ATOMIC_RELAXED) && __atomic_exchange_n(sleeping, 0, __ATOMIC_ACQ_REL)) {
        __atomic_fetch_add(seq, 1, __ATOMIC_RELEASE);
        futex_wake(seq);
        count(&r->st.wakeups, 1);
    }
}

/* Wait until ready(r, need): poll for spin_ns, then sleep on the doorbell
 * in slices, checking after each timed-out sleep that the peer lives.
 * \return 0, AGAIN (deadline DPDPU__NO_WAIT), TIMEOUT, SHUTDOWN */
static int wait_for(struct dpdpu_ring *r, uint64_t need, uint64_t deadline)
{
    int consumer = r->role == DPDPU_RING_CONSUMER;
    uint32_t *seq = consumer ? &r->h->data_seq : &r->h->room_seq;
    uint32_t *sleeping = consumer ? &r->h->cons_sleeping : &r->h->prod_sleeping;
    int rc;

    if (ready(r, need))
        return 0;
    if ((rc = ended(r, need)))
        return rc > 0 ? 0 : rc;
    if (deadline == DPDPU__NO_WAIT)
        return DPDPU_ERR_AGAIN;

    uint64_t t = dpdpu__now_ns();
    uint64_t spin_end = t + (uint64_t)r->spin_ns;
    for (uint32_t i = 1; t < spin_end && t < deadline; i++) {
        cpu_pause();
        if (ready(r, need))
            return 0;
        if ((i & 63) == 0) {
            if ((rc = ended(r, need)))
                return rc > 0 ? 0 : rc;
            t = dpdpu__now_ns();
            /* The peer may be waiting for this very core. */
            if ((i & 1023) == 0)
                sched_yield();
        }
    }
    for (;;) {
        uint32_t s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        __atomic_store_n(sleeping, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (ready(r, need)) {
            __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
            return 0;
        }
        if ((rc = ended(r, need))) {
            __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
            return rc > 0 ? 0 : rc;
        }
        t = dpdpu__now_ns();
        if (t >= deadline) {
            __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
            check_peer_alive(r);
            if ((rc = ended(r, need)))
                return rc > 0 ? 0 : rc;
            return DPDPU_ERR_TIMEOUT;
        }
        uint64_t slice = deadline - t < SLICE_NS ? deadline - t : SLICE_NS;
        count(&r->st.waits, 1);
        int err = futex_wait(seq, s, (int64_t)slice);
        __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
        if (err == ETIMEDOUT)
            check_peer_alive(r);
    }
}

static int build_path(const char *name, char *path)
{
    size_t n = strlen(name);
    if (n == 0 || n > DPDPU_RING_NAME_MAX)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (name[0] == '/') {
        memcpy(path, name, n + 1);
        return 0;
    }
    if (strchr(name, '/') != NULL || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    snprintf(path, PATH_CAP, "/dev/shm/%s", name);
    return 0;
}

static int errno_status(int err)
{
    switch (err) {
    case ENOMEM:
    case ENOSPC:
        return DPDPU_ERR_NO_MEMORY;
    case EEXIST:
        return DPDPU_ERR_IN_USE;
    default:
        return DPDPU_ERR_INVALID_ARGUMENT;
    }
}

static void map_put(struct ring_map *m)
{
    if (__atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        munmap(m->base, m->size);
        free(m);
    }
}

/* A handle on a mapped, validated region; takes over one reference of m. */
static int make_handle(struct ring_map *m, uint32_t role, int creator, const char *path, struct dpdpu_ring **out)
{
    struct dpdpu_ring *r = calloc(1, sizeof *r);
    if (r == NULL)
        return DPDPU_ERR_NO_MEMORY;
    r->map = m;
    r->h = m->base;
    r->data = (uint8_t *)m->base + RING_HDR_SIZE;
    r->cap = r->h->capacity;
    r->mask = r->cap - 1;
    r->max_msg = r->h->max_message;
    r->role = role;
    r->creator = creator && path != NULL;
    if (r->creator)
        snprintf(r->path, sizeof r->path, "%s", path);
    r->pid = getpid();
    r->spin_ns = (int64_t)DPDPU_RING_DEFAULT_SPIN_US * 1000;
    /* Attaching to a ring in use starts from where the previous holder of
     * the other end left off. */
    r->wpos = r->published = __atomic_load_n(&r->h->tail, __ATOMIC_ACQUIRE);
    r->head_cache = __atomic_load_n(&r->h->head, __ATOMIC_ACQUIRE);
    r->rx.cur = r->head_cache;
    r->tail_cache = r->rx.cur;
    r->rx_saved = r->rx;
    *out = r;
    return 0;
}

/* Take end `role` of the ring for this process. */
static int claim(struct ring_hdr *h, uint32_t role)
{
    int32_t expected = 0;
    if (!__atomic_compare_exchange_n(&h->pid[role], &expected, (int32_t)getpid(), 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return DPDPU_ERR_IN_USE;
    __atomic_store_n(&h->start[role], my_start_time(), __ATOMIC_RELEASE);
    return 0;
}

static inline int check_end(struct dpdpu_ring *r, uint32_t role)
{
    if (r == NULL || r->role != role)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_load_n(&r->closed, __ATOMIC_RELAXED))
        return DPDPU_ERR_SHUTDOWN;
    return 0;
}

/* --- lifecycle ------------------------------------------------------------ */

int dpdpu_ring_create(const char *name, uint64_t capacity, uint32_t flags, struct dpdpu_ring **out)
{
    char path[PATH_CAP], tmp[PATH_CAP + 48];
    uint64_t cap = DPDPU_RING_MIN_CAPACITY;
    int rc, fd = -1;

    if (out == NULL || flags > DPDPU_RING_CREATE_CONSUMER || capacity > DPDPU_RING_MAX_CAPACITY)
        return DPDPU_ERR_INVALID_ARGUMENT;
    while (cap < capacity)
        cap <<= 1;
    size_t size = RING_HDR_SIZE + cap;

    void *base;
    if (name == NULL) {
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED)
            return DPDPU_ERR_NO_MEMORY;
    } else {
        if ((rc = build_path(name, path)))
            return rc;
        /* Built under a temporary name and published with link(), which
         * fails if the name exists: nobody can attach to a half-made ring. */
        snprintf(tmp, sizeof tmp, "%s.%d.%u.tmp", path, (int)getpid(),
                 __atomic_fetch_add(&tmp_counter, 1, __ATOMIC_RELAXED));
        fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return errno == EEXIST ? DPDPU_ERR_IN_USE : errno_status(errno);
        if (ftruncate(fd, (off_t)size) != 0) {
            rc = errno_status(errno);
            close(fd);
            unlink(tmp);
            return rc;
        }
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (base == MAP_FAILED) {
            unlink(tmp);
            return DPDPU_ERR_NO_MEMORY;
        }
    }

    struct ring_hdr *h = base;
    memset(h, 0, RING_HDR_SIZE);
    h->version = RING_VERSION;
    h->hdr_size = RING_HDR_SIZE;
    h->capacity = cap;
    h->file_size = size;
    h->max_message = ring_max_message(cap);
    h->creator_role = flags;
    h->pid[flags] = (int32_t)getpid();
    h->start[flags] = my_start_time();
    __atomic_store_n(&h->magic, RING_MAGIC, __ATOMIC_RELEASE);

    if (name != NULL) {
        if (link(tmp, path) != 0) {
            rc = errno_status(errno);
            unlink(tmp);
            munmap(base, size);
            return rc;
        }
        unlink(tmp);
    }

    struct ring_map *m = malloc(sizeof *m);
    if (m == NULL) {
        if (name != NULL)
            unlink(path);
        munmap(base, size);
        return DPDPU_ERR_NO_MEMORY;
    }
    m->base = base;
    m->size = size;
    m->refs = 1;
    rc = make_handle(m, flags, 1, name != NULL ? path : NULL, out);
    if (rc) {
        if (name != NULL)
            unlink(path);
        map_put(m);
    }
    return rc;
}

/* Is the header one this build can use, describing a region of file_size bytes? */
static int header_valid(const struct ring_hdr *h, uint64_t file_size)
{
    uint64_t cap = h->capacity;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != RING_MAGIC || h->version != RING_VERSION ||
        h->hdr_size != RING_HDR_SIZE)
        return 0;
    if (cap < DPDPU_RING_MIN_CAPACITY || cap > DPDPU_RING_MAX_CAPACITY || (cap & (cap - 1)) != 0)
        return 0;
    if (h->file_size != RING_HDR_SIZE + cap || file_size != h->file_size)
        return 0;
    if (h->max_message != ring_max_message(cap) || h->creator_role > DPDPU_RING_CREATE_CONSUMER)
        return 0;
    uint64_t tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    uint64_t head = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    return head <= tail && tail - head <= cap && (head & 7) == 0 && (tail & 7) == 0;
}

int dpdpu_ring_attach(const char *name, struct dpdpu_ring **out)
{
    char path[PATH_CAP];
    struct stat sb;
    int rc;

    if (name == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((rc = build_path(name, path)))
        return rc;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOMEM ? DPDPU_ERR_NO_MEMORY : DPDPU_ERR_INVALID_ARGUMENT;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return DPDPU_ERR_INVALID_ARGUMENT;
    }
    if ((uint64_t)sb.st_size < RING_HDR_SIZE + DPDPU_RING_MIN_CAPACITY ||
        (uint64_t)sb.st_size > RING_HDR_SIZE + (uint64_t)DPDPU_RING_MAX_CAPACITY) {
        close(fd);
        return DPDPU_ERR_CORRUPT_DATA;
    }
    size_t size = (size_t)sb.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED)
        return DPDPU_ERR_NO_MEMORY;
    struct ring_hdr *h = base;
    if (!header_valid(h, size)) {
        munmap(base, size);
        return DPDPU_ERR_CORRUPT_DATA;
    }
    uint32_t role = h->creator_role ^ 1u;
    struct ring_map *m = malloc(sizeof *m);
    if (m == NULL) {
        munmap(base, size);
        return DPDPU_ERR_NO_MEMORY;
    }
    m->base = base;
    m->size = size;
    m->refs = 1;
    if ((rc = claim(h, role)) || (rc = make_handle(m, role, 0, NULL, out))) {
        map_put(m);
        return rc;
    }
    return 0;
}

int dpdpu_ring_open_peer(struct dpdpu_ring *ring, struct dpdpu_ring **out)
{
    int rc;
    if (ring == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    uint32_t role = peer_of(ring);
    if ((rc = claim(ring->h, role)))
        return rc;
    __atomic_add_fetch(&ring->map->refs, 1, __ATOMIC_ACQ_REL);
    if ((rc = make_handle(ring->map, role, 0, NULL, out))) {
        __atomic_store_n(&ring->h->pid[role], 0, __ATOMIC_RELEASE);
        map_put(ring->map);
    }
    return rc;
}

int dpdpu_ring_close(struct dpdpu_ring *ring)
{
    if (ring == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_exchange_n(&ring->closed, 1, __ATOMIC_ACQ_REL))
        return 0;
    /* A copy inherited through fork() must not end the parent's session. */
    if (ring->pid != getpid())
        return 0;
    struct ring_hdr *h = ring->h;
    __atomic_store_n(&h->closed[ring->role], 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    /* Both doorbells: the peer's, and our own for threads of this process
     * blocked on this handle. */
    __atomic_fetch_add(&h->data_seq, 1, __ATOMIC_RELEASE);
    __atomic_fetch_add(&h->room_seq, 1, __ATOMIC_RELEASE);
    futex_wake(&h->data_seq);
    futex_wake(&h->room_seq);
    if (ring->creator)
        unlink(ring->path);
    return 0;
}

void dpdpu_ring_free(struct dpdpu_ring *ring)
{
    if (ring == NULL)
        return;
    dpdpu_ring_close(ring);
    map_put(ring->map);
    free(ring);
}

int dpdpu_ring_unlink(const char *name)
{
    char path[PATH_CAP];
    int rc;
    if (name == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((rc = build_path(name, path)))
        return rc;
    return unlink(path) == 0 ? 0 : DPDPU_ERR_INVALID_ARGUMENT;
}

int dpdpu_ring_set_spin(struct dpdpu_ring *ring, int64_t spin_us)
{
    if (ring == NULL || spin_us < 0 || spin_us > 1000000)
        return DPDPU_ERR_INVALID_ARGUMENT;
    ring->spin_ns = spin_us * 1000;
    return 0;
}

int dpdpu_ring_stats(struct dpdpu_ring *ring, struct dpdpu_ring_stats *out)
{
    if (ring == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    struct ring_hdr *h = ring->h;
    const struct dpdpu_ring_stats *st = &ring->st;
    uint32_t p = peer_of(ring);
    memset(out, 0, sizeof *out);
    out->messages = __atomic_load_n(&st->messages, __ATOMIC_RELAXED);
    out->bytes = __atomic_load_n(&st->bytes, __ATOMIC_RELAXED);
    out->batches = __atomic_load_n(&st->batches, __ATOMIC_RELAXED);
    out->waits = __atomic_load_n(&st->waits, __ATOMIC_RELAXED);
    out->wakeups = __atomic_load_n(&st->wakeups, __ATOMIC_RELAXED);
    out->partial_total = __atomic_load_n(&st->partial_total, __ATOMIC_RELAXED);
    out->partial_done = __atomic_load_n(&st->partial_done, __ATOMIC_RELAXED);
    out->capacity = ring->cap;
    out->max_message = ring->max_msg;
    /* Head first: it never passes the tail read after it.  Both move while
     * another thread uses the ring, so the difference is clamped. */
    uint64_t head = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    out->used = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE) - head;
    if (out->used > ring->cap)
        out->used = ring->cap;
    out->role = ring->role;
    out->closed = __atomic_load_n(&ring->closed, __ATOMIC_ACQUIRE);
    out->peer_pid = __atomic_load_n(&h->pid[p], __ATOMIC_ACQUIRE);
    if (out->peer_pid == 0)
        out->peer = DPDPU_RING_PEER_NONE;
    else if (__atomic_load_n(&h->closed[p], __ATOMIC_ACQUIRE))
        out->peer = DPDPU_RING_PEER_CLOSED;
    else {
        if (!__atomic_load_n(&h->dead[p], __ATOMIC_ACQUIRE))
            check_peer_alive(ring);
        out->peer = __atomic_load_n(&h->dead[p], __ATOMIC_ACQUIRE) ? DPDPU_RING_PEER_DEAD : DPDPU_RING_PEER_ALIVE;
    }
    return 0;
}

/* Record for dpdpu_ring_stats() where a bulk message left half sent or half
 * received stands; called whenever a call may have changed it. */
static void note_partial(struct dpdpu_ring *r)
{
    uint64_t total = 0, done = 0;

    if (r->role == DPDPU_RING_PRODUCER && r->tx_active) {
        total = r->tx_total;
        done = r->tx_done;
    } else if (r->role == DPDPU_RING_CONSUMER && r->rx.in_bulk) {
        total = r->rx.total;
        done = r->rx.off;
    }
    __atomic_store_n(&r->st.partial_total, total, __ATOMIC_RELAXED);
    __atomic_store_n(&r->st.partial_done, done, __ATOMIC_RELAXED);
}

/* --- producer ------------------------------------------------------------- */

/* Make the records reserved so far visible with one store. */
static int publish(struct dpdpu_ring *r)
{
    int n = (int)r->pending_msgs;
    if (r->wpos == r->published)
        return 0;
    __atomic_store_n(&r->h->tail, r->wpos, __ATOMIC_RELEASE);
    r->published = r->wpos;
    count(&r->st.batches, 1);
    count(&r->st.messages, r->pending_msgs);
    count(&r->st.bytes, r->pending_bytes);
    r->pending_msgs = r->pending_bytes = 0;
    doorbell(r);
    return n;
}

static int room(struct dpdpu_ring *r, uint64_t need, uint64_t deadline)
{
    if (r->cap - (r->wpos - r->head_cache) >= need)
        return 0;
    r->head_cache = __atomic_load_n(&r->h->head, __ATOMIC_ACQUIRE);
    if (r->cap - (r->wpos - r->head_cache) >= need)
        return 0;
    /* The consumer may be waiting for what we reserved. */
    publish(r);
    return wait_for(r, need, deadline);
}

static inline void write_hdr(uint8_t *at, uint64_t len, uint32_t kind)
{
    struct rec_hdr hdr = {(uint32_t)len, kind};
    memcpy(at, &hdr, sizeof hdr);
}

/* Reserve one record of a len-byte payload; *payload is where to write it. */
static int reserve_rec(struct dpdpu_ring *r, uint64_t len, uint32_t kind, uint8_t **payload, uint64_t deadline)
{
    uint64_t size = rec_size(len);
    uint64_t off = r->wpos & r->mask;
    int rc;

    if (size > r->cap)
        return DPDPU_ERR_TOO_LARGE;
    if (r->cap - off < size) {
        uint64_t pad = r->cap - off;
        if ((rc = room(r, pad, deadline)))
            return rc;
        write_hdr(r->data + off, pad - sizeof(struct rec_hdr), REC_PAD);
        r->wpos += pad;
        off = 0;
    }
    if ((rc = room(r, size, deadline)))
        return rc;
    write_hdr(r->data + off, len, kind);
    r->wpos += size;
    *payload = r->data + off + sizeof(struct rec_hdr);
    return 0;
}

/* Pad up to the next BULK_ALIGN boundary.  A copy between addresses that
 * are not equally aligned runs at a fraction of the speed of an aligned one,
 * and the consumer's buffer is usually aligned. */
static int align_wpos(struct dpdpu_ring *r, uint64_t deadline)
{
    uint64_t mis = r->wpos & (BULK_ALIGN - 1);
    if (mis == 0)
        return 0;
    uint64_t pad = BULK_ALIGN - mis;
    int rc = room(r, pad, deadline);
    if (rc)
        return rc;
    write_hdr(r->data + (r->wpos & r->mask), pad - sizeof(struct rec_hdr), REC_PAD);
    r->wpos += pad;
    return 0;
}

static int abort_bulk(struct dpdpu_ring *r, uint64_t deadline)
{
    uint8_t *p;
    int rc;
    if (!r->tx_active)
        return 0;
    if ((rc = reserve_rec(r, 0, REC_ABORT, &p, deadline)))
        return rc;
    r->tx_active = 0;
    note_partial(r);
    publish(r);
    return 0;
}

/* Common checks of a producer call; drops a half-sent bulk message first. */
static int producer_enter(struct dpdpu_ring *r, uint64_t deadline)
{
    int rc = check_end(r, DPDPU_RING_PRODUCER);
    if (rc)
        return rc;
    if (peer_gone(r))
        return DPDPU_ERR_SHUTDOWN;
    return r->tx_active ? abort_bulk(r, deadline) : 0;
}

int dpdpu_ring_reserve(struct dpdpu_ring *ring, uint64_t len, void **out, int64_t timeout_us)
{
    uint64_t deadline = dpdpu__deadline_ns(timeout_us);
    uint8_t *p;
    int rc;
    if (out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((rc = producer_enter(ring, deadline)))
        return rc;
    if (len > ring->max_msg)
        return DPDPU_ERR_TOO_LARGE;
    if ((rc = reserve_rec(ring, len, REC_MSG, &p, deadline)))
        return rc;
    ring->pending_msgs++;
    ring->pending_bytes += len;
    *out = p;
    return 0;
}

int dpdpu_ring_commit(struct dpdpu_ring *ring)
{
    int rc = check_end(ring, DPDPU_RING_PRODUCER);
    return rc ? rc : publish(ring);
}

int dpdpu_ring_send(struct dpdpu_ring *ring, const void *data, uint64_t len, int64_t timeout_us)
{
    uint64_t deadline = dpdpu__deadline_ns(timeout_us);
    uint8_t *p;
    int rc;
    if (data == NULL && len > 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((rc = producer_enter(ring, deadline)))
        return rc;
    if (len > ring->max_msg)
        return DPDPU_ERR_TOO_LARGE;
    if ((rc = reserve_rec(ring, len, REC_MSG, &p, deadline)))
        return rc;
    if (len > 0)
        memcpy(p, data, len);
    ring->pending_msgs++;
    ring->pending_bytes += len;
    publish(ring);
    return 0;
}

/* Message i of a batch: from an iovec array, or packed back to back. */
struct batch_src {
    const struct dpdpu_ring_iov *iov;
    const uint8_t *packed;
    const uint64_t *lens;
};

static inline uint64_t batch_len(const struct batch_src *src, uint32_t i)
{
    return src->iov != NULL ? src->iov[i].len : src->lens[i];
}

/* Checks every message before sending any, so that a bad one leaves the
 * ring untouched. */
static int batch_check(const struct dpdpu_ring *r, const struct batch_src *src, uint32_t n, uint64_t size)
{
    uint64_t sum = 0;
    int too_large = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t len = batch_len(src, i);
        too_large |= len > r->max_msg;
        if (src->iov != NULL && src->iov[i].data == NULL && len > 0)
            return DPDPU_ERR_INVALID_ARGUMENT;
        sum += len;
    }
    if (too_large)
        return DPDPU_ERR_TOO_LARGE;
    return src->iov == NULL && sum != size ? DPDPU_ERR_INVALID_ARGUMENT : 0;
}

static int send_many(struct dpdpu_ring *r, const struct batch_src *src, uint32_t n, uint64_t size,
                     int64_t timeout_us, uint32_t *sent)
{
    uint64_t deadline = dpdpu__deadline_ns(timeout_us);
    /* Publishing every eighth of the ring lets the consumer start early. */
    uint64_t every = r->cap / 8, since = 0;
    const uint8_t *next = src->packed;
    uint32_t i = 0;
    int rc;

    if (sent != NULL)
        *sent = 0;
    if ((rc = check_end(r, DPDPU_RING_PRODUCER)) || (rc = batch_check(r, src, n, size)) ||
        (rc = producer_enter(r, deadline)))
        return rc;
    for (; i < n; i++) {
        const void *data;
        uint64_t len = batch_len(src, i);
        uint8_t *p;
        if (src->iov != NULL) {
            data = src->iov[i].data;
        } else {
            data = next;
            next += len;
        }
        if ((rc = reserve_rec(r, len, REC_MSG, &p, deadline)))
            break;
        if (len > 0)
            memcpy(p, data, len);
        r->pending_msgs++;
        r->pending_bytes += len;
        since += rec_size(len);
        if (since >= every) {
            publish(r);
            since = 0;
        }
    }
    publish(r);
    if (sent != NULL)
        *sent = i;
    return rc;
}

int dpdpu_ring_send_batch(struct dpdpu_ring *ring, const struct dpdpu_ring_iov *iov, uint32_t n,
                          int64_t timeout_us, uint32_t *sent)
{
    struct batch_src src = {iov, NULL, NULL};
    if (iov == NULL && n > 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    return send_many(ring, &src, n, 0, timeout_us, sent);
}

int dpdpu_ring_send_packed(struct dpdpu_ring *ring, const void *data, uint64_t size, const uint64_t *lens,
                           uint32_t n, int64_t timeout_us, uint32_t *sent)
{
    struct batch_src src = {NULL, data, lens};
    if ((n > 0 && lens == NULL) || (data == NULL && size > 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (data == NULL)
        src.packed = (const uint8_t *)"";
    return send_many(ring, &src, n, size, timeout_us, sent);
}

int dpdpu_ring_send_bulk(struct dpdpu_ring *ring, const void *data, uint64_t len, uint64_t chunk,
                         int64_t timeout_us, uint64_t *done)
{
    uint64_t deadline = dpdpu__deadline_ns(timeout_us);
    const uint8_t *src = data;
    uint64_t off = 0;
    int rc;

    if (done != NULL)
        *done = 0;
    if ((rc = check_end(ring, DPDPU_RING_PRODUCER)))
        return rc;
    if (data == NULL && len > 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (peer_gone(ring))
        return DPDPU_ERR_SHUTDOWN;
    if (ring->tx_active) {
        if (ring->tx_data == data && ring->tx_total == len)
            off = ring->tx_done;
        else if ((rc = abort_bulk(ring, deadline)))
            return rc;
    }
    uint64_t limit = (ring->max_msg - BULK_PREFIX) & ~(uint64_t)(BULK_ALIGN - 1);
    if (chunk == 0) {
        /* Large chunks measured best: each hand-over between the two sides
         * costs cache-line transfers that a big copy amortizes. */
        chunk = ring->cap / 4 < DEFAULT_CHUNK ? ring->cap / 4 : DEFAULT_CHUNK;
        if (chunk < 4096)
            chunk = 4096;
    }
    if (chunk > limit)
        chunk = limit;
    chunk &= ~(uint64_t)(BULK_ALIGN - 1);
    if (chunk == 0)
        chunk = BULK_ALIGN;
    if (off == 0 && len <= chunk) {
        rc = dpdpu_ring_send(ring, data, len, timeout_us);
        if (rc == 0 && done != NULL)
            *done = len;
        return rc;
    }
    while (off < len) {
        uint64_t n = len - off < chunk ? len - off : chunk;
        int first = off == 0, last = off + n == len;
        uint8_t *p;
        rc = align_wpos(ring, deadline);
        if (rc == 0)
            rc = reserve_rec(ring, BULK_PREFIX + n, first ? REC_FIRST : last ? REC_LAST : REC_MORE, &p, deadline);
        if (rc) {
            publish(ring);
            ring->tx_active = off > 0;
            ring->tx_data = data;
            ring->tx_total = len;
            ring->tx_done = off;
            note_partial(ring);
            if (done != NULL)
                *done = off;
            return rc;
        }
        if (first)
            memcpy(p, &len, sizeof len);
        memcpy(p + BULK_PREFIX, src + off, n);
        off += n;
        if (last) {
            ring->pending_msgs++;
            ring->pending_bytes += len;
        }
        /* Each chunk at once: the consumer copies it out while we write the next. */
        publish(ring);
    }
    ring->tx_active = 0;
    note_partial(ring);
    if (done != NULL)
        *done = len;
    return 0;
}

int dpdpu_ring_abort_bulk(struct dpdpu_ring *ring, int64_t timeout_us)
{
    int rc = check_end(ring, DPDPU_RING_PRODUCER);
    if (rc)
        return rc;
    if (peer_gone(ring)) {
        ring->tx_active = 0;
        note_partial(ring);
        return DPDPU_ERR_SHUTDOWN;
    }
    return abort_bulk(ring, dpdpu__deadline_ns(timeout_us));
}

/* --- consumer ------------------------------------------------------------- */

static int release(struct dpdpu_ring *r);

/* The next record that is not padding, waiting for one if needed. */
static int next_record(struct dpdpu_ring *r, uint8_t **at, uint32_t *len, uint32_t *kind, uint64_t deadline)
{
    for (;;) {
        if (r->rx.cur == r->tail_cache) {
            /* Padding stepped over is room the producer may be waiting for;
             * give it back unless the caller holds spans before it. */
            if (r->rx.spans == 0 && r->rx.cur != r->rx_saved.cur)
                release(r);
            int rc = wait_for(r, 0, deadline);
            if (rc)
                return rc;
        }
        /* The producer's position is its word too: an honest one never
         * publishes more than the ring holds past what was released, nor
         * behind what was read (a tail far ahead would have us step through
         * padding for ever). */
        if (r->tail_cache - r->rx_saved.cur > r->cap || r->tail_cache - r->rx.cur > r->cap)
            return DPDPU_ERR_CORRUPT_DATA;
        uint64_t off = r->rx.cur & r->mask;
        struct rec_hdr hdr;
        memcpy(&hdr, r->data + off, sizeof hdr);
        uint64_t size = rec_size(hdr.len);
        /* The producer is another process: never trust a length to stay
         * inside what it published. */
        if (size > r->cap - off || size > r->tail_cache - r->rx.cur) {
            r->rx.cur = r->tail_cache;
            return DPDPU_ERR_CORRUPT_DATA;
        }
        if (hdr.kind == REC_PAD) {
            r->rx.cur += size;
            continue;
        }
        *at = r->data + off;
        *len = hdr.len;
        *kind = hdr.kind;
        return 0;
    }
}

static int peek_span(struct dpdpu_ring *r, struct dpdpu_ring_view *v, uint64_t deadline)
{
    struct rx_state *rx = &r->rx;
    for (;;) {
        uint8_t *at;
        uint32_t len, kind;
        int rc = next_record(r, &at, &len, &kind, deadline);
        if (rc == DPDPU_ERR_SHUTDOWN && rx->in_bulk) {
            rx->in_bulk = 0;
            return DPDPU_ERR_TRUNCATED_DATA;
        }
        if (rc)
            return rc;
        uint8_t *payload = at + sizeof(struct rec_hdr);
        uint64_t size = rec_size(len);
        switch (kind) {
        case REC_MSG:
        case REC_FIRST:
            if (rx->in_bulk) {
                /* The message in progress ended without its last chunk; the
                 * new one stays for the next call. */
                rx->in_bulk = 0;
                return DPDPU_ERR_TRUNCATED_DATA;
            }
            if (kind == REC_MSG) {
                *v = (struct dpdpu_ring_view){payload, len, len, 0, DPDPU_RING_VIEW_FIRST | DPDPU_RING_VIEW_LAST};
                rx->messages++;
                rx->bytes += len;
            } else {
                uint64_t total;
                if (len < BULK_PREFIX) {
                    rx->cur += size;
                    return DPDPU_ERR_CORRUPT_DATA;
                }
                memcpy(&total, payload, sizeof total);
                if (total <= len - BULK_PREFIX) {
                    rx->cur += size;
                    return DPDPU_ERR_CORRUPT_DATA;
                }
                *v = (struct dpdpu_ring_view){payload + BULK_PREFIX, len - BULK_PREFIX, total, 0,
                                              DPDPU_RING_VIEW_FIRST};
                rx->in_bulk = 1;
                rx->total = total;
                rx->off = v->len;
            }
            rx->cur += size;
            rx->spans++;
            return 0;
        case REC_MORE:
        case REC_LAST: {
            rx->cur += size;
            if (!rx->in_bulk)
                return DPDPU_ERR_CORRUPT_DATA;
            int last = kind == REC_LAST;
            uint64_t n = len - BULK_PREFIX;
            if (len < BULK_PREFIX || n > rx->total - rx->off || last != (rx->off + n == rx->total)) {
                rx->in_bulk = 0;
                return DPDPU_ERR_CORRUPT_DATA;
            }
            *v = (struct dpdpu_ring_view){payload + BULK_PREFIX, n, rx->total, rx->off,
                                          last ? DPDPU_RING_VIEW_LAST : 0};
            rx->off += n;
            rx->spans++;
            if (last) {
                rx->in_bulk = 0;
                rx->messages++;
                rx->bytes += rx->total;
            }
            return 0;
        }
        case REC_ABORT:
            rx->cur += size;
            if (rx->in_bulk) {
                rx->in_bulk = 0;
                return DPDPU_ERR_TRUNCATED_DATA;
            }
            continue;
        default:
            rx->cur += size;
            return DPDPU_ERR_CORRUPT_DATA;
        }
    }
}

static int release(struct dpdpu_ring *r)
{
    int n = (int)r->rx.spans;
    if (r->rx.cur != r->rx_saved.cur) {
        __atomic_store_n(&r->h->head, r->rx.cur, __ATOMIC_RELEASE);
        count(&r->st.batches, 1);
        doorbell(r);
    }
    count(&r->st.messages, r->rx.messages);
    count(&r->st.bytes, r->rx.bytes);
    r->rx.spans = 0;
    r->rx.messages = r->rx.bytes = 0;
    r->rx_saved = r->rx;
    return n;
}

int dpdpu_ring_peek(struct dpdpu_ring *ring, struct dpdpu_ring_view *view, int64_t timeout_us)
{
    int rc = check_end(ring, DPDPU_RING_CONSUMER);
    if (rc)
        return rc;
    if (view == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    rc = peek_span(ring, view, dpdpu__deadline_ns(timeout_us));
    note_partial(ring);
    return rc;
}

int dpdpu_ring_release(struct dpdpu_ring *ring)
{
    int rc = check_end(ring, DPDPU_RING_CONSUMER);
    return rc ? rc : release(ring);
}

int dpdpu_ring_rewind(struct dpdpu_ring *ring)
{
    int rc = check_end(ring, DPDPU_RING_CONSUMER);
    if (rc)
        return rc;
    ring->rx = ring->rx_saved;
    note_partial(ring);
    return 0;
}

static int recv_one(struct dpdpu_ring *r, uint8_t *buf, uint64_t cap, uint64_t *len, uint64_t deadline)
{
    release(r);
    if (r->rx.in_bulk && r->rx.total > cap) {
        *len = r->rx.total;
        return DPDPU_ERR_BUFFER_TOO_SMALL;
    }
    for (;;) {
        struct dpdpu_ring_view v;
        int rc = peek_span(r, &v, deadline);
        if (rc) {
            if (rc == DPDPU_ERR_TRUNCATED_DATA || rc == DPDPU_ERR_CORRUPT_DATA)
                release(r);
            return rc;
        }
        if ((v.flags & DPDPU_RING_VIEW_FIRST) && v.total > cap) {
            /* Nothing was held before this span, so put back only the span:
             * not padding before it that next_record() already released
             * (the producer may be writing there again). */
            r->rx = r->rx_saved;
            *len = v.total;
            return DPDPU_ERR_BUFFER_TOO_SMALL;
        }
        if (v.len > 0)
            memcpy(buf + v.offset, v.data, v.len);
        release(r);
        if (v.flags & DPDPU_RING_VIEW_LAST) {
            *len = v.total;
            return 0;
        }
    }
}

int dpdpu_ring_recv(struct dpdpu_ring *ring, void *buf, uint64_t cap, uint64_t *len, int64_t timeout_us)
{
    int rc = check_end(ring, DPDPU_RING_CONSUMER);
    if (rc)
        return rc;
    if (len == NULL || (buf == NULL && cap > 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    rc = recv_one(ring, buf, cap, len, dpdpu__deadline_ns(timeout_us));
    note_partial(ring);
    return rc;
}

static int recv_batch(struct dpdpu_ring *ring, uint8_t *out, uint64_t cap, uint64_t *lens, uint32_t max,
                      uint32_t *n, uint64_t deadline)
{
    struct dpdpu_ring_view v;
    int rc;

    *n = 0;
    release(ring);
    if (ring->rx.in_bulk) {
        if ((rc = recv_one(ring, out, cap, &lens[0], deadline)) == 0)
            *n = 1;
        return rc;
    }
    if ((rc = peek_span(ring, &v, deadline))) {
        if (rc == DPDPU_ERR_TRUNCATED_DATA || rc == DPDPU_ERR_CORRUPT_DATA)
            release(ring);
        return rc;
    }
    /* Putting the first span back goes to the last release, as in
     * recv_one(): padding stepped over on the way may be released already. */
    if (!(v.flags & DPDPU_RING_VIEW_LAST)) {
        ring->rx = ring->rx_saved;
        if ((rc = recv_one(ring, out, cap, &lens[0], deadline)) == 0)
            *n = 1;
        return rc;
    }
    if (v.len > cap) {
        ring->rx = ring->rx_saved;
        lens[0] = v.len;
        return DPDPU_ERR_BUFFER_TOO_SMALL;
    }
    if (v.len > 0)
        memcpy(out, v.data, v.len);
    lens[0] = v.len;
    uint64_t used = v.len;
    uint32_t k = 1;
    while (k < max) {
        /* Spans are held from here on, so peeking releases nothing. */
        struct rx_state before = ring->rx;
        if (peek_span(ring, &v, DPDPU__NO_WAIT) != 0 || v.flags != (DPDPU_RING_VIEW_FIRST | DPDPU_RING_VIEW_LAST) ||
            v.len > cap - used) {
            ring->rx = before;
            break;
        }
        if (v.len > 0)
            memcpy(out + used, v.data, v.len);
        lens[k++] = v.len;
        used += v.len;
    }
    release(ring);
    *n = k;
    return 0;
}

int dpdpu_ring_recv_batch(struct dpdpu_ring *ring, void *buf, uint64_t cap, uint64_t *lens, uint32_t max,
                          uint32_t *n, int64_t timeout_us)
{
    int rc = check_end(ring, DPDPU_RING_CONSUMER);
    if (rc)
        return rc;
    if (lens == NULL || n == NULL || max == 0 || (buf == NULL && cap > 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    rc = recv_batch(ring, buf, cap, lens, max, n, dpdpu__deadline_ns(timeout_us));
    note_partial(ring);
    return rc;
}
