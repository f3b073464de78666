/* device.c - devices, their engines' threads, device memory and memory maps. */
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void copy_name(char *dst, size_t cap, const char *src, const char *fallback)
{
    const char *s = src != NULL ? src : fallback;
    size_t n = strlen(s);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* Worker threads allocate and free job-sized buffers (codec outputs, kernel
 * results) that other threads free.  With glibc's defaults each such free
 * trims the worker's arena or unmaps the chunk, so the next job page-faults
 * its whole output again: a 1 MiB LZ4 decompression ran 7x slower on a worker
 * than on the main thread.  Keeping job-sized blocks in the arenas fixes it. */
static void tune_allocator(void)
{
#ifdef M_MMAP_THRESHOLD
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
#endif
}

static pthread_once_t allocator_once = PTHREAD_ONCE_INIT;

static int engine_init(struct dpdpu_dev *dev, uint32_t index, const struct dpdpu_engine_cfg *cfg)
{
    struct dpdpu_engine *e = &dev->engines[index];
    int rc;

    if (cfg->workers == 0 || cfg->workers > DPDPU_MAX_WORKERS)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (cfg->ops_mask >> DPDPU_OP_COUNT)
        return DPDPU_ERR_UNKNOWN_OP;

    copy_name(e->name, sizeof(e->name), cfg->name, "engine");
    e->index = index;
    e->ops_mask = cfg->ops_mask;
    e->max_job_bytes = cfg->max_job_bytes ? cfg->max_job_bytes : UINT64_MAX;
    e->on_device = cfg->on_device != 0;
    e->dev = dev;
    rc = dpdpu__engine_queue_init(e, cfg->queue_depth ? cfg->queue_depth : DPDPU_DEFAULT_QUEUE_DEPTH);
    if (rc != DPDPU_OK)
        return rc;
    if ((rc = dpdpu__queue_start(&e->queue, cfg->workers)) != DPDPU_OK)
        dpdpu__queue_destroy(&e->queue);
    return rc;
}

/* Whether any op in mask runs through the device callback. */
static int calls_back(uint32_t mask)
{
    for (uint32_t op = 0; op < DPDPU_OP_COUNT; op++) {
        if (((mask >> op) & 1u) && dpdpu__op(op)->callback)
            return 1;
    }
    return 0;
}

int dpdpu_dev_open(const struct dpdpu_dev_cfg *cfg, struct dpdpu_dev **out)
{
    struct dpdpu_dev *dev;
    int rc = DPDPU_OK;

    if (cfg == NULL || out == NULL || cfg->n_engines == 0 || cfg->n_engines > DPDPU_MAX_ENGINES)
        return DPDPU_ERR_INVALID_ARGUMENT;
    pthread_once(&allocator_once, tune_allocator);
    for (uint32_t i = 0; i < cfg->n_engines; i++) {
        /* A callback op without a callback could never complete sensibly. */
        if (calls_back(cfg->engines[i].ops_mask) && cfg->callback == NULL)
            return DPDPU_ERR_INVALID_ARGUMENT;
    }

    dev = calloc(1, sizeof(*dev));
    if (dev == NULL)
        return DPDPU_ERR_NO_MEMORY;
    copy_name(dev->name, sizeof(dev->name), cfg->name, "device");
    dev->memory_bytes = cfg->memory_bytes ? cfg->memory_bytes : UINT64_MAX;
    dev->callback = cfg->callback;
    dev->refs = 1;

    for (uint32_t i = 0; i < cfg->n_engines; i++) {
        rc = engine_init(dev, i, &cfg->engines[i]);
        if (rc != DPDPU_OK)
            break;
        dev->n_engines++;
    }
    if (rc != DPDPU_OK) {
        for (uint32_t i = 0; i < dev->n_engines; i++) {
            dpdpu__queue_stop(&dev->engines[i].queue, 0);
            dpdpu__queue_destroy(&dev->engines[i].queue);
        }
        free(dev);
        return rc;
    }
    *out = dev;
    return DPDPU_OK;
}

/* The engines' queues live as long as the device, not just until close: a
 * submission racing dpdpu_dev_close() may still take a queue's lock, and
 * then finds the queue stopping. */
static void dev_unref(struct dpdpu_dev *dev)
{
    if (__atomic_sub_fetch(&dev->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (uint32_t i = 0; i < dev->n_engines; i++)
        dpdpu__queue_destroy(&dev->engines[i].queue);
    free(dev);
}

int dpdpu_dev_close(struct dpdpu_dev *dev, int drain)
{
    /* Marked closed first, so that of two racing closes one does the work. */
    if (dev == NULL || __atomic_exchange_n(&dev->closed, 1, __ATOMIC_ACQ_REL))
        return DPDPU_ERR_INVALID_ARGUMENT;
    for (uint32_t i = 0; i < dev->n_engines; i++)
        dpdpu__queue_stop(&dev->engines[i].queue, drain);
    return DPDPU_OK;
}

void dpdpu_dev_release(struct dpdpu_dev *dev)
{
    if (dev == NULL)
        return;
    if (!__atomic_load_n(&dev->closed, __ATOMIC_ACQUIRE))
        dpdpu_dev_close(dev, 0);
    /* Memory maps still registered keep the device alive until they are
     * destroyed, so their owners never hold dangling pointers. */
    dev_unref(dev);
}

uint32_t dpdpu_dev_engine_count(const struct dpdpu_dev *dev)
{
    return dev != NULL ? dev->n_engines : 0;
}

int dpdpu_dev_cap_op_supported(const struct dpdpu_dev *dev, uint32_t engine, uint32_t op)
{
    if (dev == NULL || engine >= dev->n_engines)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (op >= DPDPU_OP_COUNT)
        return DPDPU_ERR_UNKNOWN_OP;
    return (dev->engines[engine].ops_mask >> op) & 1u;
}

int dpdpu_dev_cap_max_job_bytes(const struct dpdpu_dev *dev, uint32_t engine, uint32_t op,
                                uint64_t *out)
{
    int rc = dpdpu_dev_cap_op_supported(dev, engine, op);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return DPDPU_ERR_NOT_SUPPORTED;
    if (out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    *out = dev->engines[engine].max_job_bytes;
    return DPDPU_OK;
}

int dpdpu_dev_engine_stats(const struct dpdpu_dev *dev, uint32_t engine, struct dpdpu_engine_stats *out)
{
    const struct dpdpu_engine *e;
    struct dpdpu_queue_counters c;

    if (dev == NULL || out == NULL || engine >= dev->n_engines)
        return DPDPU_ERR_INVALID_ARGUMENT;
    e = &dev->engines[engine];
    dpdpu__queue_counters(&e->queue, &c);
    out->tasks = c.completed;
    out->failed = c.failed;
    out->inlined = c.inlined;
    out->exec_ns = c.exec_ns;
    out->bytes_in = __atomic_load_n(&e->bytes_in, __ATOMIC_RELAXED);
    out->bytes_out = __atomic_load_n(&e->bytes_out, __ATOMIC_RELAXED);
    /* A racy snapshot is what a scheduler wants: it is stale a moment later anyway. */
    out->in_flight = dpdpu__queue_in_flight(&e->queue);
    out->capacity = e->queue.depth;
    return DPDPU_OK;
}

int64_t dpdpu_dev_engine_room(const struct dpdpu_dev *dev, uint32_t engine)
{
    const struct dpdpu_queue *q;
    uint32_t used;

    if (dev == NULL || engine >= dev->n_engines)
        return DPDPU_ERR_INVALID_ARGUMENT;
    q = &dev->engines[engine].queue;
    used = dpdpu__queue_in_flight(q);
    return used >= q->depth ? 0 : (int64_t)(q->depth - used);
}

uint64_t dpdpu_dev_mem_used(const struct dpdpu_dev *dev)
{
    return dev != NULL ? __atomic_load_n(&dev->mem_used, __ATOMIC_RELAXED) : 0;
}

uint64_t dpdpu_dev_mem_capacity(const struct dpdpu_dev *dev)
{
    if (dev == NULL || dev->memory_bytes == UINT64_MAX)
        return 0;
    return dev->memory_bytes;
}

int dpdpu__mem_reserve(struct dpdpu_dev *dev, uint64_t bytes)
{
    uint64_t used = __atomic_load_n(&dev->mem_used, __ATOMIC_RELAXED);
    if (bytes == 0)
        return DPDPU_OK;
    do {
        if (bytes > dev->memory_bytes || used > dev->memory_bytes - bytes)
            return DPDPU_ERR_NO_DEVICE_MEMORY;
    } while (!__atomic_compare_exchange_n(&dev->mem_used, &used, used + bytes, 1, __ATOMIC_ACQ_REL,
                                          __ATOMIC_RELAXED));
    return DPDPU_OK;
}

void dpdpu__mem_release(struct dpdpu_dev *dev, uint64_t bytes)
{
    if (bytes != 0)
        __atomic_fetch_sub(&dev->mem_used, bytes, __ATOMIC_ACQ_REL);
}

static int mmap_new(struct dpdpu_dev *dev, void *addr, uint64_t len, uint32_t flags, int owns,
                    struct dpdpu_mmap **out)
{
    struct dpdpu_mmap *m;
    int rc;

    if (flags & DPDPU_MMAP_DEVICE) {
        rc = dpdpu__mem_reserve(dev, len);
        if (rc != DPDPU_OK)
            return rc;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        if (flags & DPDPU_MMAP_DEVICE)
            dpdpu__mem_release(dev, len);
        return DPDPU_ERR_NO_MEMORY;
    }
    m->dev = dev;
    m->addr = addr;
    m->len = len;
    m->flags = flags;
    m->owns_memory = owns;
    __atomic_fetch_add(&dev->refs, 1, __ATOMIC_ACQ_REL);
    *out = m;
    return DPDPU_OK;
}

int dpdpu_mmap_create(struct dpdpu_dev *dev, void *addr, uint64_t len, uint32_t flags,
                      struct dpdpu_mmap **out)
{
    if (dev == NULL || out == NULL || (addr == NULL && len != 0) || (flags & ~1u))
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_load_n(&dev->closed, __ATOMIC_ACQUIRE))
        return DPDPU_ERR_SHUTDOWN;
    if ((uintptr_t)addr > UINTPTR_MAX - len)
        return DPDPU_ERR_INVALID_ARGUMENT;
    return mmap_new(dev, addr, len, flags, 0, out);
}

int dpdpu_mmap_alloc(struct dpdpu_dev *dev, uint64_t len, struct dpdpu_mmap **out)
{
    void *mem;
    int rc;

    if (dev == NULL || out == NULL || len == 0 || len > SIZE_MAX)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_load_n(&dev->closed, __ATOMIC_ACQUIRE))
        return DPDPU_ERR_SHUTDOWN;
    /* Check the budget before touching the allocator so an oversized request
     * fails cleanly instead of exhausting the host. */
    rc = dpdpu__mem_reserve(dev, len);
    if (rc != DPDPU_OK)
        return rc;
    dpdpu__mem_release(dev, len);
    mem = calloc(1, (size_t)len);
    if (mem == NULL)
        return DPDPU_ERR_NO_MEMORY;
    rc = mmap_new(dev, mem, len, DPDPU_MMAP_DEVICE, 1, out);
    if (rc != DPDPU_OK)
        free(mem);
    return rc;
}

void *dpdpu_mmap_addr(const struct dpdpu_mmap *mmap)
{
    return mmap != NULL ? mmap->addr : NULL;
}

uint64_t dpdpu_mmap_len(const struct dpdpu_mmap *mmap)
{
    return mmap != NULL ? mmap->len : 0;
}

int dpdpu_mmap_destroy(struct dpdpu_mmap *mmap)
{
    struct dpdpu_dev *dev;

    if (mmap == NULL || mmap->owns_memory == 2) /* a task's own map dies with the task */
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_load_n(&mmap->users, __ATOMIC_ACQUIRE) != 0)
        return DPDPU_ERR_IN_USE;
    dev = mmap->dev;
    if (mmap->flags & DPDPU_MMAP_DEVICE)
        dpdpu__mem_release(dev, mmap->len);
    if (mmap->owns_memory)
        free(mmap->addr);
    free(mmap);
    dev_unref(dev);
    return DPDPU_OK;
}

int dpdpu_task_map_host(struct dpdpu_task *task, struct dpdpu_dev *dev, int dst, void *addr, uint64_t len)
{
    struct dpdpu_mmap *m;
    struct dpdpu_buf *buf;

    if (task == NULL || dev == NULL || (addr == NULL && len != 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_load_n(&dev->closed, __ATOMIC_ACQUIRE))
        return DPDPU_ERR_SHUTDOWN;
    m = &task->priv_maps[dst ? 1 : 0];
    buf = dst ? &task->dst : &task->src;
    m->dev = dev;
    m->addr = addr;
    m->len = len;
    m->flags = DPDPU_MMAP_HOST;
    m->owns_memory = 2;
    m->users = 0;
    buf->mmap = m;
    buf->addr = addr;
    buf->len = len;
    return DPDPU_OK;
}

int dpdpu_buf_init(struct dpdpu_buf *buf, struct dpdpu_mmap *mmap, void *addr, uint64_t len)
{
    uintptr_t lo, hi, a;

    if (buf == NULL || mmap == NULL || (addr == NULL && len != 0))
        return DPDPU_ERR_INVALID_ARGUMENT;
    lo = (uintptr_t)mmap->addr;
    hi = lo + mmap->len;
    a = (uintptr_t)addr;
    if (len != 0 && (a < lo || a > hi || len > hi - a))
        return DPDPU_ERR_OUT_OF_RANGE;
    buf->mmap = mmap;
    buf->addr = addr;
    buf->len = len;
    return DPDPU_OK;
}
