/* bdev.c - a block device over a file: the block I/O plug-in of the queue
 * engine (queue.c), whose workers run pread/pwrite/fdatasync. */
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
#define BDEV_FLAGS                                                                                    \
    (DPDPU_BDEV_CREATE | DPDPU_BDEV_DIRECT | DPDPU_BDEV_DIRECT_REQUIRED | DPDPU_BDEV_READ_ONLY | \
     DPDPU_BDEV_DIRECT_REFUSED)

/* Idle workers poll this long before sleeping: an I/O from the page cache
 * takes a few microseconds, less than a sleep/wake-up pair. */
#define BDEV_WORKER_SPIN_NS 50000ull
#define BDEV_WAIT_SPIN_NS 50000ull
/* A large I/O keeps a worker busy far longer than any spin, and on a small
 * machine a spinning waiter takes CPU from the workers: wait for those
 * almost at once. */
#define BDEV_WAIT_SPIN_LARGE_NS 5000ull
#define BDEV_LARGE_IO (128u << 10)

#define IO_OF(link) DPDPU__CONTAINER_OF(link, struct dpdpu_bdev_io, priv_link)
#define BDEV_OF(q) DPDPU__CONTAINER_OF(q, struct dpdpu_bdev, queue)

struct dpdpu_bdev {
    int fd;
    uint32_t block_size;
    uint32_t flags;
    uint64_t capacity_blocks;
    uint64_t capacity_bytes;
    uint32_t buf_align;
    uint32_t workers;
    int direct;
    int direct_fallback;
    /* Buffered writes to one file serialize on the inode lock in the kernel:
     * run one at a time and give the other workers the reads meanwhile,
     * rather than have them queue in the kernel. */
    int one_writer;

    struct dpdpu_queue queue;
    struct dpdpu_cq cq;

    /* __atomic; the queue counts completions, failures and times */
    uint64_t reads, writes, flushes, bytes_read, bytes_written;
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
        if (cfg->flags & DPDPU_BDEV_DIRECT_REFUSED) {
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

static const struct dpdpu_queue_ops io_ops;

int dpdpu_bdev_open(const struct dpdpu_bdev_cfg *cfg, struct dpdpu_bdev **out)
{
    struct dpdpu_bdev *b;
    struct stat st;
    uint64_t file_blocks;
    uint32_t depth;
    int fd, direct, fallback, saved, rc;

    if (cfg == NULL || out == NULL || cfg->path == NULL || cfg->path[0] == '\0')
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (!is_pow2(cfg->block_size) || cfg->block_size < BDEV_MIN_BLOCK || cfg->block_size > BDEV_MAX_BLOCK)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (cfg->queue_depth > BDEV_MAX_QUEUE_DEPTH || cfg->workers > BDEV_MAX_WORKERS)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((cfg->flags & ~(uint32_t)BDEV_FLAGS) != 0)
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
    depth = cfg->queue_depth ? cfg->queue_depth : BDEV_DEFAULT_QUEUE_DEPTH;
    if (dpdpu__cq_init(&b->cq) != DPDPU_OK) {
        close(fd);
        free(b);
        return DPDPU_ERR_INTERNAL;
    }
    if (dpdpu__queue_init(&b->queue, &io_ops, depth, BDEV_WORKER_SPIN_NS) != DPDPU_OK) {
        dpdpu__cq_destroy(&b->cq);
        close(fd);
        free(b);
        return DPDPU_ERR_INTERNAL;
    }
    b->workers = cfg->workers ? cfg->workers : (depth < 4 ? depth : 4);
    if ((rc = dpdpu__queue_start(&b->queue, b->workers)) != DPDPU_OK) {
        dpdpu_bdev_release(b);
        return rc;
    }
    *out = b;
    return DPDPU_OK;
}

int dpdpu_bdev_close(struct dpdpu_bdev *b)
{
    if (b == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    /* Every I/O in flight completes before the workers leave; then the
     * waiting threads learn that nothing more will come. */
    if (dpdpu__queue_stop(&b->queue, 1))
        dpdpu__cq_kick(&b->cq);
    return DPDPU_OK;
}

void dpdpu_bdev_release(struct dpdpu_bdev *b)
{
    if (b == NULL)
        return;
    dpdpu_bdev_close(b);
    dpdpu__queue_destroy(&b->queue);
    dpdpu__cq_destroy(&b->cq);
    close(b->fd);
    free(b);
}

int dpdpu_bdev_get_info(const struct dpdpu_bdev *b, struct dpdpu_bdev_info *out)
{
    if (b == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof(*out));
    out->block_size = b->block_size;
    out->queue_depth = b->queue.depth;
    out->capacity_blocks = b->capacity_blocks;
    out->buf_align = b->buf_align;
    out->workers = b->workers;
    out->direct = b->direct;
    out->direct_fallback = b->direct_fallback;
    return DPDPU_OK;
}

int dpdpu_bdev_get_stats(struct dpdpu_bdev *b, struct dpdpu_bdev_stats *out)
{
    struct dpdpu_queue_counters c;

    if (b == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    dpdpu__queue_counters(&b->queue, &c);
    out->reads = __atomic_load_n(&b->reads, __ATOMIC_RELAXED);
    out->writes = __atomic_load_n(&b->writes, __ATOMIC_RELAXED);
    out->flushes = __atomic_load_n(&b->flushes, __ATOMIC_RELAXED);
    out->failed = c.failed;
    out->bytes_read = __atomic_load_n(&b->bytes_read, __ATOMIC_RELAXED);
    out->bytes_written = __atomic_load_n(&b->bytes_written, __ATOMIC_RELAXED);
    out->busy_ns = c.exec_ns;
    out->queued_ns = c.queued_ns;
    out->in_flight = dpdpu__queue_in_flight(&b->queue);
    out->completed = dpdpu__cq_len(&b->cq);
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

static void reset_outputs(struct dpdpu_bdev_io *io)
{
    io->status = DPDPU_OK;
    io->os_errno = 0;
    io->result = 0;
    io->queued_ns = 0;
    io->exec_ns = 0;
}

int dpdpu_bdev_submit(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io, int64_t timeout_us)
{
    int rc;

    if (b == NULL || io == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if ((rc = check_io(b, io)) != DPDPU_OK)
        return rc;
    reset_outputs(io);
    return dpdpu__queue_submit(&b->queue, &b->cq, &io->priv_link, &io->done, timeout_us, 0);
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
    dpdpu__queue_lock(&b->queue);
    for (k = 0; k < n; k++) {
        reset_outputs(ios[k]);
        /* Each I/O gets the full timeout, as if submitted one by one. */
        rc = dpdpu__queue_submit_locked(&b->queue, &b->cq, &ios[k]->priv_link, &ios[k]->done, timeout_us);
        if (rc != DPDPU_OK)
            break;
    }
    dpdpu__queue_unlock(&b->queue);
    return k ? (int)k : rc;
}

/* ---- completions -------------------------------------------------------- */

int dpdpu_bdev_poll(struct dpdpu_bdev *b, struct dpdpu_bdev_io **out, uint32_t max)
{
    struct dpdpu_qlink *l;
    uint32_t n;

    if (b == NULL || (out == NULL && max != 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    l = dpdpu__cq_take(&b->cq, max, &n);
    for (uint32_t i = 0; i < n; i++, l = l->next)
        out[i] = IO_OF(l);
    return (int)n;
}

int dpdpu_bdev_wait(struct dpdpu_bdev *b, int64_t timeout_us, int64_t interval_us)
{
    if (b == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    return dpdpu__cq_wait(&b->cq, timeout_us, interval_us);
}

void dpdpu_bdev_kick(struct dpdpu_bdev *b)
{
    if (b != NULL)
        dpdpu__cq_kick(&b->cq);
}

int dpdpu_bdev_io_wait(struct dpdpu_bdev *b, struct dpdpu_bdev_io *io, int64_t timeout_us)
{
    if (b == NULL || io == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    return dpdpu__cq_wait_item(&b->cq, &io->priv_link, &io->done, timeout_us,
                               io->length > BDEV_LARGE_IO ? BDEV_WAIT_SPIN_LARGE_NS : BDEV_WAIT_SPIN_NS);
}

/* ---- the plug-in ---------------------------------------------------------- */

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

static int io_execute(struct dpdpu_queue *q, struct dpdpu_qlink *l)
{
    struct dpdpu_bdev_io *io = IO_OF(l);

    switch (io->type) {
    case DPDPU_BDEV_IO_READ:
        return do_read(BDEV_OF(q), io);
    case DPDPU_BDEV_IO_WRITE:
        return do_write(BDEV_OF(q), io);
    default:
        return do_flush(BDEV_OF(q), io);
    }
}

static void io_finish(struct dpdpu_queue *q, struct dpdpu_qlink *l, int status, uint64_t queued_ns,
                      uint64_t exec_ns)
{
    struct dpdpu_bdev *b = BDEV_OF(q);
    struct dpdpu_bdev_io *io = IO_OF(l);

    io->status = status;
    io->queued_ns = queued_ns;
    io->exec_ns = exec_ns;
    switch (io->type) {
    case DPDPU_BDEV_IO_READ:
        __atomic_fetch_add(&b->reads, 1, __ATOMIC_RELAXED);
        if (status == DPDPU_OK)
            __atomic_fetch_add(&b->bytes_read, io->result, __ATOMIC_RELAXED);
        break;
    case DPDPU_BDEV_IO_WRITE:
        __atomic_fetch_add(&b->writes, 1, __ATOMIC_RELAXED);
        if (status == DPDPU_OK)
            __atomic_fetch_add(&b->bytes_written, io->result, __ATOMIC_RELAXED);
        break;
    default:
        __atomic_fetch_add(&b->flushes, 1, __ATOMIC_RELAXED);
        break;
    }
}

static int io_serial(const struct dpdpu_queue *q, const struct dpdpu_qlink *l)
{
    return BDEV_OF(q)->one_writer && IO_OF(l)->type == DPDPU_BDEV_IO_WRITE;
}

static const struct dpdpu_queue_ops io_ops = {
    .execute = io_execute,
    .finish = io_finish,
    .serial = io_serial,
};
