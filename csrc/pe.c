/* pe.c - task submission, per-engine queues, worker threads, completions. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

uint64_t dpdpu__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int dpdpu__cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    int rc;

    if (pthread_condattr_init(&attr) != 0)
        return -1;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

uint64_t dpdpu__deadline_ns(int64_t timeout_us)
{
    uint64_t now;

    if (timeout_us < 0)
        return DPDPU__FOREVER;
    if (timeout_us == 0)
        return DPDPU__NO_WAIT;
    now = dpdpu__now_ns();
    if ((uint64_t)timeout_us > (DPDPU__FOREVER - 1 - now) / 1000ull)
        return DPDPU__FOREVER;
    return now + (uint64_t)timeout_us * 1000ull;
}

int dpdpu__cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, uint64_t deadline_ns)
{
    struct timespec ts;

    if (deadline_ns == DPDPU__FOREVER)
        return pthread_cond_wait(cond, lock);
    if (deadline_ns == DPDPU__NO_WAIT)
        return ETIMEDOUT;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
    return pthread_cond_timedwait(cond, lock, &ts);
}

/* ---- progress engine -------------------------------------------------- */

int dpdpu_pe_create(struct dpdpu_pe **out)
{
    struct dpdpu_pe *pe;

    if (out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    pe = calloc(1, sizeof(*pe));
    if (pe == NULL)
        return DPDPU_ERR_NO_MEMORY;
    if (pthread_mutex_init(&pe->lock, NULL) != 0) {
        free(pe);
        return DPDPU_ERR_INTERNAL;
    }
    if (dpdpu__cond_init_monotonic(&pe->cond) != 0) {
        pthread_mutex_destroy(&pe->lock);
        free(pe);
        return DPDPU_ERR_INTERNAL;
    }
    if (dpdpu__cond_init_monotonic(&pe->task_cond) != 0) {
        pthread_cond_destroy(&pe->cond);
        pthread_mutex_destroy(&pe->lock);
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
    pthread_mutex_lock(&pe->lock);
    if (pe->outstanding != 0) {
        pthread_mutex_unlock(&pe->lock);
        return DPDPU_ERR_IN_USE;
    }
    pthread_mutex_unlock(&pe->lock);
    pthread_cond_destroy(&pe->task_cond);
    pthread_cond_destroy(&pe->cond);
    pthread_mutex_destroy(&pe->lock);
    free(pe);
    return DPDPU_OK;
}

int dpdpu_pe_progress(struct dpdpu_pe *pe, struct dpdpu_task **out, uint32_t max)
{
    uint32_t n = 0;

    if (pe == NULL || out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    pthread_mutex_lock(&pe->lock);
    while (n < max && pe->cq_head != NULL) {
        struct dpdpu_task *t = pe->cq_head;
        pe->cq_head = t->priv_next;
        if (pe->cq_head == NULL)
            pe->cq_tail = NULL;
        t->priv_next = NULL;
        out[n++] = t;
    }
    pe->cq_len -= n;
    pe->outstanding -= n;
    pthread_mutex_unlock(&pe->lock);
    return (int)n;
}

int dpdpu_pe_wait(struct dpdpu_pe *pe, int64_t timeout_us, int64_t interval_us)
{
    uint64_t deadline, kicks, until;
    int n, kicked;

    if (pe == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    deadline = dpdpu__deadline_ns(timeout_us);
    pthread_mutex_lock(&pe->lock);
    kicks = pe->kicks;
    while (pe->kicks == kicks) {
        if (interval_us <= 0) {
            /* Woken by every completion not claimed by a task waiter. */
            if (pe->cq_len != 0)
                break;
            pe->completion_sleepers++;
            dpdpu__cond_wait_until(&pe->cond, &pe->lock, deadline);
            pe->completion_sleepers--;
        } else if (pe->outstanding == 0) {
            /* Nothing in flight: sleep until a submission (or a kick). */
            pe->idle_sleepers++;
            dpdpu__cond_wait_until(&pe->cond, &pe->lock, deadline);
            pe->idle_sleepers--;
        } else {
            /* Tasks in flight: look again every interval, leaving their owners
             * time to take completions themselves, without a wake-up per task. */
            until = dpdpu__deadline_ns(interval_us);
            if (deadline < until)
                until = deadline;
            dpdpu__cond_wait_until(&pe->cond, &pe->lock, until);
            if (pe->cq_len != 0)
                break;
        }
        if (dpdpu__now_ns() >= deadline)
            break;
    }
    n = (int)pe->cq_len;
    kicked = pe->kicks != kicks;
    pthread_mutex_unlock(&pe->lock);
    return n == 0 && !kicked ? DPDPU_ERR_TIMEOUT : n;
}

void dpdpu_pe_kick(struct dpdpu_pe *pe)
{
    if (pe == NULL)
        return;
    pthread_mutex_lock(&pe->lock);
    pe->kicks++;
    pthread_cond_broadcast(&pe->cond);
    pthread_mutex_unlock(&pe->lock);
}

uint64_t dpdpu_pe_outstanding(struct dpdpu_pe *pe)
{
    uint64_t n;

    if (pe == NULL)
        return 0;
    pthread_mutex_lock(&pe->lock);
    n = pe->outstanding;
    pthread_mutex_unlock(&pe->lock);
    return n;
}

/* The engine whose worker is the calling thread, if any. */
static __thread struct dpdpu_engine *tls_engine;

static struct dpdpu_task *engine_try_pop(struct dpdpu_engine *e, int *cancel);
static void run_task(struct dpdpu_engine *e, struct dpdpu_task *t, int cancel);
static void account(struct dpdpu_engine *e, struct dpdpu_task *t, int status);

int dpdpu_task_wait(struct dpdpu_pe *pe, struct dpdpu_task *task, int64_t timeout_us)
{
    uint64_t deadline, slice, spin_until;
    int rc = 0, done;

    if (pe == NULL || task == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (__atomic_load_n(&task->done, __ATOMIC_ACQUIRE))
        return DPDPU_OK;
    deadline = dpdpu__deadline_ns(timeout_us);
    /* Announce the wait first so the completion does not wake a poller. */
    __atomic_fetch_add(&task->priv_waiters, 1, __ATOMIC_ACQ_REL);
    if (tls_engine == NULL) {
        spin_until = dpdpu__now_ns() + DPDPU_WAIT_SPIN_NS;
        if (deadline < spin_until)
            spin_until = deadline;
        while (!__atomic_load_n(&task->done, __ATOMIC_ACQUIRE) && dpdpu__now_ns() < spin_until)
            dpdpu__cpu_relax();
    }
    pthread_mutex_lock(&pe->lock);
    while (!__atomic_load_n(&task->done, __ATOMIC_ACQUIRE) && rc != ETIMEDOUT) {
        if (tls_engine != NULL && deadline != DPDPU__NO_WAIT) {
            /* A worker waiting on another task would hold its slot hostage;
             * if every worker of an engine did, tasks queued behind them could
             * never run.  Run queued work of our own engine while we wait. */
            struct dpdpu_task *t;
            int cancel;
            pthread_mutex_unlock(&pe->lock);
            t = engine_try_pop(tls_engine, &cancel);
            if (t != NULL)
                run_task(tls_engine, t, cancel);
            pthread_mutex_lock(&pe->lock);
            if (t != NULL)
                continue;
            slice = dpdpu__now_ns() + 1000000ull; /* look at the queue again in 1 ms */
            if (deadline < slice)
                slice = deadline;
            rc = dpdpu__cond_wait_until(&pe->task_cond, &pe->lock, slice);
            if (rc == ETIMEDOUT && dpdpu__now_ns() < deadline)
                rc = 0;
        } else {
            rc = dpdpu__cond_wait_until(&pe->task_cond, &pe->lock, deadline);
        }
    }
    __atomic_fetch_sub(&task->priv_waiters, 1, __ATOMIC_ACQ_REL);
    done = __atomic_load_n(&task->done, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&pe->lock);
    return done ? DPDPU_OK : DPDPU_ERR_TIMEOUT;
}

/* ---- submission ------------------------------------------------------- */

static int op_needs_dst(uint32_t op)
{
    return op == DPDPU_OP_MEMCPY || op == DPDPU_OP_DEFLATE_COMPRESS ||
           op == DPDPU_OP_DEFLATE_DECOMPRESS;
}

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

static void mmap_users_add(struct dpdpu_task *t, int64_t delta)
{
    if (t->src.len)
        __atomic_fetch_add(&t->src.mmap->users, delta, __ATOMIC_ACQ_REL);
    if (t->dst.len)
        __atomic_fetch_add(&t->dst.mmap->users, delta, __ATOMIC_ACQ_REL);
}

int dpdpu_task_submit(struct dpdpu_pe *pe, struct dpdpu_dev *dev, struct dpdpu_task *task,
                      int64_t timeout_us, uint32_t flags)
{
    struct dpdpu_engine *e;
    uint64_t footprint, deadline;
    int rc;

    if (pe == NULL || dev == NULL || task == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    /* Only a shortcut: what refuses a submission racing dpdpu_dev_close() is
     * the engine's stopping flag, read under its lock below. */
    if (__atomic_load_n(&dev->closed, __ATOMIC_ACQUIRE))
        return DPDPU_ERR_SHUTDOWN;
    if (task->op >= DPDPU_OP_COUNT)
        return DPDPU_ERR_UNKNOWN_OP;
    if (task->engine >= dev->n_engines)
        return DPDPU_ERR_INVALID_ARGUMENT;
    e = &dev->engines[task->engine];
    if (!((e->ops_mask >> task->op) & 1u))
        return DPDPU_ERR_NOT_SUPPORTED;
    if ((rc = check_buf(dev, &task->src)) != DPDPU_OK)
        return rc;
    if (!op_needs_dst(task->op))
        memset(&task->dst, 0, sizeof(task->dst));
    else if ((rc = check_buf(dev, &task->dst)) != DPDPU_OK)
        return rc;
    if (task->op == DPDPU_OP_DEFLATE_COMPRESS && (task->param < -1 || task->param > 9))
        return DPDPU_ERR_INVALID_ARGUMENT;
    /* A deflate compression larger than the engine's largest job runs as
     * segments of that size (ops.c); every other job must fit. */
    if (task->src.len > e->max_job_bytes && task->op != DPDPU_OP_DEFLATE_COMPRESS)
        return DPDPU_ERR_TOO_LARGE;
    if (task->op == DPDPU_OP_DEFLATE_DECOMPRESS && task->dst.len > e->max_job_bytes)
        return DPDPU_ERR_TOO_LARGE;

    footprint = device_footprint(e, task);
    if ((rc = dpdpu__mem_reserve(dev, footprint)) != DPDPU_OK)
        return rc;

    task->status = DPDPU_OK;
    task->done = 0;
    task->result = 0;
    task->needed = 0;
    task->queued_ns = 0;
    task->exec_ns = 0;
    task->priv_next = NULL;
    task->priv_pe = pe;
    task->priv_dev = dev;
    task->priv_reserved = footprint;
    __atomic_store_n(&task->priv_waiters, 0, __ATOMIC_RELEASE);

    deadline = dpdpu__deadline_ns(timeout_us);
    pthread_mutex_lock(&e->lock);
    rc = 0;
    while (!e->stopping && e->in_flight >= e->queue_depth) {
        if (rc == ETIMEDOUT) {
            pthread_mutex_unlock(&e->lock);
            dpdpu__mem_release(dev, footprint);
            return deadline == DPDPU__NO_WAIT ? DPDPU_ERR_AGAIN : DPDPU_ERR_TIMEOUT;
        }
        rc = dpdpu__cond_wait_until(&e->has_room, &e->lock, deadline);
    }
    if (e->stopping) {
        pthread_mutex_unlock(&e->lock);
        dpdpu__mem_release(dev, footprint);
        return DPDPU_ERR_SHUTDOWN;
    }
    task->priv_submit_ns = dpdpu__now_ns();
    mmap_users_add(task, 1);
    if ((flags & DPDPU_SUBMIT_INLINE) && e->head == NULL) {
        /* Nothing is queued ahead of it, so running it here keeps the order
         * and saves handing a tiny job to another thread. */
        uint64_t start;
        int status;

        __atomic_fetch_add(&e->in_flight, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&e->lock);
        __atomic_fetch_add(&e->stats.inlined, 1, __ATOMIC_RELAXED);
        start = dpdpu__now_ns();
        status = dpdpu__op_execute(dev, task);
        task->exec_ns = dpdpu__now_ns() - start;
        account(e, task, status);
        __atomic_store_n(&task->done, 1, __ATOMIC_RELEASE);
        return 1;
    }
    pthread_mutex_lock(&pe->lock);
    if (pe->outstanding++ == 0 && pe->idle_sleepers > 0)
        pthread_cond_broadcast(&pe->cond);
    pthread_mutex_unlock(&pe->lock);
    if (e->tail != NULL)
        e->tail->priv_next = task;
    else
        __atomic_store_n(&e->head, task, __ATOMIC_RELEASE);
    e->tail = task;
    __atomic_fetch_add(&e->in_flight, 1, __ATOMIC_RELAXED);
    if (e->sleepers > 0) /* a polling worker will see it without a wake-up */
        pthread_cond_signal(&e->has_work);
    pthread_mutex_unlock(&e->lock);
    return DPDPU_OK;
}

/* ---- workers ------------------------------------------------------------ */

/* Everything that reads the task happens before it is published as done:
 * from then on the owner may free it and its buffers. */
static void account(struct dpdpu_engine *e, struct dpdpu_task *t, int status)
{
    dpdpu__mem_release(e->dev, t->priv_reserved);
    mmap_users_add(t, -1);
    t->status = status;
    __atomic_fetch_add(&e->stats.tasks, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&e->stats.bytes_in, t->src.len, __ATOMIC_RELAXED);
    __atomic_fetch_add(&e->stats.exec_ns, t->exec_ns, __ATOMIC_RELAXED);
    if (status != DPDPU_OK)
        __atomic_fetch_add(&e->stats.failed, 1, __ATOMIC_RELAXED);
    else if (t->dst.len != 0)
        __atomic_fetch_add(&e->stats.bytes_out, t->result, __ATOMIC_RELAXED);

    pthread_mutex_lock(&e->lock);
    __atomic_fetch_sub(&e->in_flight, 1, __ATOMIC_RELAXED);
    pthread_cond_signal(&e->has_room);
    pthread_mutex_unlock(&e->lock);
}

static void complete(struct dpdpu_engine *e, struct dpdpu_task *t, int status)
{
    struct dpdpu_pe *pe = t->priv_pe;

    account(e, t, status);
    pthread_mutex_lock(&pe->lock);
    t->priv_next = NULL;
    if (pe->cq_tail != NULL)
        pe->cq_tail->priv_next = t;
    else
        pe->cq_head = t;
    pe->cq_tail = t;
    pe->cq_len++;
    __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
    /* A thread waiting for this very task will progress it; waking a
     * poller as well would only make the two race for the GIL.  Interval
     * pollers look again on their own. */
    if (__atomic_load_n(&t->priv_waiters, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_broadcast(&pe->task_cond);
    else if (pe->completion_sleepers > 0)
        pthread_cond_broadcast(&pe->cond);
    pthread_mutex_unlock(&pe->lock);
}

/* Unlink the first queued task, if any; called with e->lock held.  Idle
 * workers peek at e->head without the lock, so it is only ever stored
 * atomically (see dpdpu_task_submit() for the other store). */
static struct dpdpu_task *engine_pop_locked(struct dpdpu_engine *e)
{
    struct dpdpu_task *t = e->head;

    if (t != NULL) {
        __atomic_store_n(&e->head, t->priv_next, __ATOMIC_RELAXED);
        if (t->priv_next == NULL)
            e->tail = NULL;
    }
    return t;
}

/* A queued task for a worker that helps while it waits; *cancel says
 * whether the engine is stopping without draining. */
static struct dpdpu_task *engine_try_pop(struct dpdpu_engine *e, int *cancel)
{
    struct dpdpu_task *t;

    pthread_mutex_lock(&e->lock);
    t = engine_pop_locked(e);
    *cancel = e->stopping && !e->drain;
    pthread_mutex_unlock(&e->lock);
    return t;
}

static void run_task(struct dpdpu_engine *e, struct dpdpu_task *t, int cancel)
{
    uint64_t start = dpdpu__now_ns();
    int status;

    t->queued_ns = start - t->priv_submit_ns;
    status = cancel ? DPDPU_ERR_SHUTDOWN : dpdpu__op_execute(e->dev, t);
    t->exec_ns = dpdpu__now_ns() - start;
    complete(e, t, status);
}

void *dpdpu__worker_main(void *arg)
{
    struct dpdpu_engine *e = arg;

    tls_engine = e;
    for (;;) {
        struct dpdpu_task *t;
        int cancel;
        uint64_t spin_until = dpdpu__now_ns() + DPDPU_WORKER_SPIN_NS;

        while (__atomic_load_n(&e->head, __ATOMIC_ACQUIRE) == NULL &&
               !__atomic_load_n(&e->stopping, __ATOMIC_ACQUIRE) && dpdpu__now_ns() < spin_until)
            dpdpu__cpu_relax();
        pthread_mutex_lock(&e->lock);
        while (e->head == NULL && !e->stopping) {
            e->sleepers++;
            pthread_cond_wait(&e->has_work, &e->lock);
            e->sleepers--;
        }
        t = engine_pop_locked(e);
        if (t == NULL) {
            pthread_mutex_unlock(&e->lock);
            break;
        }
        cancel = e->stopping && !e->drain;
        pthread_mutex_unlock(&e->lock);
        run_task(e, t, cancel);
    }
    tls_engine = NULL;
    return NULL;
}
