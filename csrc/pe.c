/* pe.c - tasks on engines: the progress engine (a completion queue) and the
 * engines' queues, the task plug-in of the queue engine (queue.c). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TASK_OF(link) DPDPU__CONTAINER_OF(link, struct dpdpu_task, priv_link)
#define ENGINE_OF(q) DPDPU__CONTAINER_OF(q, struct dpdpu_engine, queue)

/* ---- progress engine -------------------------------------------------- */

int dpdpu_pe_create(struct dpdpu_pe **out)
{
    struct dpdpu_pe *pe;

    if (out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    pe = calloc(1, sizeof(*pe));
    if (pe == NULL)
        return DPDPU_ERR_NO_MEMORY;
    if (dpdpu__cq_init(&pe->cq) != DPDPU_OK) {
        free(pe);
        return DPDPU_ERR_INTERNAL;
    }
    *out = pe;
    return DPDPU_OK;
}

int dpdpu_pe_destroy(struct dpdpu_pe *pe)
{
    if (pe == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (dpdpu__cq_outstanding(&pe->cq) != 0)
        return DPDPU_ERR_IN_USE;
    dpdpu__cq_destroy(&pe->cq);
    free(pe);
    return DPDPU_OK;
}

int dpdpu_pe_progress(struct dpdpu_pe *pe, struct dpdpu_task **out, uint32_t max)
{
    struct dpdpu_qlink *l;
    uint32_t n;

    if (pe == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    l = dpdpu__cq_take(&pe->cq, max, &n);
    for (uint32_t i = 0; i < n; i++, l = l->next)
        out[i] = TASK_OF(l);
    return (int)n;
}

int dpdpu_pe_wait(struct dpdpu_pe *pe, int64_t timeout_us, int64_t interval_us)
{
    if (pe == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    return dpdpu__cq_wait(&pe->cq, timeout_us, interval_us);
}

void dpdpu_pe_kick(struct dpdpu_pe *pe)
{
    if (pe != NULL)
        dpdpu__cq_kick(&pe->cq);
}

uint64_t dpdpu_pe_outstanding(struct dpdpu_pe *pe)
{
    return pe != NULL ? dpdpu__cq_outstanding(&pe->cq) : 0;
}

int dpdpu_task_wait(struct dpdpu_pe *pe, struct dpdpu_task *task, int64_t timeout_us)
{
    if (pe == NULL || task == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    return dpdpu__cq_wait_item(&pe->cq, &task->priv_link, &task->done, timeout_us, DPDPU_WAIT_SPIN_NS);
}

/* ---- the engines' queues ------------------------------------------------ */

static void mmap_users_add(struct dpdpu_task *t, int64_t delta)
{
    if (t->src.len)
        __atomic_fetch_add(&t->src.mmap->users, delta, __ATOMIC_ACQ_REL);
    if (t->dst.len)
        __atomic_fetch_add(&t->dst.mmap->users, delta, __ATOMIC_ACQ_REL);
}

static int task_execute(struct dpdpu_queue *q, struct dpdpu_qlink *l)
{
    return dpdpu__op_execute(ENGINE_OF(q), TASK_OF(l));
}

static void task_finish(struct dpdpu_queue *q, struct dpdpu_qlink *l, int status, uint64_t queued_ns,
                        uint64_t exec_ns)
{
    struct dpdpu_engine *e = ENGINE_OF(q);
    struct dpdpu_task *t = TASK_OF(l);

    dpdpu__mem_release(e->dev, t->priv_reserved);
    mmap_users_add(t, -1);
    t->status = status;
    t->queued_ns = queued_ns;
    t->exec_ns = exec_ns;
    __atomic_fetch_add(&e->bytes_in, t->src.len, __ATOMIC_RELAXED);
    if (status == DPDPU_OK && t->dst.len != 0)
        __atomic_fetch_add(&e->bytes_out, t->result, __ATOMIC_RELAXED);
}

static const struct dpdpu_queue_ops task_ops = {
    .execute = task_execute,
    .finish = task_finish,
    .serial = NULL, /* an engine's tasks run side by side */
};

int dpdpu__engine_queue_init(struct dpdpu_engine *e, uint32_t depth)
{
    return dpdpu__queue_init(&e->queue, &task_ops, depth, DPDPU_WORKER_SPIN_NS);
}

/* ---- submission ------------------------------------------------------- */

static int check_buf(const struct dpdpu_dev *dev, const struct dpdpu_buf *buf)
{
    uintptr_t lo, hi, a;

    if (buf->len == 0)
        return DPDPU_OK;
    if (buf->mmap == NULL || buf->addr == NULL || buf->mmap->dev != dev)
        return DPDPU_ERR_INVALID_ARGUMENT;
    lo = (uintptr_t)buf->mmap->addr;
    hi = lo + buf->mmap->len;
    a = (uintptr_t)buf->addr;
    if (a < lo || a > hi || buf->len > hi - a)
        return DPDPU_ERR_OUT_OF_RANGE;
    return DPDPU_OK;
}

/* Bytes a task occupies in device memory while it runs on an on-device
 * engine: whatever it reads or writes that is not already device-resident. */
static uint64_t device_footprint(const struct dpdpu_engine *e, const struct dpdpu_task *t)
{
    uint64_t bytes = 0;

    if (!e->on_device)
        return 0;
    if (t->src.len && !(t->src.mmap->flags & DPDPU_MMAP_DEVICE))
        bytes += t->src.len;
    if (t->dst.len && !(t->dst.mmap->flags & DPDPU_MMAP_DEVICE))
        bytes += t->dst.len;
    return bytes;
}

int dpdpu_task_submit(struct dpdpu_pe *pe, struct dpdpu_dev *dev, struct dpdpu_task *task,
                      int64_t timeout_us, uint32_t flags)
{
    const struct dpdpu_op_info *info;
    struct dpdpu_engine *e;
    uint64_t footprint;
    int rc;

    if (pe == NULL || dev == NULL || task == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    /* Only a shortcut: what refuses a submission racing dpdpu_dev_close() is
     * the engine queue's stopping flag, read under its lock. */
    if (__atomic_load_n(&dev->closed, __ATOMIC_ACQUIRE))
        return DPDPU_ERR_SHUTDOWN;
    if (task->op >= DPDPU_OP_COUNT)
        return DPDPU_ERR_UNKNOWN_OP;
    if (task->engine >= dev->n_engines)
        return DPDPU_ERR_INVALID_ARGUMENT;
    e = &dev->engines[task->engine];
    if (!((e->ops_mask >> task->op) & 1u))
        return DPDPU_ERR_NOT_SUPPORTED;
    info = dpdpu__op(task->op);
    if ((rc = check_buf(dev, &task->src)) != DPDPU_OK)
        return rc;
    if (!info->needs_dst)
        memset(&task->dst, 0, sizeof(task->dst));
    else if ((rc = check_buf(dev, &task->dst)) != DPDPU_OK)
        return rc;
    if (task->src.len > e->max_job_bytes && !info->splits)
        return DPDPU_ERR_TOO_LARGE;
    if ((rc = dpdpu__op_check(e, task)) != DPDPU_OK)
        return rc;

    footprint = device_footprint(e, task);
    if ((rc = dpdpu__mem_reserve(dev, footprint)) != DPDPU_OK)
        return rc;
    task->status = DPDPU_OK;
    task->result = 0;
    task->needed = 0;
    task->queued_ns = 0;
    task->exec_ns = 0;
    task->priv_reserved = footprint;
    mmap_users_add(task, 1);
    rc = dpdpu__queue_submit(&e->queue, &pe->cq, &task->priv_link, &task->done, timeout_us,
                             (flags & DPDPU_SUBMIT_INLINE) != 0);
    if (rc < 0) {
        mmap_users_add(task, -1);
        dpdpu__mem_release(dev, footprint);
    }
    return rc;
}
