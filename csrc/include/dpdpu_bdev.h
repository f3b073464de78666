/*
 * dpdpu_bdev.h - a block device over a file, shaped like an SPDK bdev.
 *
 * Open a bdev on a file with a block size and a capacity, fill I/O
 * descriptors (type, offset, length, buffer, user data) and submit them to the
 * bdev's queue, whose depth is bounded; the bdev's own worker threads run them
 * with pread/pwrite/fdatasync, never touching the Python interpreter, and
 * publish each completion with a status.  Callers collect completions by
 * polling (dpdpu_bdev_poll), by blocking until some are ready
 * (dpdpu_bdev_wait), or by waiting for one descriptor (dpdpu_bdev_io_wait),
 * exactly as they collect task completions from a progress engine.
 *
 * I/O is not ordered: descriptors in flight together may run in any order and
 * in parallel (except that a buffered bdev runs one write at a time, since the
 * kernel serializes buffered writes to a file anyway; its other workers take
 * reads meanwhile).  A flush makes durable every write that completed before
 * the flush was submitted; a write still in flight may or may not be covered.
 *
 * Every function that can fail returns 0 or a negative enum dpdpu_status.
 * When a system call caused the failure the status is DPDPU_ERR_INTERNAL and
 * the errno is kept: in errno for dpdpu_bdev_open(), in io->os_errno for an
 * I/O.
 */
#ifndef DPDPU_BDEV_H
#define DPDPU_BDEV_H

#include <stddef.h>
#include <stdint.h>

#include "dpdpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */

/** What an I/O descriptor asks for. */
enum dpdpu_bdev_io_type {
    DPDPU_BDEV_IO_READ = 0,
    DPDPU_BDEV_IO_WRITE = 1,
    /** fdatasync: offset, length and buf are ignored. */
    DPDPU_BDEV_IO_FLUSH = 2
};

/** Flags of struct dpdpu_bdev_cfg. */
enum dpdpu_bdev_flags {
    /** Create the file if it does not exist. */
    DPDPU_BDEV_CREATE = 1,
    /** Bypass the page cache (O_DIRECT); if the file system refuses it the
     *  bdev falls back to buffered I/O and says so in its info. */
    DPDPU_BDEV_DIRECT = 2,
    /** With DPDPU_BDEV_DIRECT: fail with NOT_SUPPORTED instead of falling back. */
    DPDPU_BDEV_DIRECT_REQUIRED = 4,
    /** Refuse writes (NOT_SUPPORTED at submit); flushes are allowed. */
    DPDPU_BDEV_READ_ONLY = 8,
    /** With DPDPU_BDEV_DIRECT: do not try O_DIRECT, behave as on a file
     *  system that refuses it (fall back, or NOT_SUPPORTED when required).
     *  For callers that must exercise their fallback on any file system. */
    DPDPU_BDEV_DIRECT_REFUSED = 16
};

struct dpdpu_bdev;

/** Everything needed to open a block device. */
struct dpdpu_bdev_cfg {
    /** File to open; copied at open. */
    const char *path;
    /** Bytes per block: a power of two from 512 to 1 MiB. */
    uint32_t block_size;
    /** enum dpdpu_bdev_flags. */
    uint32_t flags;
    /** Blocks the device holds; 0 takes the file's size (which must then
     *  hold at least one block).  A file shorter than the capacity is
     *  extended (sparsely) unless the bdev is read-only. */
    uint64_t capacity_blocks;
    /** Most I/Os submitted and not yet complete (0 means 32). */
    uint32_t queue_depth;
    /** I/O worker threads (0 means min(queue_depth, 4)). */
    uint32_t workers;
};

/** What a bdev turned out to be once opened. */
struct dpdpu_bdev_info {
    uint32_t block_size;
    uint32_t queue_depth;
    uint64_t capacity_blocks;
    /** Alignment a buffer address must have: 1, or min(block size, 4096)
     *  for a direct bdev. */
    uint32_t buf_align;
    uint32_t workers;
    /** Non-zero when I/O bypasses the page cache. */
    int32_t direct;
    /** Non-zero when O_DIRECT was asked for and refused by the file system. */
    int32_t direct_fallback;
};

/** Counters of a bdev since it was opened. */
struct dpdpu_bdev_stats {
    uint64_t reads;         /**< reads completed, whatever their status */
    uint64_t writes;        /**< writes completed */
    uint64_t flushes;       /**< flushes completed */
    uint64_t failed;        /**< of all those, completed with an error status */
    uint64_t bytes_read;    /**< by successful reads */
    uint64_t bytes_written; /**< by successful writes */
    uint64_t busy_ns;       /**< time workers spent executing I/O */
    uint64_t queued_ns;     /**< time I/Os waited for a worker */
    uint32_t in_flight;     /**< submitted and not yet complete */
    uint32_t completed;     /**< complete and not yet taken by dpdpu_bdev_poll() */
};

/**
 * One I/O.  The caller owns the memory and keeps it, and the buffer it names,
 * alive until the descriptor has been taken off the completion queue by
 * dpdpu_bdev_poll() (or the bdev is released).  Fields marked "out" are
 * written by the bdev; the rest are read at submit.
 */
struct dpdpu_bdev_io {
    uint32_t type;         /**< enum dpdpu_bdev_io_type */
    uint32_t flags;        /**< none defined yet; must be 0 */
    uint64_t offset;       /**< byte offset, a multiple of the block size */
    uint64_t length;       /**< bytes, a multiple of the block size */
    void *buf;             /**< source of a write, destination of a read */
    uint64_t user_data;    /**< opaque, returned untouched */
    int32_t status;        /**< out: completion status */
    int32_t done;          /**< out: non-zero once completed */
    int32_t os_errno;      /**< out: errno of a failed system call, else 0 */
    uint64_t result;       /**< out: bytes transferred */
    uint64_t queued_ns;    /**< out: time spent waiting for a worker */
    uint64_t exec_ns;      /**< out: time spent executing */
    /* private to the core: do not touch */
    struct dpdpu_qlink priv_link;
};

/**
 * Open a block device over a file and start its I/O workers.
 * \param cfg configuration; copied, need not outlive the call
 * \param out receives the bdev
 * \return 0; INVALID_ARGUMENT for a bad configuration (block size, a capacity
 *         of 0 from an empty file); NOT_SUPPORTED if O_DIRECT was required and
 *         refused; NO_MEMORY; INTERNAL when a system call failed (errno says
 *         which error) or a thread could not be started
 */
int dpdpu_bdev_open(const struct dpdpu_bdev_cfg *cfg, struct dpdpu_bdev **out);

/**
 * Stop a bdev: refuse new I/O (SHUTDOWN), let the I/Os in flight complete,
 * join the workers and wake every waiting thread.  Completions stay on the
 * queue for dpdpu_bdev_poll(); info and counters stay readable until
 * dpdpu_bdev_release().  Calling it again does nothing.
 * \return 0, or INVALID_ARGUMENT if bdev is NULL
 */
int dpdpu_bdev_close(struct dpdpu_bdev *bdev);

/**
 * Close the bdev if needed, close its file and free it.  No other thread may
 * use the bdev any more; completions not yet polled are dropped.
 */
void dpdpu_bdev_release(struct dpdpu_bdev *bdev);

/**
 * Describe an open bdev.
 * \return 0, or INVALID_ARGUMENT
 */
int dpdpu_bdev_get_info(const struct dpdpu_bdev *bdev, struct dpdpu_bdev_info *out);

/**
 * Read a bdev's counters.
 * \return 0, or INVALID_ARGUMENT
 */
int dpdpu_bdev_get_stats(struct dpdpu_bdev *bdev, struct dpdpu_bdev_stats *out);

/**
 * Submit one I/O; it completes onto the bdev's completion queue.  Offsets,
 * lengths (and, for a direct bdev, buffer addresses) are checked here.
 * \param timeout_us how long to wait for room when queue_depth I/Os are in
 *        flight: 0 returns AGAIN at once, a negative value waits without limit
 * \return 0 when queued; INVALID_ARGUMENT (unknown type, flags, misaligned
 *         offset, length or buffer, NULL buffer, zero length); OUT_OF_RANGE
 *         when the range ends past the capacity; NOT_SUPPORTED for a write to
 *         a read-only bdev; AGAIN, TIMEOUT; SHUTDOWN after dpdpu_bdev_close()
 */
int dpdpu_bdev_submit(struct dpdpu_bdev *bdev, struct dpdpu_bdev_io *io, int64_t timeout_us);

/**
 * Submit up to n I/Os in order, stopping at the first one refused.
 * \param timeout_us applies to each I/O as in dpdpu_bdev_submit()
 * \return how many were queued (ios[0..k) are in flight); when none was, the
 *         status that refused ios[0]
 */
int dpdpu_bdev_submit_batch(struct dpdpu_bdev *bdev, struct dpdpu_bdev_io *const *ios, uint32_t n,
                            int64_t timeout_us);

/**
 * Take up to max completed I/Os off the completion queue, oldest first.
 * Never blocks.
 * \return the number stored in out, or INVALID_ARGUMENT
 */
int dpdpu_bdev_poll(struct dpdpu_bdev *bdev, struct dpdpu_bdev_io **out, uint32_t max);

/**
 * Block until completions are queued, dpdpu_bdev_kick() is called, the bdev
 * is closed, or the timeout passes (negative: no limit; 0: do not block).  Completions of I/Os
 * a thread waits for in dpdpu_bdev_io_wait() do not wake this call.
 * \param interval_us 0: wake at every other completion.  Positive: the same
 *        until a call finds completions; from then on, while I/O is in flight,
 *        look at the queue every interval_us instead of being woken by each
 *        completion (a burst costs one wake-up, and the I/Os' own waiters get
 *        to theirs first)
 * \return the number of queued completions (may be 0 after a kick or a
 *         close), or TIMEOUT
 */
int dpdpu_bdev_wait(struct dpdpu_bdev *bdev, int64_t timeout_us, int64_t interval_us);

/** Wake every thread blocked in dpdpu_bdev_wait(). */
void dpdpu_bdev_kick(struct dpdpu_bdev *bdev);

/**
 * Block until one submitted I/O has completed (whether or not it has been
 * polled yet).
 * \return 0, TIMEOUT (negative timeout: no limit; 0: at once), INVALID_ARGUMENT
 */
int dpdpu_bdev_io_wait(struct dpdpu_bdev *bdev, struct dpdpu_bdev_io *io, int64_t timeout_us);

/* cffi:end */

#ifdef __cplusplus
}
#endif

#endif /* DPDPU_BDEV_H */
