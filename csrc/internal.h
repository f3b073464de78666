/*
 * internal.h - structures and helpers shared by the core's translation units.
 * Nothing here is part of the public API.
 */
#ifndef DPDPU_INTERNAL_H
#define DPDPU_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>

#include "dpdpu.h"
#include "queue.h"

#define DPDPU_DEFAULT_QUEUE_DEPTH 1024u
#define DPDPU_MAX_WORKERS 256u

/* How long an idle worker, or a thread waiting for a task, polls before it
 * sleeps.  Short tasks then complete without a sleep/wake-up pair on either
 * side, the way polled progress engines run. */
#define DPDPU_WORKER_SPIN_NS 100000ull
#define DPDPU_WAIT_SPIN_NS 50000ull

/* One step of a polling loop.  Yielding (rather than only pausing the CPU)
 * matters when the thread we wait for was scheduled on our core. */
static inline void dpdpu__cpu_relax(void)
{
    sched_yield();
}

struct dpdpu_engine {
    char name[32];
    uint32_t index;
    uint32_t ops_mask;
    uint64_t max_job_bytes; /* UINT64_MAX when unlimited */
    int on_device;
    struct dpdpu_dev *dev;
    struct dpdpu_queue queue; /* its tasks, run by its worker threads (pe.c) */
    uint64_t bytes_in;        /* __atomic: source bytes of completed tasks */
    uint64_t bytes_out;       /* __atomic: bytes written by successful tasks */
};

struct dpdpu_dev {
    char name[64];
    uint64_t memory_bytes; /* UINT64_MAX when unlimited */
    uint64_t mem_used;     /* updated with __atomic builtins */
    int64_t refs;          /* 1 until released, plus one per memory map; __atomic */
    int closed;            /* __atomic: set once, by the dpdpu_dev_close() that stops the engines */
    dpdpu_callback_fn callback;
    uint32_t n_engines;
    struct dpdpu_engine engines[DPDPU_MAX_ENGINES];
};

struct dpdpu_pe {
    struct dpdpu_cq cq;
};

/* device.c */
int dpdpu__mem_reserve(struct dpdpu_dev *dev, uint64_t bytes);
void dpdpu__mem_release(struct dpdpu_dev *dev, uint64_t bytes);

/* ops.c: the op table. */
/* The facts of an op below DPDPU_OP_COUNT. */
const struct dpdpu_op_info *dpdpu__op(uint32_t op);
/* Op-specific checks at submission (parameters, job size); 0 or a status. */
int dpdpu__op_check(const struct dpdpu_engine *e, const struct dpdpu_task *task);
/* Run one task's op on the calling thread. */
int dpdpu__op_execute(struct dpdpu_engine *e, struct dpdpu_task *task);

/* Arrow kernels (kernels.c): run the struct dpdpu_kernel_job in task->param. */
int dpdpu__kernel_execute(struct dpdpu_task *task);

/* pe.c: the engines' queues. */
int dpdpu__engine_queue_init(struct dpdpu_engine *e, uint32_t depth);

/* deadline.c */
uint64_t dpdpu__now_ns(void);
int dpdpu__cond_init_monotonic(pthread_cond_t *cond);

/*
 * Timeouts and deadlines, one convention for the whole core (queue.c, bdev.c,
 * ring.c).  Every public call that may block takes `int64_t timeout_us`:
 * negative waits without limit, 0 never blocks, a positive value blocks at
 * most that many microseconds.  Inside, a timeout becomes a deadline: an
 * absolute CLOCK_MONOTONIC time in nanoseconds, in which the two ends keep
 * their meaning -- DPDPU__NO_WAIT (0) is already past, DPDPU__FOREVER never
 * comes -- so "deadline < t" and "now >= deadline" need no special case.
 */
#define DPDPU__NO_WAIT ((uint64_t)0)
#define DPDPU__FOREVER UINT64_MAX

/* The deadline of a timeout starting now; one too far to represent (beyond
 * some 290 years) is no limit rather than a time that wrapped around. */
uint64_t dpdpu__deadline_ns(int64_t timeout_us);

/* Wait on cond until the deadline: ETIMEDOUT once it has passed (at once for
 * DPDPU__NO_WAIT), else pthread_cond_wait's result. */
int dpdpu__cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, uint64_t deadline_ns);

#endif /* DPDPU_INTERNAL_H */
