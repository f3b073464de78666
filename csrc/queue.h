/*
 * queue.h - the core's one queue engine, internal to the core.
 *
 * A submission queue (struct dpdpu_queue) holds items up to a depth, makes
 * submitters wait for room, and feeds its own worker threads; each item
 * completes onto a completion queue (struct dpdpu_cq) that callers poll,
 * block on, or wait on for one item.  What an item is and what running it
 * means comes from a plug-in's table of functions (struct dpdpu_queue_ops):
 * pe.c plugs in tasks on a device's engines, bdev.c block I/O on a file.
 *
 * Items are a struct dpdpu_qlink embedded in the plug-in's descriptor
 * (DPDPU__CONTAINER_OF gets the descriptor back), which also holds the
 * descriptor's public done flag.  The engine publishes that flag with a
 * release store after everything it and the plug-in write into the item.
 *
 * Concurrency: everything in a queue is touched under its lock, except that
 * idle workers peek at `head` and `stopping` without it and schedulers read
 * `in_flight`, so those three are only ever stored atomically.  A completion
 * queue is touched under its own lock, except `outstanding` (atomic).  Lock
 * order: a submission queue's lock, then a completion queue's.
 */
#ifndef DPDPU_QUEUE_H
#define DPDPU_QUEUE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "dpdpu.h"

/* The descriptor of type `type` whose member `member` is at `ptr`. */
#define DPDPU__CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* dpdpu__queue_submit() ran the item on the calling thread. */
#define DPDPU__RAN_INLINE 1

struct dpdpu_queue;

/*
 * A plug-in: filled with designated initializers; fields marked "may be
 * NULL" are optional.
 */
struct dpdpu_queue_ops {
    /* Required.  Run one item on the calling thread (a worker, a worker
     * helping while it waits, or the submitter for an inline item) and
     * return its status. */
    int (*execute)(struct dpdpu_queue *q, struct dpdpu_qlink *item);
    /* Required.  Record an item's outcome (status and times) in the item and
     * the plug-in's counters, and let go of what its submission took.  Runs
     * for cancelled items too (status SHUTDOWN, never executed), on the
     * thread that ran the item, before the item stops counting as in flight
     * and before its done flag is published. */
    void (*finish)(struct dpdpu_queue *q, struct dpdpu_qlink *item, int status, uint64_t queued_ns,
                   uint64_t exec_ns);
    /* May be NULL: no item is serial.  Called once per item at submission:
     * non-zero for an item that must not run while another serial item of
     * the queue runs (a buffered bdev's writes, which the kernel serializes
     * anyway).  Workers run the items queued behind it meanwhile. */
    int (*serial)(const struct dpdpu_queue *q, const struct dpdpu_qlink *item);
};

/* Counters of a queue since it was made; updated with __atomic builtins. */
struct dpdpu_queue_counters {
    uint64_t completed; /* items completed, whatever their status */
    uint64_t failed;    /* of which with an error status */
    uint64_t inlined;   /* of which ran on the submitting thread */
    uint64_t exec_ns;   /* time spent executing */
    uint64_t queued_ns; /* time items waited for a worker */
};

struct dpdpu_queue {
    const struct dpdpu_queue_ops *ops;
    uint32_t depth;   /* most items queued or running at once */
    uint64_t spin_ns; /* how long an idle worker polls before it sleeps */

    pthread_mutex_t lock;
    pthread_cond_t has_work;
    pthread_cond_t has_room;
    struct dpdpu_qlink *head; /* stored atomically */
    struct dpdpu_qlink *tail;
    uint32_t in_flight; /* queued plus running; stored atomically */
    uint32_t sleepers;  /* workers blocked on has_work */
    uint32_t serial_running;
    int stopping; /* stored atomically */
    int drain;    /* when stopping: run what is queued (else cancel it) */

    uint32_t n_threads; /* running; 0 once joined */
    pthread_t *threads;

    struct dpdpu_queue_counters counters;
};

struct dpdpu_cq {
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* completions for dpdpu__cq_wait() */
    pthread_cond_t item_cond; /* completions for dpdpu__cq_wait_item() */
    struct dpdpu_qlink *head;
    struct dpdpu_qlink *tail;
    uint32_t len;
    uint32_t completion_sleepers; /* waiters to wake at each completion nobody waits for */
    int poll_hot;                 /* the last dpdpu__cq_wait() found completions */
    uint64_t kicks;
    uint64_t outstanding; /* queued, not yet taken; __atomic */
};

/* ---- submission queues -------------------------------------------------- */

/* Make an empty queue; no workers yet.  Returns 0 or INTERNAL. */
int dpdpu__queue_init(struct dpdpu_queue *q, const struct dpdpu_queue_ops *ops, uint32_t depth, uint64_t spin_ns);

/* Start `workers` threads; on failure stops those started and returns
 * NO_MEMORY or INTERNAL. */
int dpdpu__queue_start(struct dpdpu_queue *q, uint32_t workers);

/* Refuse new items (SHUTDOWN), let the workers run (drain) or cancel what
 * is queued, and join them.  Returns 1 if this call stopped the queue, 0 if
 * it was stopping already. */
int dpdpu__queue_stop(struct dpdpu_queue *q, int drain);

/* Free a stopped queue's resources.  No thread may use it any more. */
void dpdpu__queue_destroy(struct dpdpu_queue *q);

/*
 * Queue an item that completes onto cq, waiting for room as the timeout
 * convention says.  The plug-in has checked it and reset its outputs.  With
 * may_inline and nothing queued, run it on the calling thread instead: it is
 * then complete on return and never on cq.
 * Returns 0 (queued), DPDPU__RAN_INLINE, AGAIN, TIMEOUT or SHUTDOWN.
 */
int dpdpu__queue_submit(struct dpdpu_queue *q, struct dpdpu_cq *cq, struct dpdpu_qlink *item, int32_t *done,
                        int64_t timeout_us, int may_inline);

/* For several items that must queue under one hold of the lock (a batch
 * that fills a queue exactly): dpdpu__queue_submit_locked() is
 * dpdpu__queue_submit() without inline runs, called between these two. */
void dpdpu__queue_lock(struct dpdpu_queue *q);
void dpdpu__queue_unlock(struct dpdpu_queue *q);
int dpdpu__queue_submit_locked(struct dpdpu_queue *q, struct dpdpu_cq *cq, struct dpdpu_qlink *item, int32_t *done,
                               int64_t timeout_us);

/* Items queued or running now (a racy snapshot). */
uint32_t dpdpu__queue_in_flight(const struct dpdpu_queue *q);

/* A snapshot of the queue's counters. */
void dpdpu__queue_counters(const struct dpdpu_queue *q, struct dpdpu_queue_counters *out);

/* ---- completion queues -------------------------------------------------- */

/* Returns 0 or INTERNAL. */
int dpdpu__cq_init(struct dpdpu_cq *cq);
void dpdpu__cq_destroy(struct dpdpu_cq *cq);

/* Unlink up to max completed items, oldest first: returns the first, linked
 * through `next` to the others (the last's next is NULL), and their number
 * in *n.  Never blocks. */
struct dpdpu_qlink *dpdpu__cq_take(struct dpdpu_cq *cq, uint32_t max, uint32_t *n);

/* Block until completions are queued, a kick, or the timeout (the pollers'
 * wait: completions of items someone waits for in dpdpu__cq_wait_item() do
 * not wake it).  interval_us > 0 polls while completions keep coming (see
 * dpdpu_pe_wait()).  Returns the number queued (0 after a kick) or TIMEOUT. */
int dpdpu__cq_wait(struct dpdpu_cq *cq, int64_t timeout_us, int64_t interval_us);

/* Wake every thread in dpdpu__cq_wait(). */
void dpdpu__cq_kick(struct dpdpu_cq *cq);

/* Block until the item whose done flag is `done` has completed.  A caller
 * that is not a worker polls for up to spin_ns first; a worker runs queued
 * items of its own queue while it waits (unless the timeout is 0).  Returns
 * 0 or TIMEOUT. */
int dpdpu__cq_wait_item(struct dpdpu_cq *cq, struct dpdpu_qlink *item, const int32_t *done, int64_t timeout_us,
                        uint64_t spin_ns);

/* Items submitted towards cq and not yet taken off it. */
uint64_t dpdpu__cq_outstanding(const struct dpdpu_cq *cq);

/* Completed items not yet taken off cq. */
uint32_t dpdpu__cq_len(struct dpdpu_cq *cq);

#endif /* DPDPU_QUEUE_H */
