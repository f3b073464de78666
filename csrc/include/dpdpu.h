/*
 * dpdpu.h - the dpdpu C core: devices, registered memory, a progress engine.
 *
 * The shape follows DPU SDKs: open a device from a configuration, query what
 * each of its engines can run, register caller memory as a memory map and take
 * buffers over it, submit tasks (op, source, destination, user data) to an
 * engine's queue, and collect completions from a progress engine by polling or
 * by waiting.  Worker threads owned by each engine execute the tasks; they
 * never touch the Python interpreter except through the optional callback op.
 *
 * Every function that can fail returns 0 (DPDPU_OK) or a negative
 * enum dpdpu_status; dpdpu_status_describe() turns one into a sentence.
 *
 * The block between the cffi markers is read verbatim by the binding build
 * (csrc/build_native.py), so it holds only declarations cffi understands.
 */
#ifndef DPDPU_H
#define DPDPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */

/** Most engines a device may have. */
#define DPDPU_MAX_ENGINES 8

/** Status codes: 0 is success, every error is negative. */
enum dpdpu_status {
    DPDPU_OK = 0,
    DPDPU_ERR_INVALID_ARGUMENT = -1,
    DPDPU_ERR_NO_MEMORY = -2,
    DPDPU_ERR_NOT_SUPPORTED = -3,
    DPDPU_ERR_TOO_LARGE = -4,
    DPDPU_ERR_NO_DEVICE_MEMORY = -5,
    DPDPU_ERR_CORRUPT_DATA = -6,
    DPDPU_ERR_TRUNCATED_DATA = -7,
    DPDPU_ERR_BUFFER_TOO_SMALL = -8,
    DPDPU_ERR_UNKNOWN_OP = -9,
    DPDPU_ERR_SHUTDOWN = -10,
    DPDPU_ERR_AGAIN = -11,
    DPDPU_ERR_TIMEOUT = -12,
    DPDPU_ERR_CALLBACK = -13,
    DPDPU_ERR_OUT_OF_RANGE = -14,
    DPDPU_ERR_IN_USE = -15,
    DPDPU_ERR_INTERNAL = -16
};

/** Operations an engine may run. */
enum dpdpu_op {
    DPDPU_OP_NOP = 0,
    DPDPU_OP_MEMCPY = 1,
    DPDPU_OP_DEFLATE_COMPRESS = 2,
    DPDPU_OP_DEFLATE_DECOMPRESS = 3,
    DPDPU_OP_CRC32C = 4,
    DPDPU_OP_CALLBACK = 5,
    DPDPU_OP_COUNT = 6
};

/** Flags of dpdpu_task_submit(). */
enum dpdpu_submit_flags {
    DPDPU_SUBMIT_QUEUE = 0,
    /** Run the task on the calling thread if nothing is queued on its engine;
     *  it is then complete on return and skips the completion queue. */
    DPDPU_SUBMIT_INLINE = 1
};

/** Memory map flags. */
enum dpdpu_mmap_flags {
    DPDPU_MMAP_HOST = 0,
    /** The range lives in device memory and counts against its capacity. */
    DPDPU_MMAP_DEVICE = 1
};

struct dpdpu_dev;
struct dpdpu_pe;
struct dpdpu_task;

/**
 * A registered memory range.  Its fields are private to the core; the
 * layout is public only so that a task can embed the maps it makes for
 * itself (dpdpu_task_map_host()).
 */
struct dpdpu_mmap {
    struct dpdpu_dev *dev;
    void *addr;
    uint64_t len;
    uint32_t flags;
    int32_t owns_memory; /* 1: freed with the map, 2: embedded in a task */
    int64_t users;       /* tasks in flight naming this map */
};

/**
 * A window [addr, addr + len) inside a registered memory map.  For a
 * destination, len is the capacity and the task reports how much it wrote.
 */
struct dpdpu_buf {
    struct dpdpu_mmap *mmap;
    void *addr;
    uint64_t len;
};

/** Counters of one engine since the device was opened. */
struct dpdpu_engine_stats {
    uint64_t tasks;     /**< tasks completed, whatever their status */
    uint64_t failed;    /**< of which completed with an error status */
    uint64_t inlined;   /**< of which ran on the submitting thread */
    uint64_t bytes_in;  /**< source bytes of completed tasks */
    uint64_t bytes_out; /**< bytes written by successful tasks */
    uint64_t exec_ns;   /**< time spent executing */
};

/** Function run by the worker for DPDPU_OP_CALLBACK; returns a status. */
typedef int (*dpdpu_callback_fn)(struct dpdpu_task *task);

/** One engine of a device: which ops it runs and how it is staffed. */
struct dpdpu_engine_cfg {
    /** Short name, copied at open (at most 31 bytes). */
    const char *name;
    /** Bit (1 << op) is set for each enum dpdpu_op the engine runs. */
    uint32_t ops_mask;
    /** Worker threads executing this engine's queue (at least 1). */
    uint32_t workers;
    /** Most tasks queued or running at once (0 means 1024). */
    uint32_t queue_depth;
    /** Largest source or destination of one task in bytes (0: no limit). */
    uint64_t max_job_bytes;
    /** Non-zero if a running task's buffers occupy device memory. */
    int32_t on_device;
};

/** Everything needed to open a device. */
struct dpdpu_dev_cfg {
    /** Device name for messages, copied at open (at most 63 bytes). */
    const char *name;
    /** Device memory capacity in bytes (0: no limit). */
    uint64_t memory_bytes;
    /** Number of entries used in engines[]. */
    uint32_t n_engines;
    struct dpdpu_engine_cfg engines[8];
    /** Run by DPDPU_OP_CALLBACK tasks; may be NULL if no engine allows it. */
    dpdpu_callback_fn callback;
};

/**
 * A unit of work.  The caller owns the memory and must keep it, and the
 * buffers it names, alive until the task has completed.  Fields marked "out"
 * are written by the core; the rest are read at submit.
 */
struct dpdpu_task {
    uint32_t op;             /**< enum dpdpu_op */
    uint32_t engine;         /**< engine index within the device */
    int64_t param;           /**< op parameter: deflate level, crc32c seed */
    struct dpdpu_buf src;    /**< input (may be empty for NOP, CALLBACK) */
    struct dpdpu_buf dst;    /**< output capacity (MEMCPY, DEFLATE_*) */
    uint64_t user_data;      /**< opaque, returned untouched */
    int32_t status;          /**< out: completion status */
    int32_t done;            /**< out: non-zero once completed */
    uint64_t result;         /**< out: bytes written, or the crc32c value */
    uint64_t needed;         /**< out: bytes a too-small dst would need */
    uint64_t queued_ns;      /**< out: time spent waiting in the queue */
    uint64_t exec_ns;        /**< out: time spent executing */
    /* private to the core: do not touch */
    struct dpdpu_task *priv_next;
    struct dpdpu_pe *priv_pe;
    struct dpdpu_dev *priv_dev;
    uint64_t priv_submit_ns;
    uint64_t priv_reserved;
    int32_t priv_waiters;
    struct dpdpu_mmap priv_maps[2];
};

/* --- status ------------------------------------------------------------ */

/**
 * \param status a value of enum dpdpu_status
 * \return a static sentence describing it (never NULL)
 */
const char *dpdpu_status_describe(int status);

/**
 * \param status a value of enum dpdpu_status
 * \return the enumerator's name without prefix, e.g. "CORRUPT_DATA"
 */
const char *dpdpu_status_name(int status);

/**
 * \param op a value of enum dpdpu_op
 * \return the op's name, e.g. "deflate_compress", or "unknown"
 */
const char *dpdpu_op_name(uint32_t op);

/** \return the package version this library was built for */
const char *dpdpu_version(void);

/* --- devices ----------------------------------------------------------- */

/**
 * Open a device and start its engines' worker threads.
 * \param cfg configuration; copied, need not outlive the call
 * \param out receives the device
 * \return 0, INVALID_ARGUMENT for a bad configuration, NO_MEMORY, INTERNAL
 *         if a thread could not be started
 */
int dpdpu_dev_open(const struct dpdpu_dev_cfg *cfg, struct dpdpu_dev **out);

/**
 * Stop a device.  Queued tasks are executed first when drain is non-zero,
 * otherwise they complete with DPDPU_ERR_SHUTDOWN.  Worker threads are joined
 * and new submissions fail with SHUTDOWN; the device can still be queried
 * (capabilities, counters) until dpdpu_dev_release().
 * \return 0, or INVALID_ARGUMENT if dev is NULL or already closed
 */
int dpdpu_dev_close(struct dpdpu_dev *dev, int drain);

/**
 * Give up the caller's reference to a device, closing it first (without
 * draining) if needed.  Memory maps still registered keep it alive until
 * they are destroyed.
 */
void dpdpu_dev_release(struct dpdpu_dev *dev);

/** \return the number of engines of the device */
uint32_t dpdpu_dev_engine_count(const struct dpdpu_dev *dev);

/**
 * Capability query.
 * \return 1 if the engine runs op, 0 if not, INVALID_ARGUMENT for a bad engine
 *         index, UNKNOWN_OP for an op outside enum dpdpu_op
 */
int dpdpu_dev_cap_op_supported(const struct dpdpu_dev *dev, uint32_t engine, uint32_t op);

/**
 * Largest job an engine accepts for an op.
 * \param out receives the limit in bytes (UINT64_MAX when unlimited)
 * \return 0, INVALID_ARGUMENT, UNKNOWN_OP, or NOT_SUPPORTED if the engine
 *         lacks the op
 */
int dpdpu_dev_cap_max_job_bytes(const struct dpdpu_dev *dev, uint32_t engine, uint32_t op,
                                uint64_t *out);

/**
 * Read an engine's counters.
 * \return 0, or INVALID_ARGUMENT for a bad engine index
 */
int dpdpu_dev_engine_stats(const struct dpdpu_dev *dev, uint32_t engine, struct dpdpu_engine_stats *out);

/** \return bytes of device memory in use (allocations plus running tasks) */
uint64_t dpdpu_dev_mem_used(const struct dpdpu_dev *dev);

/** \return the device memory capacity in bytes (0: unlimited) */
uint64_t dpdpu_dev_mem_capacity(const struct dpdpu_dev *dev);

/* --- registered memory ------------------------------------------------- */

/**
 * Register caller memory [addr, addr + len) with a device.  Nothing is
 * copied; the caller keeps the memory alive until dpdpu_mmap_destroy().
 * \param flags DPDPU_MMAP_HOST, or DPDPU_MMAP_DEVICE to account the range
 *        as device memory
 * \return 0, INVALID_ARGUMENT, NO_MEMORY, NO_DEVICE_MEMORY, SHUTDOWN
 */
int dpdpu_mmap_create(struct dpdpu_dev *dev, void *addr, uint64_t len, uint32_t flags,
                      struct dpdpu_mmap **out);

/**
 * Allocate len bytes of device memory (zeroed) as a memory map that owns it.
 * \return 0, INVALID_ARGUMENT, NO_MEMORY, NO_DEVICE_MEMORY, SHUTDOWN
 */
int dpdpu_mmap_alloc(struct dpdpu_dev *dev, uint64_t len, struct dpdpu_mmap **out);

/** \return the first byte of the map */
void *dpdpu_mmap_addr(const struct dpdpu_mmap *mmap);

/** \return the length of the map in bytes */
uint64_t dpdpu_mmap_len(const struct dpdpu_mmap *mmap);

/**
 * Unregister (and free, if allocated by dpdpu_mmap_alloc) a memory map.
 * \return 0, or IN_USE while a submitted task still uses it (nothing freed)
 */
int dpdpu_mmap_destroy(struct dpdpu_mmap *mmap);

/**
 * Point buf at [addr, addr + len) of mmap, checking that it lies inside.
 * \return 0, INVALID_ARGUMENT, OUT_OF_RANGE
 */
int dpdpu_buf_init(struct dpdpu_buf *buf, struct dpdpu_mmap *mmap, void *addr, uint64_t len);

/**
 * Register host memory [addr, addr + len) for the life of one task and point
 * the task's source (dst == 0) or destination (dst != 0) at all of it.  The
 * map lives inside the task, so nothing needs destroying afterwards; use
 * dpdpu_mmap_create() for memory that many tasks share.
 * \return 0, INVALID_ARGUMENT, SHUTDOWN
 */
int dpdpu_task_map_host(struct dpdpu_task *task, struct dpdpu_dev *dev, int dst, void *addr, uint64_t len);

/* --- progress engine --------------------------------------------------- */

/** Create a progress engine that collects completions. \return 0, NO_MEMORY */
int dpdpu_pe_create(struct dpdpu_pe **out);

/**
 * Free a progress engine.  No task submitted to it may still be running.
 * \return 0, or IN_USE while tasks are outstanding (nothing freed)
 */
int dpdpu_pe_destroy(struct dpdpu_pe *pe);

/**
 * Submit a task to engine task->engine of dev; it completes into pe.
 * Capability, job size, device memory and buffer ranges are checked here;
 * failures found while executing (corrupt input, small destination) are
 * reported in task->status at completion.
 * \param timeout_us how long to wait for room in a full queue: 0 returns
 *        AGAIN at once, a negative value waits without limit
 * \param flags DPDPU_SUBMIT_QUEUE, or DPDPU_SUBMIT_INLINE to execute the task
 *        on the calling thread when the engine has nothing queued; a task
 *        run that way is complete on return (task->done is set) and is not
 *        put on pe's completion queue
 * \return 0 when queued, 1 when run inline (complete, not queued), or
 *         INVALID_ARGUMENT, UNKNOWN_OP, NOT_SUPPORTED, TOO_LARGE,
 *         NO_DEVICE_MEMORY, OUT_OF_RANGE, AGAIN, TIMEOUT, SHUTDOWN
 */
int dpdpu_task_submit(struct dpdpu_pe *pe, struct dpdpu_dev *dev, struct dpdpu_task *task,
                      int64_t timeout_us, uint32_t flags);

/**
 * Take up to max completed tasks off the completion queue, oldest first.
 * Never blocks.
 * \return the number stored in out
 */
int dpdpu_pe_progress(struct dpdpu_pe *pe, struct dpdpu_task **out, uint32_t max);

/**
 * Block until completions are queued, dpdpu_pe_kick() is called, or the
 * timeout passes (negative: no limit).  Completions of tasks that a thread is
 * waiting for in dpdpu_task_wait() never wake this call (that thread takes
 * them).
 * \param interval_us 0: wake at every other completion.  Positive: a polling
 *        mode that costs no wake-up per task: while tasks are outstanding,
 *        look at the queue every interval_us (so a completion may wait that
 *        long, leaving its submitter time to take it); with nothing
 *        outstanding, sleep until the next submission.
 * \return the number of queued completions (0 after a kick), or TIMEOUT
 */
int dpdpu_pe_wait(struct dpdpu_pe *pe, int64_t timeout_us, int64_t interval_us);

/** Wake every thread blocked in dpdpu_pe_wait(). */
void dpdpu_pe_kick(struct dpdpu_pe *pe);

/** \return tasks submitted to pe and not yet taken by dpdpu_pe_progress() */
uint64_t dpdpu_pe_outstanding(struct dpdpu_pe *pe);

/**
 * Block until one task has completed (whether or not its completion has
 * been taken off the queue yet).  Called on an engine's worker thread (a
 * task waiting for another), it runs queued tasks of its own engine while it
 * waits, so tasks that wait for each other cannot starve an engine.
 * \return 0, or TIMEOUT (negative timeout: no limit)
 */
int dpdpu_task_wait(struct dpdpu_pe *pe, struct dpdpu_task *task, int64_t timeout_us);

/* --- ops, callable directly ---------------------------------------------- */

/**
 * CRC-32C (Castagnoli) of len bytes, continuing from crc (0 to start).
 * \return the updated checksum
 */
uint32_t dpdpu_crc32c(uint32_t crc, const void *data, uint64_t len);

/** \return the largest deflate (zlib format) output for len input bytes */
uint64_t dpdpu_deflate_bound(uint64_t len);

/* cffi:end */

#ifdef __cplusplus
}
#endif

#endif /* DPDPU_H */
