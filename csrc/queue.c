/* queue.c - the queue engine: submission queues with a depth bound, their
 * worker threads, completion queues and the waits on them (see queue.h). */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

/* The queue whose worker is the calling thread, if any. */
static __thread struct dpdpu_queue *tls_queue;

static void count(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

/* ---- submission queues -------------------------------------------------- */

/* A lock and its two conditions (on the monotonic clock, for deadlines). */
static int sync_init(pthread_mutex_t *lock, pthread_cond_t *a, pthread_cond_t *b)
{
    if (pthread_mutex_init(lock, NULL) != 0)
        return DPDPU_ERR_INTERNAL;
    if (dpdpu__cond_init_monotonic(a) != 0) {
        pthread_mutex_destroy(lock);
        return DPDPU_ERR_INTERNAL;
    }
    if (dpdpu__cond_init_monotonic(b) != 0) {
        pthread_cond_destroy(a);
        pthread_mutex_destroy(lock);
        return DPDPU_ERR_INTERNAL;
    }
    return DPDPU_OK;
}

static void sync_destroy(pthread_mutex_t *lock, pthread_cond_t *a, pthread_cond_t *b)
{
    pthread_cond_destroy(b);
    pthread_cond_destroy(a);
    pthread_mutex_destroy(lock);
}

int dpdpu__queue_init(struct dpdpu_queue *q, const struct dpdpu_queue_ops *ops, uint32_t depth, uint64_t spin_ns)
{
    q->ops = ops;
    q->depth = depth;
    q->spin_ns = spin_ns;
    return sync_init(&q->lock, &q->has_work, &q->has_room);
}

void dpdpu__queue_destroy(struct dpdpu_queue *q)
{
    free(q->threads);
    q->threads = NULL;
    sync_destroy(&q->lock, &q->has_work, &q->has_room);
}

static void *worker_main(void *arg);

int dpdpu__queue_start(struct dpdpu_queue *q, uint32_t workers)
{
    q->threads = calloc(workers, sizeof(pthread_t));
    if (q->threads == NULL)
        return DPDPU_ERR_NO_MEMORY;
    for (uint32_t i = 0; i < workers; i++) {
        if (pthread_create(&q->threads[i], NULL, worker_main, q) != 0) {
            dpdpu__queue_stop(q, 0);
            return DPDPU_ERR_INTERNAL;
        }
        q->n_threads++;
    }
    return DPDPU_OK;
}

int dpdpu__queue_stop(struct dpdpu_queue *q, int drain)
{
    pthread_mutex_lock(&q->lock);
    if (q->stopping) {
        pthread_mutex_unlock(&q->lock);
        return 0;
    }
    __atomic_store_n(&q->stopping, 1, __ATOMIC_RELEASE);
    q->drain = drain;
    pthread_cond_broadcast(&q->has_work);
    pthread_cond_broadcast(&q->has_room);
    pthread_mutex_unlock(&q->lock);
    /* Workers leave once the queue is empty, so what was queued completes. */
    for (uint32_t i = 0; i < q->n_threads; i++)
        pthread_join(q->threads[i], NULL);
    q->n_threads = 0;
    return 1;
}

uint32_t dpdpu__queue_in_flight(const struct dpdpu_queue *q)
{
    return __atomic_load_n(&q->in_flight, __ATOMIC_RELAXED);
}

void dpdpu__queue_counters(const struct dpdpu_queue *q, struct dpdpu_queue_counters *out)
{
    out->completed = __atomic_load_n(&q->counters.completed, __ATOMIC_RELAXED);
    out->failed = __atomic_load_n(&q->counters.failed, __ATOMIC_RELAXED);
    out->inlined = __atomic_load_n(&q->counters.inlined, __ATOMIC_RELAXED);
    out->exec_ns = __atomic_load_n(&q->counters.exec_ns, __ATOMIC_RELAXED);
    out->queued_ns = __atomic_load_n(&q->counters.queued_ns, __ATOMIC_RELAXED);
}

/* Everything that reads the item happens before its done flag is published:
 * from then on its owner may reuse it.  `continues`: the caller is a worker
 * that looks at the queue again right away. */
static void retire(struct dpdpu_queue *q, struct dpdpu_qlink *l, int status, uint64_t queued_ns, uint64_t exec_ns,
                   int continues)
{
    q->ops->finish(q, l, status, queued_ns, exec_ns);
    count(&q->counters.completed, 1);
    if (status != DPDPU_OK)
        count(&q->counters.failed, 1);
    count(&q->counters.exec_ns, exec_ns);
    count(&q->counters.queued_ns, queued_ns);

    pthread_mutex_lock(&q->lock);
    __atomic_store_n(&q->in_flight, q->in_flight - 1, __ATOMIC_RELAXED);
    if (l->serial) {
        q->serial_running--;
        /* A serial item queued behind this one may start now.  A worker about
         * to look again takes it itself; waking another only to race it costs
         * a context switch per item. */
        if (!continues && q->sleepers > 0 && q->head != NULL)
            pthread_cond_signal(&q->has_work);
    }
    pthread_cond_signal(&q->has_room);
    pthread_mutex_unlock(&q->lock);
}

static void cq_push(struct dpdpu_cq *cq, struct dpdpu_qlink *l)
{
    pthread_mutex_lock(&cq->lock);
    l->next = NULL; /* still linked to its successor in the submission queue */
    if (cq->tail != NULL)
        cq->tail->next = l;
    else
        cq->head = l;
    cq->tail = l;
    cq->len++;
    __atomic_store_n(l->done, 1, __ATOMIC_RELEASE);
    /* A thread waiting for this very item takes it; waking a poller as well
     * would only make the two race (for the GIL, in Python).  Interval
     * pollers look again on their own. */
    if (__atomic_load_n(&l->waiters, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_broadcast(&cq->item_cond);
    else if (cq->completion_sleepers > 0)
        pthread_cond_broadcast(&cq->cond);
    pthread_mutex_unlock(&cq->lock);
}

static void run(struct dpdpu_queue *q, struct dpdpu_qlink *l, int cancel, int continues)
{
    uint64_t start = dpdpu__now_ns(), end;
    int status = cancel ? DPDPU_ERR_SHUTDOWN : q->ops->execute(q, l);

    end = dpdpu__now_ns();
    retire(q, l, status, start - l->submit_ns, end - start, continues);
    cq_push(l->cq, l);
}

/* Admit an item, with q->lock held: wait for room (which releases the lock
 * meanwhile), then queue it, or return DPDPU__RAN_INLINE when the caller is
 * to run it (still counted in flight). */
static int admit_locked(struct dpdpu_queue *q, struct dpdpu_cq *cq, struct dpdpu_qlink *l, int32_t *done,
                        int64_t timeout_us, int may_inline)
{
    uint64_t deadline = dpdpu__deadline_ns(timeout_us);
    int rc = 0;

    l->next = NULL;
    l->cq = cq;
    l->done = done;
    l->serial = q->ops->serial != NULL && q->ops->serial(q, l);
    __atomic_store_n(&l->waiters, 0, __ATOMIC_RELAXED);
    __atomic_store_n(done, 0, __ATOMIC_RELEASE);
    while (!q->stopping && q->in_flight >= q->depth) {
        if (rc == ETIMEDOUT)
            return deadline == DPDPU__NO_WAIT ? DPDPU_ERR_AGAIN : DPDPU_ERR_TIMEOUT;
        rc = dpdpu__cond_wait_until(&q->has_room, &q->lock, deadline);
    }
    if (q->stopping)
        return DPDPU_ERR_SHUTDOWN;
    l->submit_ns = dpdpu__now_ns();
    __atomic_store_n(&q->in_flight, q->in_flight + 1, __ATOMIC_RELAXED);
    if (may_inline && q->head == NULL && !(l->serial && q->serial_running > 0)) {
        /* Nothing is queued ahead of it, so running it on the caller's thread
         * keeps the order and saves handing a tiny job to another thread. */
        if (l->serial)
            q->serial_running++;
        return DPDPU__RAN_INLINE;
    }
    __atomic_fetch_add(&cq->outstanding, 1, __ATOMIC_RELAXED);
    if (q->tail != NULL)
        q->tail->next = l;
    else
        __atomic_store_n(&q->head, l, __ATOMIC_RELEASE);
    q->tail = l;
    /* A polling worker sees it without a wake-up, and a serial item behind a
     * running one waits for the worker that runs that one. */
    if (q->sleepers > 0 && !(l->serial && q->serial_running > 0))
        pthread_cond_signal(&q->has_work);
    return DPDPU_OK;
}

int dpdpu__queue_submit(struct dpdpu_queue *q, struct dpdpu_cq *cq, struct dpdpu_qlink *l, int32_t *done,
                        int64_t timeout_us, int may_inline)
{
    uint64_t start, exec_ns;
    int rc, status;

    pthread_mutex_lock(&q->lock);
    rc = admit_locked(q, cq, l, done, timeout_us, may_inline);
    pthread_mutex_unlock(&q->lock);
    if (rc != DPDPU__RAN_INLINE)
        return rc;
    count(&q->counters.inlined, 1);
    start = dpdpu__now_ns();
    status = q->ops->execute(q, l);
    exec_ns = dpdpu__now_ns() - start;
    retire(q, l, status, 0, exec_ns, 0);
    __atomic_store_n(done, 1, __ATOMIC_RELEASE);
    return DPDPU__RAN_INLINE;
}

void dpdpu__queue_lock(struct dpdpu_queue *q)
{
    pthread_mutex_lock(&q->lock);
}

void dpdpu__queue_unlock(struct dpdpu_queue *q)
{
    pthread_mutex_unlock(&q->lock);
}

int dpdpu__queue_submit_locked(struct dpdpu_queue *q, struct dpdpu_cq *cq, struct dpdpu_qlink *l, int32_t *done,
                               int64_t timeout_us)
{
    return admit_locked(q, cq, l, done, timeout_us, 0);
}

/* Unlink the first item that may start now; called with q->lock held. */
static struct dpdpu_qlink *take_locked(struct dpdpu_queue *q)
{
    struct dpdpu_qlink *l = q->head, *prev = NULL;

    if (q->serial_running > 0) {
        while (l != NULL && l->serial) {
            prev = l;
            l = l->next;
        }
    }
    if (l == NULL)
        return NULL;
    if (prev == NULL) /* idle workers peek at the head unlocked */
        __atomic_store_n(&q->head, l->next, __ATOMIC_RELAXED);
    else
        prev->next = l->next;
    if (q->tail == l)
        q->tail = prev;
    if (l->serial)
        q->serial_running++;
    return l;
}

/* A queued item for a worker that helps while it waits; *cancel says
 * whether the queue is stopping without draining. */
static struct dpdpu_qlink *try_take(struct dpdpu_queue *q, int *cancel)
{
    struct dpdpu_qlink *l;

    pthread_mutex_lock(&q->lock);
    l = take_locked(q);
    *cancel = q->stopping && !q->drain;
    pthread_mutex_unlock(&q->lock);
    return l;
}

static void *worker_main(void *arg)
{
    struct dpdpu_queue *q = arg;

    tls_queue = q;
    for (;;) {
        struct dpdpu_qlink *l;
        int cancel;
        uint64_t spin_until = dpdpu__now_ns() + q->spin_ns;

        while (__atomic_load_n(&q->head, __ATOMIC_ACQUIRE) == NULL &&
               !__atomic_load_n(&q->stopping, __ATOMIC_ACQUIRE) && dpdpu__now_ns() < spin_until)
            dpdpu__cpu_relax();
        pthread_mutex_lock(&q->lock);
        while ((l = take_locked(q)) == NULL && !(q->stopping && q->head == NULL)) {
            q->sleepers++;
            pthread_cond_wait(&q->has_work, &q->lock);
            q->sleepers--;
        }
        if (l == NULL) {
            /* Stopping with nothing left.  Workers asleep behind the last
             * serial item were not woken when it ended: let them see this. */
            pthread_cond_broadcast(&q->has_work);
            pthread_mutex_unlock(&q->lock);
            break;
        }
        cancel = q->stopping && !q->drain;
        pthread_mutex_unlock(&q->lock);
        run(q, l, cancel, 1);
    }
    tls_queue = NULL;
    return NULL;
}

/* ---- completion queues -------------------------------------------------- */

int dpdpu__cq_init(struct dpdpu_cq *cq)
{
    return sync_init(&cq->lock, &cq->cond, &cq->item_cond);
}

void dpdpu__cq_destroy(struct dpdpu_cq *cq)
{
    sync_destroy(&cq->lock, &cq->cond, &cq->item_cond);
}

struct dpdpu_qlink *dpdpu__cq_take(struct dpdpu_cq *cq, uint32_t max, uint32_t *n)
{
    struct dpdpu_qlink *first, *last = NULL;
    uint32_t k = 0;

    pthread_mutex_lock(&cq->lock);
    first = cq->head;
    for (struct dpdpu_qlink *l = first; l != NULL && k < max; l = l->next) {
        last = l;
        k++;
    }
    if (last != NULL) {
        cq->head = last->next;
        if (cq->head == NULL)
            cq->tail = NULL;
        last->next = NULL;
    }
    cq->len -= k;
    __atomic_fetch_sub(&cq->outstanding, k, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&cq->lock);
    *n = k;
    return k ? first : NULL;
}

int dpdpu__cq_wait(struct dpdpu_cq *cq, int64_t timeout_us, int64_t interval_us)
{
    uint64_t deadline = dpdpu__deadline_ns(timeout_us), kicks, until;
    int n, kicked, graced = 0;

    pthread_mutex_lock(&cq->lock);
    kicks = cq->kicks;
    while (cq->kicks == kicks) {
        if (cq->len != 0) {
            if (interval_us <= 0 || cq->poll_hot || graced)
                break;
            /* A completion nobody waited for yet: its submitter is most
             * likely about to ask for it.  Give it an interval to do so
             * rather than race it for the completion (and the GIL). */
            graced = 1;
            until = dpdpu__deadline_ns(interval_us);
        } else if (interval_us > 0 && cq->poll_hot && __atomic_load_n(&cq->outstanding, __ATOMIC_RELAXED) > 0) {
            /* Completions came without anyone waiting for them: more are
             * likely, so look every interval rather than be woken by each. */
            until = dpdpu__deadline_ns(interval_us);
        } else {
            /* Woken by a completion nobody waits for, so a submit-then-wait
             * loop never wakes this thread. */
            cq->poll_hot = 0;
            graced = 0;
            cq->completion_sleepers++;
            dpdpu__cond_wait_until(&cq->cond, &cq->lock, deadline);
            cq->completion_sleepers--;
            until = DPDPU__NO_WAIT; /* waited already */
        }
        if (until != DPDPU__NO_WAIT)
            dpdpu__cond_wait_until(&cq->cond, &cq->lock, until < deadline ? until : deadline);
        if (dpdpu__now_ns() >= deadline)
            break;
    }
    n = (int)cq->len;
    if (n > 0)
        cq->poll_hot = 1;
    kicked = cq->kicks != kicks;
    pthread_mutex_unlock(&cq->lock);
    return n == 0 && !kicked ? DPDPU_ERR_TIMEOUT : n;
}

void dpdpu__cq_kick(struct dpdpu_cq *cq)
{
    pthread_mutex_lock(&cq->lock);
    cq->kicks++;
    pthread_cond_broadcast(&cq->cond);
    pthread_mutex_unlock(&cq->lock);
}

int dpdpu__cq_wait_item(struct dpdpu_cq *cq, struct dpdpu_qlink *l, const int32_t *done_flag, int64_t timeout_us,
                        uint64_t spin_ns)
{
    struct dpdpu_queue *own = tls_queue;
    uint64_t deadline, slice, spin_until;
    int rc = 0, done;

    if (__atomic_load_n(done_flag, __ATOMIC_ACQUIRE))
        return DPDPU_OK;
    deadline = dpdpu__deadline_ns(timeout_us);
    /* Announce the wait first so the completion does not wake a poller. */
    __atomic_fetch_add(&l->waiters, 1, __ATOMIC_ACQ_REL);
    if (own == NULL) {
        spin_until = dpdpu__now_ns() + spin_ns;
        if (deadline < spin_until)
            spin_until = deadline;
        while (!__atomic_load_n(done_flag, __ATOMIC_ACQUIRE) && dpdpu__now_ns() < spin_until)
            dpdpu__cpu_relax();
    }
    pthread_mutex_lock(&cq->lock);
    while (!__atomic_load_n(done_flag, __ATOMIC_ACQUIRE) && rc != ETIMEDOUT) {
        if (own != NULL && deadline != DPDPU__NO_WAIT) {
            /* A worker waiting on another item would hold its slot hostage;
             * if every worker of a queue did, items queued behind them could
             * never run.  Run queued items of our own queue while we wait. */
            struct dpdpu_qlink *next;
            int cancel;

            pthread_mutex_unlock(&cq->lock);
            next = try_take(own, &cancel);
            if (next != NULL)
                run(own, next, cancel, 0);
            pthread_mutex_lock(&cq->lock);
            if (next != NULL)
                continue;
            slice = dpdpu__now_ns() + 1000000ull; /* look at the queue again in 1 ms */
            if (deadline < slice)
                slice = deadline;
            rc = dpdpu__cond_wait_until(&cq->item_cond, &cq->lock, slice);
            if (rc == ETIMEDOUT && dpdpu__now_ns() < deadline)
                rc = 0;
        } else {
            rc = dpdpu__cond_wait_until(&cq->item_cond, &cq->lock, deadline);
        }
    }
    __atomic_fetch_sub(&l->waiters, 1, __ATOMIC_ACQ_REL);
    done = __atomic_load_n(done_flag, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&cq->lock);
    return done ? DPDPU_OK : DPDPU_ERR_TIMEOUT;
}

uint64_t dpdpu__cq_outstanding(const struct dpdpu_cq *cq)
{
    return __atomic_load_n(&cq->outstanding, __ATOMIC_RELAXED);
}

uint32_t dpdpu__cq_len(struct dpdpu_cq *cq)
{
    uint32_t n;

    pthread_mutex_lock(&cq->lock);
    n = cq->len;
    pthread_mutex_unlock(&cq->lock);
    return n;
}
