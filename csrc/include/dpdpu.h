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
 * Every call that may block (here, in dpdpu_bdev.h and in dpdpu_ring.h) takes
 * a timeout in microseconds with one meaning: negative waits without limit,
 * 0 never blocks, a positive value blocks at most that long (a timeout too
 * long to represent as a deadline is no limit).  A call that would have to
 * block returns AGAIN when it queues or sends (0) and TIMEOUT once a positive
 * timeout has passed; the wait calls (dpdpu_pe_wait, dpdpu_task_wait,
 * dpdpu_bdev_wait, dpdpu_bdev_io_wait) return TIMEOUT in both cases.
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
    /* Codecs from Python packages: run through the device callback, so they
     * are placed, queued, counted and modeled like every other op. */
    DPDPU_OP_LZ4_COMPRESS = 6,
    DPDPU_OP_LZ4_DECOMPRESS = 7,
    DPDPU_OP_ZSTD_COMPRESS = 8,
    DPDPU_OP_ZSTD_DECOMPRESS = 9,
    /* Arrow columnar kernels: task->param points to a struct dpdpu_kernel_job. */
    DPDPU_OP_FILTER = 10,
    DPDPU_OP_PROJECT = 11,
    DPDPU_OP_AGGREGATE = 12,
    DPDPU_OP_PARTITION = 13,
    DPDPU_OP_COUNT = 14
};

/**
 * What the core knows about one op: one table in the core holds these facts,
 * and dpdpu_op_info() reads them, so that a binding can check its own.
 */
struct dpdpu_op_info {
    /** The op's name, e.g. "deflate_compress" (what dpdpu_op_name() says). */
    const char *name;
    /** Non-zero: the task writes into task->dst (else dst is ignored). */
    int32_t needs_dst;
    /** Non-zero: a worker runs it by calling the device callback. */
    int32_t callback;
    /** Non-zero: a source larger than the engine's largest job runs as
     *  segments of that size instead of being refused (TOO_LARGE). */
    int32_t splits;
    /** Sources up to this many bytes are cheap enough that running the
     *  task on the submitting thread (DPDPU_SUBMIT_INLINE) beats handing it
     *  to a worker; 0: not at any size.  Advice for the caller, who decides:
     *  the core honours DPDPU_SUBMIT_INLINE for every op. */
    uint64_t inline_max_bytes;
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
struct dpdpu_cq;

/**
 * Where a task (or a block I/O, dpdpu_bdev.h) sits in the core's queues: one
 * link that the submission queue, the completion queue and the threads
 * waiting for the item share.  Private to the core; public only because the
 * descriptors embed it.
 */
struct dpdpu_qlink {
    struct dpdpu_qlink *next;
    struct dpdpu_cq *cq; /* the completion queue the item completes onto */
    int32_t *done;       /* the descriptor's done flag */
    uint64_t submit_ns;
    int32_t waiters; /* threads waiting for this very item */
    int32_t serial;  /* runs one at a time with its queue's other serial items */
};

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
    uint32_t in_flight; /**< tasks queued or running now */
    uint32_t capacity;  /**< most tasks the engine queues at once */
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
 * buffers it names, alive until the task has completed and (unless it ran
 * inline) has been taken off the completion queue by dpdpu_pe_progress().  Fields marked "out"
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
    struct dpdpu_qlink priv_link;
    uint64_t priv_reserved;
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

/**
 * Describe an op.
 * \param op a value of enum dpdpu_op
 * \param out receives the facts (its name points to static storage)
 * \return 0, UNKNOWN_OP for an op outside enum dpdpu_op, INVALID_ARGUMENT
 *         if out is NULL
 */
int dpdpu_op_info(uint32_t op, struct dpdpu_op_info *out);

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
 * (capabilities, counters) until dpdpu_dev_release().  Other threads may be
 * submitting meanwhile: each of their tasks is either queued in time (and
 * completes) or refused with SHUTDOWN.
 * \return 0, or INVALID_ARGUMENT if dev is NULL or already closed (of two
 *         racing calls, one returns 0)
 */
int dpdpu_dev_close(struct dpdpu_dev *dev, int drain);

/**
 * Give up the caller's reference to a device, closing it first (without
 * draining) if needed.  Memory maps still registered keep it alive until
 * they are destroyed.  No other call on the device may be in progress.
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

/**
 * Room left in an engine's queue: its depth minus the tasks queued or running
 * (a racy snapshot, which is all a scheduler can use anyway).
 * \return the room (0 when full), or INVALID_ARGUMENT for a bad engine index
 */
int64_t dpdpu_dev_engine_room(const struct dpdpu_dev *dev, uint32_t engine);

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
 *        on the calling thread when the engine has nothing queued (worth it
 *        for jobs up to dpdpu_op_info()'s inline_max_bytes); a task run that
 *        way is complete on return (task->done is set) and is not put on pe's
 *        completion queue
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
 * \param interval_us 0: wake at every other completion.  Positive: the same
 *        until a call finds completions; from then on, while tasks are
 *        outstanding, look at the queue every interval_us instead of being
 *        woken by each completion (a burst costs one wake-up).  A completion
 *        found by a call that was woken for it is left an interval for its
 *        submitter to take before the call returns.
 * \return the number of queued completions (0 after a kick), or TIMEOUT
 *         (at once for a timeout of 0 with nothing queued)
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
 * waits (unless the timeout is 0), so tasks that wait for each other cannot
 * starve an engine.
 * \return 0, or TIMEOUT (negative timeout: no limit; 0: at once)
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

/* --- Arrow kernels ----------------------------------------------------- */

/*
 * Columnar kernels over Arrow arrays read in place.  A task of op
 * DPDPU_OP_FILTER, _PROJECT, _AGGREGATE or _PARTITION carries in task->param
 * the address of a struct dpdpu_kernel_job; its source and destination stay
 * empty.  The job names input column views over Arrow buffers (which the
 * caller keeps alive until the task completes), a program of instructions
 * for predicates and projections, and an array of struct dpdpu_kernel_out the
 * kernel fills with buffers it allocates; the caller owns those afterwards
 * and releases each with dpdpu_kernel_free().  task->result is the number of
 * output rows.
 */

/** Physical layout of a column's values (of its indices, for a dictionary). */
enum dpdpu_col_type {
    DPDPU_COL_NULL = 0,          /**< every value null; no buffers */
    DPDPU_COL_BOOL = 1,          /**< bit-packed */
    DPDPU_COL_INT8 = 2,
    DPDPU_COL_INT16 = 3,
    DPDPU_COL_INT32 = 4,
    DPDPU_COL_INT64 = 5,
    DPDPU_COL_UINT8 = 6,
    DPDPU_COL_UINT16 = 7,
    DPDPU_COL_UINT32 = 8,
    DPDPU_COL_UINT64 = 9,
    DPDPU_COL_FLOAT32 = 10,
    DPDPU_COL_FLOAT64 = 11,
    DPDPU_COL_STRING = 12,       /**< int32 offsets and bytes */
    DPDPU_COL_LARGE_STRING = 13, /**< int64 offsets and bytes */
    DPDPU_COL_FIXED = 14,        /**< opaque values of `width` bytes: gathered, never evaluated */
    DPDPU_COL_OTHER = 15         /**< a layout the kernels do not read: only validity is used */
};

/**
 * A view of one Arrow array (no copy).  Row r of the view is element
 * offset + r of the buffers.
 */
struct dpdpu_column {
    uint32_t type;            /**< enum dpdpu_col_type */
    uint32_t width;           /**< bytes per value of DPDPU_COL_FIXED */
    int64_t length;           /**< rows */
    int64_t offset;           /**< Arrow's array offset, in elements */
    int64_t null_count;       /**< nulls among the rows (0 lets kernels skip the bitmap) */
    const uint8_t *validity;  /**< bit set: valid; NULL: every row valid */
    const void *values;       /**< values (bits for BOOL), or indices into dictionary */
    const void *offsets;      /**< strings: length + 1 offsets */
    const struct dpdpu_column *dictionary; /**< not NULL: values are indices into it */
};

/** Instruction codes of a kernel program (see struct dpdpu_kinsn). */
enum dpdpu_kcode {
    DPDPU_K_COLUMN = 1,      /**< dst = column a, read as dst's kind */
    DPDPU_K_LITERAL = 2,     /**< dst = i64 / f64 (null with DPDPU_KF_NULL) */
    DPDPU_K_CMP_LIT = 3,     /**< dst = column a <cmp> literal (in the column's domain) */
    DPDPU_K_CMP = 4,         /**< dst = register a <cmp> register b (same kind) */
    DPDPU_K_CMP_STR = 5,     /**< dst = string column a <cmp> string column b */
    DPDPU_K_IS_IN = 6,       /**< dst = column a in the set at ptr (never null) */
    DPDPU_K_IS_NULL = 7,     /**< dst = register (column with DPDPU_KF_COLUMN) a is null */
    DPDPU_K_AND = 8,         /**< Kleene and */
    DPDPU_K_OR = 9,          /**< Kleene or */
    DPDPU_K_NOT = 10,
    DPDPU_K_ADD = 11,        /**< integers wrap */
    DPDPU_K_SUB = 12,
    DPDPU_K_MUL = 13,
    DPDPU_K_DIV = 14,        /**< F64 only */
    DPDPU_K_NEG = 15,
    DPDPU_K_TO_F64 = 16,     /**< dst (F64) = register a (I64) */
    DPDPU_K_VALID_CONST = 17 /**< dst = null where column a is null, else i64 != 0 */
};

/** Comparison of DPDPU_K_CMP_LIT, DPDPU_K_CMP and DPDPU_K_CMP_STR. */
enum dpdpu_kcmp {
    DPDPU_KCMP_EQ = 0,
    DPDPU_KCMP_NE = 1,
    DPDPU_KCMP_LT = 2,
    DPDPU_KCMP_LE = 3,
    DPDPU_KCMP_GT = 4,
    DPDPU_KCMP_GE = 5
};

/** What a register holds: bytes 0/1, int64 or double, each with validity. */
enum dpdpu_kkind {
    DPDPU_KIND_BOOL = 0,
    DPDPU_KIND_I64 = 1,
    DPDPU_KIND_F64 = 2
};

/** Instruction flags. */
enum dpdpu_kflags {
    DPDPU_KF_NULL = 1,     /**< LITERAL: the null literal */
    DPDPU_KF_NEGATE = 2,   /**< IS_NULL: is valid instead */
    DPDPU_KF_COLUMN = 4,   /**< IS_NULL: a is a column, not a register */
    DPDPU_KF_FLOAT = 8,    /**< CMP_LIT on an integer column: compare as double with f64 */
    DPDPU_KF_HAS_NULL = 16,/**< IS_IN: the set holds null */
    DPDPU_KF_HAS_NAN = 32  /**< IS_IN: the set holds NaN */
};

/**
 * One instruction.  Registers and columns are indices; a register is
 * written once, before it is read.  IS_IN sets: integer columns give len
 * sorted int64 values (uint64 values sorted as unsigned for UINT64 columns),
 * float columns the sorted bit patterns of non-NaN doubles, string columns
 * len + 1 int64 offsets at ptr into the bytes at aux, sorted bytewise.
 */
struct dpdpu_kinsn {
    uint16_t code;           /**< enum dpdpu_kcode */
    uint8_t cmp;             /**< enum dpdpu_kcmp */
    uint8_t kind;            /**< enum dpdpu_kkind of dst */
    uint32_t flags;          /**< enum dpdpu_kflags */
    int32_t dst;
    int32_t a;
    int32_t b;
    int32_t pad;
    int64_t i64;             /**< integer literal (uint64 bits for UINT64 columns) */
    double f64;              /**< float literal */
    const void *ptr;         /**< string literal bytes, or the IS_IN set */
    const void *aux;         /**< IS_IN on strings: the bytes */
    int64_t len;             /**< string literal length, or IS_IN set size */
};

/** Aggregate functions. */
enum dpdpu_agg_func {
    DPDPU_AGG_COUNT = 0,     /**< non-null values, int64 */
    DPDPU_AGG_SUM = 1,       /**< int64 / uint64 / double; null for no values */
    DPDPU_AGG_MIN = 2,       /**< the column's type */
    DPDPU_AGG_MAX = 3,
    DPDPU_AGG_MEAN = 4,      /**< double */
    DPDPU_AGG_COUNT_ALL = 5  /**< rows, int64 (column ignored) */
};

/** One aggregate of an aggregate job. */
struct dpdpu_kernel_agg {
    uint32_t func;           /**< enum dpdpu_agg_func */
    int32_t column;          /**< input column (-1 for COUNT_ALL) */
};

/** Job flags. */
enum dpdpu_kjob_flags {
    /** filter: when every row passes, write no output and set passthrough */
    DPDPU_KJOB_PASSTHROUGH = 1,
    /** filter, partition: hand back the selected rows (relative to row_begin) */
    DPDPU_KJOB_KEEP_SELECTION = 2,
    /** aggregate: write the result columns (else hand back a partial state) */
    DPDPU_KJOB_FINAL = 4
};

/**
 * One output array.  The kernel allocates each buffer (NULL validity: no
 * nulls) and reports its size; free each with dpdpu_kernel_free().
 */
struct dpdpu_kernel_out {
    uint32_t type;           /**< out: enum dpdpu_col_type written */
    uint32_t width;          /**< out: bytes per value of DPDPU_COL_FIXED */
    int64_t length;          /**< out */
    int64_t null_count;      /**< out */
    void *validity;          /**< out */
    void *values;            /**< out */
    void *offsets;           /**< out (strings) */
    uint64_t validity_bytes; /**< out */
    uint64_t values_bytes;   /**< out */
    uint64_t offsets_bytes;  /**< out */
};

/**
 * A kernel job: what a DPDPU_OP_FILTER / _PROJECT / _AGGREGATE / _PARTITION
 * task runs.  Fields marked "out" are written by the kernel.
 *
 * filter: evaluates the program over rows [row_begin, row_begin + n_rows)
 *   and gathers the rows where register `result` is true into out[i] for
 *   each column gather[i].
 * project: evaluates the program and writes register project[i] to out[i].
 * aggregate: groups the rows by the key columns (none: one group), merging
 *   the partial states first; with DPDPU_KJOB_FINAL writes the key columns
 *   then the aggregates to out[] (n_keys + n_aggs entries), groups in order
 *   of first appearance; else hands back `state` (dpdpu_kernel_state_free).
 * partition: hashes the key columns of each row into one of n_parts parts
 *   and gathers the rows part after part (in row order within a part) into
 *   out[i] for each column gather[i]; part p is rows
 *   [part_offsets[p], part_offsets[p + 1]) of the outputs.
 */
struct dpdpu_kernel_job {
    uint32_t op;                            /**< the DPDPU_OP_* of the task */
    uint32_t flags;                         /**< enum dpdpu_kjob_flags */
    uint32_t n_columns;
    uint32_t n_insns;
    const struct dpdpu_column *columns;
    int64_t row_begin;
    int64_t n_rows;                         /**< at most 2^31 - 1 */
    const struct dpdpu_kinsn *insns;
    uint32_t n_regs;
    int32_t result;                         /**< filter: the predicate's register */
    uint32_t n_gather;
    uint32_t n_project;
    const int32_t *gather;
    const int32_t *project;
    uint32_t n_keys;
    uint32_t n_aggs;
    const int32_t *keys;
    const struct dpdpu_kernel_agg *aggs;
    void *const *partials;                  /**< aggregate: states of earlier jobs, in row order */
    uint32_t n_partials;
    uint32_t n_parts;
    int64_t *part_offsets;                  /**< partition: n_parts + 1 entries (caller's memory) */
    uint32_t n_out;
    int32_t passthrough;                    /**< out: filter kept every row, wrote nothing */
    struct dpdpu_kernel_out *out;           /**< n_out entries (caller's memory) */
    int64_t out_rows;                       /**< out */
    uint32_t *selection;                    /**< out: DPDPU_KJOB_KEEP_SELECTION */
    void *state;                            /**< out: aggregate partial state */
    char message[128];                      /**< out: why a job was invalid */
};

/** Free a buffer a kernel allocated (NULL is ignored). */
void dpdpu_kernel_free(void *ptr);

/** Free an aggregate partial state (NULL is ignored). */
void dpdpu_kernel_state_free(void *state);

/**
 * The hash partition kernels use for a row's keys: the same on every
 * machine and run.  Exposed so callers can route single rows alike.
 * \return the 64-bit hash of row `row` over the key columns
 */
uint64_t dpdpu_kernel_hash_row(const struct dpdpu_column *columns, const int32_t *keys, uint32_t n_keys,
                               int64_t row);

/* cffi:end */

#ifdef __cplusplus
}
#endif

#endif /* DPDPU_H */
