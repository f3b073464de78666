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
    uint32_t queue_depth;
    uint64_t max_job_bytes; /* UINT64_MAX when unlimited */
    int on_device;
    struct dpdpu_dev *dev;

    /* The queue.  Everything below is read and written under `lock`; idle
     * workers also peek at `head` and `stopping` without it, and schedulers
     * read `in_flight`, so those three are only ever stored atomically. */
    pthread_mutex_t lock;
    pthread_cond_t has_work;
    pthread_cond_t has_room;
    struct dpdpu_task *head;
    struct dpdpu_task *tail;
    uint32_t in_flight; /* queued plus running */
    uint32_t sleepers;  /* workers blocked on has_work */
    int stopping;
    int drain;

    uint32_t n_threads;
    pthread_t *threads;

    struct dpdpu_engine_stats stats; /* updated with __atomic builtins */
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
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* completions for dpdpu_pe_wait() */
    pthread_cond_t task_cond; /* completions for dpdpu_task_wait() */
    struct dpdpu_task *cq_head;
    struct dpdpu_task *cq_tail;
    uint32_t cq_len;
    uint32_t completion_sleepers; /* pollers to wake at each completion */
    uint32_t idle_sleepers;       /* pollers to wake at the next submission */
    uint64_t kicks;
    uint64_t outstanding;
};

/* device.c */
int dpdpu__mem_reserve(struct dpdpu_dev *dev, uint64_t bytes);
void dpdpu__mem_release(struct dpdpu_dev *dev, uint64_t bytes);

/* ops.c: run one task's op on the calling worker thread. */
int dpdpu__op_execute(struct dpdpu_dev *dev, struct dpdpu_task *task);

/* Ops a worker runs by calling the device callback. */
#define DPDPU__CALLBACK_OPS_MASK                                                                   \
    ((1u << DPDPU_OP_CALLBACK) | (1u << DPDPU_OP_LZ4_COMPRESS) | (1u << DPDPU_OP_LZ4_DECOMPRESS) | \
     (1u << DPDPU_OP_ZSTD_COMPRESS) | (1u << DPDPU_OP_ZSTD_DECOMPRESS))

/* Arrow kernels (kernels.c): run the struct dpdpu_kernel_job in task->param. */
int dpdpu__kernel_execute(struct dpdpu_task *task);

/* pe.c */
void *dpdpu__worker_main(void *engine);
uint64_t dpdpu__now_ns(void);
int dpdpu__cond_init_monotonic(pthread_cond_t *cond);

/*
 * Timeouts and deadlines, one convention for the whole core (pe.c, bdev.c,
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
