/* bdev.c - a block device over a file: bounded submission queue, I/O workers
 * running pread/pwrite/fdatasync, completions collected by polling. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpdpu_bdev.h"
#include "internal.h"

#define BDEV_DEFAULT_QUEUE_DEPTH 32u
#define BDEV_MAX_QUEUE_DEPTH 65536u
#define BDEV_MAX_WORKERS 64u
#define BDEV_MIN_BLOCK 512u
#define BDEV_MAX_BLOCK (1u << 20)

/* Idle workers poll this long before sleeping: an I/O from the page cache
 * takes a few microseconds, less than a sleep/wake-up pair. */
#define BDEV_WORKER_SPIN_NS 50000ull
#define BDEV_WAIT_SPIN_NS 50000ull
/* A large I/O keeps a worker busy far longer than any spin, and on a small
 * machine a spinning waiter takes CPU from the workers: wait for those
 * almost at once. */
#define BDEV_WAIT_SPIN_LARGE_NS 5000ull
#define BDEV_LARGE_IO (128u << 10)

struct dpdpu_bdev {
    int fd;
    uint32_t block_size;
    uint32_t flags;
    uint64_t capacity_blocks;
    uint64_t capacity_bytes;
    uint32_t queue_depth;
    uint32_t buf_align;
    int direct;
    int direct_fallback;

    pthread_mutex_t lock; /* submission queue, in_flight, stopping */
    pthread_cond_t has_work;
    pthread_cond_t has_room;
    struct dpdpu_bdev_io *sq_head;
    struct dpdpu_bdev_io *sq_tail;
    uint32_t in_flight; /* queued plus running */
    uint32_t sleepers;  /* workers blocked on has_work */
    /* Buffered writes to one file serialize on the inode lock in the kernel:
     * run one at a time and give the other workers the reads meanwhile,
     * rather than have them queue in the kernel. */
    int one_writer;
    uint32_t writes_running;
    int stopping;
    int closed;

    pthread_mutex_t cq_lock; /* completion queue and its waiters */
    pthread_cond_t cq_cond;  /* completions for dpdpu_bdev_wait() */
    pthread_cond_t io_cond;  /* completions for dpdpu_bdev_io_wait() */
    struct dpdpu_bdev_io *cq_head;
    struct dpdpu_bdev_io *cq_tail;
    uint32_t cq_len;
    uint32_t completion_sleepers;
    int poll_hot; /* the last dpdpu_bdev_wait() found completions */
    uint64_t kicks;
    uint64_t outstanding; /* submitted, not yet polled */

    uint32_t workers;
    uint32_t n_threads; /* running; 0 once joined */
    pthread_t *threads;

    struct dpdpu_bdev_stats stats; /* updated with __atomic builtins */
};

static int is_pow2(uint32_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

/* Open with O_DIRECT when asked; tmpfs and some other file systems refuse it
 * at open (EINVAL), others only at the first I/O, so probe one block. */
static int open_file(const struct dpdpu_bdev_cfg *cfg, int *direct, int *fallback)
{
    int base = (cfg->flags & DPDPU_BDEV_READ_ONLY) ? O_RDONLY : O_RDWR;
    int fd;

    base |= O_CLOEXEC;
    if (cfg->flags & DPDPU_BDEV_CREATE)
        base |= O_CREAT;
    *direct = 0;
    *fallback = 0;
    if (cfg->flags & DPDPU_BDEV_DIRECT) {
        /* Every file system at hand may accept O_DIRECT; this lets the
         * fallback be exercised anyway. */
        const char *refuse = getenv("DPDPU_BDEV_REFUSE_DIRECT");

        if (refuse != NULL && refuse[0] != '\0' && refuse[0] != '0') {
            fd = -1;
            errno = EINVAL;
        } else {
            fd = open(cfg->path, base | O_DIRECT, 0644);
        }
        if (fd >= 0) {
            void *probe = NULL;
            ssize_t got;

            if (posix_memalign(&probe, cfg->block_size, cfg->block_size) != 0) {
                close(fd);
                errno = ENOMEM;
                return -1;
            }
            got = pread(fd, probe, cfg->block_size, 0);
            free(probe);
            if (got >= 0) {
                *direct = 1;
                return fd;
            }
            close(fd);
            if (errno != EINVAL)
                return -1;
        } else if (errno != EINVAL) {
            return -1;
        }
        if (cfg->flags & DPDPU_BDEV_DIRECT_REQUIRED) {
            errno = EINVAL;
            return -2;
        }
        *fallback = 1;
    }
    return open(cfg->path, base, 0644);
}

static void *worker_main(void *arg);

static void bdev_destroy_sync(struct dpdpu_bdev *b)
{
    pthread_cond_destroy(&b->io_cond);
    pthread_cond_destroy(&b->cq_cond);
    pthread_mutex_destroy(&b->cq_lock);
    pthread_cond_destroy(&b->has_room);
    pthread_cond_destroy(&b->has_work);
    pthread_mutex_destroy(&b->lock);
}

static int bdev_init_sync(struct dpdpu_bdev *b)
{
    if (pthread_mutex_init(&b->lock, NULL) != 0)
        return -1;
    if (pthread_mutex_init(&b->cq_lock, NULL) != 0) {
        pthread_mutex_destroy(&b->lock);
        return -1;
    }
    if (pthread_cond_init(&b->has_work, NULL) != 0 || dpdpu__cond_init_monotonic(&b->has_room) != 0 ||
        dpdpu__cond_init_monotonic(&b->cq_cond) != 0 || dpdpu__cond_init_monotonic(&b->io_cond) != 0) {
        /* Destroying a condition that failed to initialise is harmless on
         * glibc, and this path only runs when the system is out of memory. */
        bdev_destroy_sync(b);
        return -1;
    }
    return 0;
}

int dpdpu_bdev_open(const struct dpdpu_bdev_cfg *cfg, struct dpdpu_bdev **out)
{
    struct dpdpu_bdev *b;
    struct stat st;
    uint64_t file_blocks;
    uint32_t i, workers;
    int fd, direct, fallback, saved;

    if (cfg == NULL || out == NULL || cfg->path == NULL || cfg->path[0] == '\0')
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (!is_pow2(cfg->block_size) || cfg->block_size < BDEV_MIN_BLOCK || cfg->block_size > BDEV_MAX_BLOCK)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (cfg->queue_depth > BDEV_MAX_QUEUE_DEPTH || cfg->workers > BDEV_MAX_WORKERS)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((cfg->flags & ~(uint32_t)(DPDPU_BDEV_CREATE | DPDPU_BDEV_DIRECT | DPDPU_BDEV_DIRECT_REQUIRED |
                                  DPDPU_BDEV_READ_ONLY)) != 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (cfg->capacity_blocks > UINT64_MAX / cfg->block_size || cfg->capacity_blocks * cfg->block_size > INT64_MAX)
        return DPDPU_ERR_OUT_OF_RANGE;

    fd = open_file(cfg, &direct, &fallback);
    if (fd == -2)
        return DPDPU_ERR_NOT_SUPPORTED;
    if (fd < 0)
        return DPDPU_ERR_INTERNAL;
    if (fstat(fd, &st) != 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return DPDPU_ERR_INTERNAL;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return DPDPU_ERR_INVALID_ARGUMENT;
    }
    file_blocks = (uint64_t)st.st_size / cfg->block_size;
    if (cfg->capacity_blocks == 0 && file_blocks == 0) {
        close(fd);
        return DPDPU_ERR_INVALID_ARGUMENT;
    }

    b = calloc(1, sizeof(*b));
    if (b == NULL) {
        close(fd);
        return DPDPU_ERR_NO_MEMORY;
    }
    b->fd = fd;
    b->block_size = cfg->block_size;
    b->flags = cfg->flags;
    b->capacity_blocks = cfg->capacity_blocks ? cfg->capacity_blocks : file_blocks;
    b->capacity_bytes = b->capacity_blocks * cfg->block_size;
    b->queue_depth = cfg->queue_depth ? cfg->queue_depth : BDEV_DEFAULT_QUEUE_DEPTH;
    b->direct = direct;
    b->direct_fallback = fallback;
    /* O_DIRECT wants buffers aligned to the file system's logical block,
     * 512 or 4096 bytes: a page covers both. */
    b->buf_align = direct ? (cfg->block_size < 4096u ? cfg->block_size : 4096u) : 1;
    b->one_writer = !direct;

    if ((uint64_t)st.st_size < b->capacity_bytes && !(cfg->flags & DPDPU_BDEV_READ_ONLY)) {
        /* Sparse: blocks never written read back as zeros. */
        if (ftruncate(fd, (off_t)b->capacity_bytes) != 0) {
            saved = errno;
            close(fd);
            free(b);
            errno = saved;
            return DPDPU_ERR_INTERNAL;
        }
    }
    if (bdev_init_sync(b) != 0) {
        close(fd);
        free(b);
        return DPDPU_ERR_INTERNAL;
    }

    workers = cfg->workers ? cfg->workers : (b->queue_depth < 4 ? b->queue_depth : 4);
    b->workers = workers;
    b->threads = calloc(workers, sizeof(pthread_t));
    if (b->threads == NULL) {
        bdev_destroy_sync(b);
        close(fd);
        free(b);
        return DPDPU_ERR_NO_MEMORY;
    }
    for (i = 0; i < workers; i++) {
        if (pthread_create(&b->threads[i], NULL, worker_main, b) != 0)
            break;
        b->n_threads++;
    }
    if (b->n_threads != workers) {
        dpdpu_bdev_release(b);
        return DPDPU_ERR_INTERNAL;
    }
    *out = b;
    return DPDPU_OK;
}

int dpdpu_bdev_close(struct dpdpu_bdev *b)
{
    uint32_t i;

    if (b == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    pthread_mutex_lock(&b->lock);
    if (b->closed) {
        pthread_mutex_unlock(&b->lock);
        return DPDPU_OK;
    }
    b->closed = 1;
    __atomic_store_n(&b->stopping, 1, __ATOMIC_RELEASE); /* idle workers peek at it unlocked */
    pthread_cond_broadcast(&b->has_work);
    pthread_cond_broadcast(&b->has_room);
    pthread_mutex_unlock(&b->lock);
    /* Workers leave only once the queue is empty, so in-flight I/O completes. */
    for (i = 0; i < b->n_threads; i++)
        pthread_join(b->threads[i], NULL);
    b->n_threads = 0;
    dpdpu_bdev_kick(b);
    return DPDPU_OK;
}

void dpdpu_bdev_release(struct dpdpu_bdev *b)
{
    if (b == NULL)
        return;
    dpdpu_bdev_close(b);
    free(b->threads);
    close(b->fd);
    bdev_destroy_sync(b);
    free(b);
}

int dpdpu_bdev_get_info(const struct dpdpu_bdev *b, struct dpdpu_bdev_info *out)
{
    if (b == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof(*out));
    out->block_size = b->block_size;
    out->queue_depth = b->queue_depth;
    out->capacity_blocks = b->capacity_blocks;
    out->buf_align = b->buf_align;
    out->workers = b->workers;
    out->direct = b->direct;
    out->direct_fallback = b->direct_fallback;
    return DPDPU_OK;
}

int dpdpu_bdev_get_stats(struct dpdpu_bdev *b, struct dpdpu_bdev_stats *out)
{
    if (b == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    out->reads = __atomic_load_n(&b->stats.reads, __ATOMIC_RELAXED);
    out->writes = __atomic_load_n(&b->stats.writes, __ATOMIC_RELAXED);
    out->flushes = __atomic_load_n(&b->stats.flushes, __ATOMIC_RELAXED);
    out->failed = __atomic_load_n(&b->stats.failed, __ATOMIC_RELAXED);
    out->bytes_read = __atomic_load_n(&b->stats.bytes_read, __ATOMIC_RELAXED);
    out->bytes_written = __atomic_load_n(&b->stats.bytes_written, __ATOMIC_RELAXED);
    out->busy_ns = __atomic_load_n(&b->stats.busy_ns, __ATOMIC_RELAXED);
    out->queued_ns = __atomic_load_n(&b->stats.queued_ns, __ATOMIC_RELAXED);
    pthread_mutex_lock(&b->lock);
    out->in_flight = b->in_flight;
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_lock(&b->cq_lock);
    out->completed = b->cq_len;
    pthread_mutex_unlock(&b->cq_lock);
    return DPDPU_OK;
}

/* ---- submission ------------------------------------------------------- */

static int check_io(const struct dpdpu_bdev *b, const struct dpdpu_bdev_io *io)
{
    uint64_t mask = (uint64_t)b->block_size - 1;

    if (io->flags != 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    switch (io->type) {
    case DPDPU_BDEV_IO_FLUSH:
        return DPDPU_OK;
    case DPDPU_BDEV_IO_WRITE:
        if (b->flags & DPDPU_BDEV_READ_ONLY)
            return DPDPU_ERR_NOT_SUPPORTED;
        break;
    case DPDPU_BDEV_IO_READ:
        break;
    default:
        return DPDPU_ERR_INVALID_ARGUMENT;
    }
    if (io->length == 0 || io->buf == NULL || (io->offset & mask) != 0 || (io->length & mask) != 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (((uintptr_t)io->buf & (uintptr_t)(b->buf_align - 1)) != 0)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (io->offset > b->capacity_bytes || io->length > b->capacity_bytes - io->offset)
        return DPDPU_ERR_OUT_OF_RANGE;
    return DPDPU_OK;
}

/* Called with b->lock held and room in the queue. */
static void enqueue(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io)
{
    io->status = DPDPU_OK;
    io->os_errno = 0;
    io->result = 0;
    io->queued_ns = 0;
    io->exec_ns = 0;
    io->priv_next = NULL;
    __atomic_store_n(&io->priv_waiters, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&io->done, 0, __ATOMIC_RELEASE);
    io->priv_submit_ns = dpdpu__now_ns();

    pthread_mutex_lock(&b->cq_lock);
    b->outstanding++;
    pthread_mutex_unlock(&b->cq_lock);

    if (b->sq_tail != NULL)
        b->sq_tail->priv_next = io;
    else
        __atomic_store_n(&b->sq_head, io, __ATOMIC_RELEASE);
    b->sq_tail = io;
    b->in_flight++;
    if (b->sleepers > 0) /* a polling worker sees it without a wake-up */
        pthread_cond_signal(&b->has_work);
}

/* Wait for room; called and returns with b->lock held. */
static int wait_room(struct dpdpu_bdev *b, uint64_t deadline)
{
    int rc = 0;

    while (!b->stopping && b->in_flight >= b->queue_depth) {
        if (rc == ETIMEDOUT)
            return deadline == DPDPU__NO_WAIT ? DPDPU_ERR_AGAIN : DPDPU_ERR_TIMEOUT;
        rc = dpdpu__cond_wait_until(&b->has_room, &b->lock, deadline);
    }
    return b->stopping ? DPDPU_ERR_SHUTDOWN : DPDPU_OK;
}

int dpdpu_bdev_submit(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io, int64_t timeout_us)
{
    int rc;

    if (b == NULL || io == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((rc = check_io(b, io)) != DPDPU_OK)
        return rc;
    pthread_mutex_lock(&b->lock);
    rc = wait_room(b, dpdpu__deadline_ns(timeout_us));
    if (rc == DPDPU_OK)
        enqueue(b, io);
    pthread_mutex_unlock(&b->lock);
    return rc;
}

int dpdpu_bdev_submit_batch(struct dpdpu_bdev *b, struct dpdpu_bdev_io *const *ios, uint32_t n, int64_t timeout_us)
{
    uint32_t k;
    int rc = DPDPU_OK;

    if (b == NULL || (ios == NULL && n != 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    for (k = 0; k < n; k++) {
        if (ios[k] == NULL)
            return k ? (int)k : DPDPU_ERR_INVALID_ARGUMENT;
        if ((rc = check_io(b, ios[k])) != DPDPU_OK)
            return k ? (int)k : rc;
    }
    pthread_mutex_lock(&b->lock);
    for (k = 0; k < n; k++) {
        /* Each I/O gets the full timeout, as if submitted one by one. */
        if ((rc = wait_room(b, dpdpu__deadline_ns(timeout_us))) != DPDPU_OK)
            break;
        enqueue(b, ios[k]);
    }
    pthread_mutex_unlock(&b->lock);
    return k ? (int)k : rc;
}

/* ---- completions -------------------------------------------------------- */

int dpdpu_bdev_poll(struct dpdpu_bdev *b, struct dpdpu_bdev_io **out, uint32_t max)
{
    uint32_t n = 0;

    if (b == NULL || (out == NULL && max != 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    pthread_mutex_lock(&b->cq_lock);
    while (n < max && b->cq_head != NULL) {
        struct dpdpu_bdev_io *io = b->cq_head;
        b->cq_head = io->priv_next;
        if (b->cq_head == NULL)
            b->cq_tail = NULL;
        io->priv_next = NULL;
        out[n++] = io;
    }
    b->cq_len -= n;
    b->outstanding -= n;
    pthread_mutex_unlock(&b->cq_lock);
    return (int)n;
}

int dpdpu_bdev_wait(struct dpdpu_bdev *b, int64_t timeout_us, int64_t interval_us)
{
    uint64_t deadline, kicks, until;
    int n, graced = 0;

    if (b == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    deadline = dpdpu__deadline_ns(timeout_us);
    pthread_mutex_lock(&b->cq_lock);
    kicks = b->kicks;
    while (b->kicks == kicks) {
        if (b->cq_len != 0) {
            if (interval_us <= 0 || b->poll_hot || graced)
                break;
            /* A completion nobody waited for yet: its submitter is most
             * likely about to ask for it.  Give it an interval to do so
             * rather than race it for the completion (and the GIL). */
            graced = 1;
            until = dpdpu__deadline_ns(interval_us);
        } else if (interval_us > 0 && b->poll_hot && b->outstanding > 0) {
            /* Completions came without anyone waiting for them: more are
             * likely, so look every interval rather than be woken by each. */
            until = dpdpu__deadline_ns(interval_us);
        } else {
            /* Woken by a completion nobody waits for (a caller waiting in
             * dpdpu_bdev_io_wait takes its own), so a submit-then-wait loop
             * does not wake this thread. */
            b->poll_hot = 0;
            graced = 0;
            b->completion_sleepers++;
            dpdpu__cond_wait_until(&b->cq_cond, &b->cq_lock, deadline);
            b->completion_sleepers--;
            until = DPDPU__NO_WAIT; /* waited already */
        }
        if (until != DPDPU__NO_WAIT)
            dpdpu__cond_wait_until(&b->cq_cond, &b->cq_lock, until < deadline ? until : deadline);
        if (dpdpu__now_ns() >= deadline)
            break;
    }
    n = (int)b->cq_len;
    if (n > 0)
        b->poll_hot = 1;
    if (n == 0 && b->kicks == kicks) {
        pthread_mutex_unlock(&b->cq_lock);
        return DPDPU_ERR_TIMEOUT;
    }
    pthread_mutex_unlock(&b->cq_lock);
    return n;
}

void dpdpu_bdev_kick(struct dpdpu_bdev *b)
{
    if (b == NULL)
        return;
    pthread_mutex_lock(&b->cq_lock);
    b->kicks++;
    pthread_cond_broadcast(&b->cq_cond);
    pthread_mutex_unlock(&b->cq_lock);
}

int dpdpu_bdev_io_wait(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io, int64_t timeout_us)
{
    uint64_t deadline, spin_until;
    int rc = 0, done;

    if (b == NULL || io == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_load_n(&io->done, __ATOMIC_ACQUIRE))
        return DPDPU_OK;
    deadline = dpdpu__deadline_ns(timeout_us);
    /* Announce the wait first so the completion does not wake a poller. */
    __atomic_fetch_add(&io->priv_waiters, 1, __ATOMIC_ACQ_REL);
    spin_until = dpdpu__now_ns() + (io->length > BDEV_LARGE_IO ? BDEV_WAIT_SPIN_LARGE_NS : BDEV_WAIT_SPIN_NS);
    if (deadline < spin_until)
        spin_until = deadline;
    while (!__atomic_load_n(&io->done, __ATOMIC_ACQUIRE) && dpdpu__now_ns() < spin_until)
        dpdpu__cpu_relax();
    pthread_mutex_lock(&b->cq_lock);
    while (!__atomic_load_n(&io->done, __ATOMIC_ACQUIRE) && rc != ETIMEDOUT)
        rc = dpdpu__cond_wait_until(&b->io_cond, &b->cq_lock, deadline);
    __atomic_fetch_sub(&io->priv_waiters, 1, __ATOMIC_ACQ_REL);
    done = __atomic_load_n(&io->done, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&b->cq_lock);
    return done ? DPDPU_OK : DPDPU_ERR_TIMEOUT;
}

/* ---- workers ------------------------------------------------------------ */

static int do_read(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io)
{
    char *p = io->buf;
    uint64_t left = io->length;
    off_t off = (off_t)io->offset;

    while (left > 0) {
        ssize_t n = pread(b->fd, p, left, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            io->os_errno = errno;
            return DPDPU_ERR_INTERNAL;
        }
        if (n == 0) {
            /* Within the capacity but past the file's end (it was shortened
             * behind our back): unwritten blocks read as zeros. */
            memset(p, 0, left);
            break;
        }
        p += n;
        off += n;
        left -= (uint64_t)n;
    }
    io->result = io->length;
    return DPDPU_OK;
}

static int do_write(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io)
{
    const char *p = io->buf;
    uint64_t left = io->length;
    off_t off = (off_t)io->offset;

    while (left > 0) {
        ssize_t n = pwrite(b->fd, p, left, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            io->os_errno = errno;
            io->result = io->length - left;
            return DPDPU_ERR_INTERNAL;
        }
        p += n;
        off += n;
        left -= (uint64_t)n;
    }
    io->result = io->length;
    return DPDPU_OK;
}

static int do_flush(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io)
{
    while (fdatasync(b->fd) != 0) {
        if (errno == EINTR)
            continue;
        io->os_errno = errno;
        return DPDPU_ERR_INTERNAL;
    }
    return DPDPU_OK;
}

static void complete(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io, int status)
{
    io->status = status;
    switch (io->type) {
    case DPDPU_BDEV_IO_READ:
        __atomic_fetch_add(&b->stats.reads, 1, __ATOMIC_RELAXED);
        if (status == DPDPU_OK)
            __atomic_fetch_add(&b->stats.bytes_read, io->result, __ATOMIC_RELAXED);
        break;
    case DPDPU_BDEV_IO_WRITE:
        __atomic_fetch_add(&b->stats.writes, 1, __ATOMIC_RELAXED);
        if (status == DPDPU_OK)
            __atomic_fetch_add(&b->stats.bytes_written, io->result, __ATOMIC_RELAXED);
        break;
    default:
        __atomic_fetch_add(&b->stats.flushes, 1, __ATOMIC_RELAXED);
        break;
    }
    if (status != DPDPU_OK)
        __atomic_fetch_add(&b->stats.failed, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&b->stats.busy_ns, io->exec_ns, __ATOMIC_RELAXED);
    __atomic_fetch_add(&b->stats.queued_ns, io->queued_ns, __ATOMIC_RELAXED);

    pthread_mutex_lock(&b->lock);
    b->in_flight--;
    if (io->type == DPDPU_BDEV_IO_WRITE && b->one_writer) {
        b->writes_running--;
        if (b->sleepers > 0 && b->sq_head != NULL) /* a write may have waited for this one */
            pthread_cond_signal(&b->has_work);
    }
    pthread_cond_signal(&b->has_room);
    pthread_mutex_unlock(&b->lock);

    pthread_mutex_lock(&b->cq_lock);
    io->priv_next = NULL; /* still linked to its successor in the submission queue */
    if (b->cq_tail != NULL)
        b->cq_tail->priv_next = io;
    else
        b->cq_head = io;
    b->cq_tail = io;
    b->cq_len++;
    __atomic_store_n(&io->done, 1, __ATOMIC_RELEASE);
    /* The thread waiting for this very I/O takes it; waking a poller too
     * would only make the two race.  Interval pollers look on their own. */
    if (__atomic_load_n(&io->priv_waiters, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_broadcast(&b->io_cond);
    else if (b->completion_sleepers > 0)
        pthread_cond_broadcast(&b->cq_cond);
    pthread_mutex_unlock(&b->cq_lock);
}

/* The next I/O a worker may run, unlinked from the submission queue; NULL if
 * none may run now.  Called with b->lock held. */
static struct dpdpu_bdev_io *take_next(struct dpdpu_bdev *b)
{
    struct dpdpu_bdev_io *io = b->sq_head, *prev = NULL;

    if (b->one_writer && b->writes_running > 0) {
        while (io != NULL && io->type == DPDPU_BDEV_IO_WRITE) {
            prev = io;
            io = io->priv_next;
        }
    }
    if (io == NULL)
        return NULL;
    if (prev == NULL) /* idle workers peek at the head unlocked */
        __atomic_store_n(&b->sq_head, io->priv_next, __ATOMIC_RELEASE);
    else
        prev->priv_next = io->priv_next;
    if (b->sq_tail == io)
        b->sq_tail = prev;
    if (io->type == DPDPU_BDEV_IO_WRITE && b->one_writer)
        b->writes_running++;
    return io;
}

static void *worker_main(void *arg)
{
    struct dpdpu_bdev *b = arg;

    for (;;) {
        struct dpdpu_bdev_io *io;
        uint64_t start, spin_until = dpdpu__now_ns() + BDEV_WORKER_SPIN_NS;
        int status;

        while (__atomic_load_n(&b->sq_head, __ATOMIC_ACQUIRE) == NULL &&
               !__atomic_load_n(&b->stopping, __ATOMIC_ACQUIRE) && dpdpu__now_ns() < spin_until)
            dpdpu__cpu_relax();
        pthread_mutex_lock(&b->lock);
        while ((io = take_next(b)) == NULL && !(b->stopping && b->sq_head == NULL)) {
            b->sleepers++;
            pthread_cond_wait(&b->has_work, &b->lock);
            b->sleepers--;
        }
        pthread_mutex_unlock(&b->lock);
        if (io == NULL) /* stopping and nothing left to run */
            break;

        start = dpdpu__now_ns();
        io->queued_ns = start - io->priv_submit_ns;
        switch (io->type) {
        case DPDPU_BDEV_IO_READ:
            status = do_read(b, io);
            break;
        case DPDPU_BDEV_IO_WRITE:
            status = do_write(b, io);
            break;
        default:
            status = do_flush(b, io);
            break;
        }
        io->exec_ns = dpdpu__now_ns() - start;
        complete(b, io, status);
    }
    return NULL;
}
