/* ops.c - the op table (every per-op fact) and what a worker does for each
 * op: deflate (zlib), memcpy, crc32c, the device callback, the kernels. */
#include <limits.h>
#include <string.h>
#include <zlib.h>

#include "internal.h"

/* Bound on how far a too-small decompression keeps counting to report the
 * size it needs, so a decompression bomb cannot keep a worker busy forever. */
#define DPDPU_COUNT_LIMIT (1ull << 40)

uint64_t dpdpu_deflate_bound(uint64_t len)
{
    /* zlib's compressBound() for a single call, widened to 64 bits, plus room
     * for the full-flush markers of a job split into segments of 12 KiB or more
     * (at most 6 bytes each). */
    return len + (len >> 11) + (len >> 12) + (len >> 14) + (len >> 25) + 13 + 12;
}

static int op_memcpy(struct dpdpu_task *t)
{
    if (t->dst.len < t->src.len) {
        t->needed = t->src.len;
        return DPDPU_ERR_BUFFER_TOO_SMALL;
    }
    if (t->src.len)
        memcpy(t->dst.addr, t->src.addr, (size_t)t->src.len);
    t->result = t->src.len;
    return DPDPU_OK;
}

static int zlib_status(int rc)
{
    switch (rc) {
    case Z_MEM_ERROR:
        return DPDPU_ERR_NO_MEMORY;
    case Z_STREAM_ERROR:
        return DPDPU_ERR_INVALID_ARGUMENT;
    default:
        return DPDPU_ERR_INTERNAL;
    }
}

/* Compress src into one zlib stream.  A job larger than the engine's largest
 * (segment < src.len) is cut into segments of at most `segment` bytes, each
 * ended by a full flush: the dictionary is reset, so every segment decodes on
 * its own -- the independent jobs a hardware engine with a job-size limit would
 * run -- while the whole stays one standard zlib stream. */
static int op_compress(struct dpdpu_task *t, uint64_t segment)
{
    z_stream zs;
    uint8_t *in = t->src.addr, *out = t->dst.addr;
    uint64_t left = t->src.len, room = t->dst.len, take, need;
    int rc, flush, status = DPDPU_OK;

    if (segment == 0 || segment > UINT_MAX)
        segment = UINT_MAX;
    need = dpdpu_deflate_bound(t->src.len);
    if (segment < 12288) /* the bound covers flush markers of 12 KiB segments and up */
        need += 16 * (t->src.len / segment + 1);
    if (t->dst.len < need) {
        /* deflate would fail part-way; say what is needed up front. */
        t->needed = need;
        return DPDPU_ERR_BUFFER_TOO_SMALL;
    }
    memset(&zs, 0, sizeof(zs));
    rc = deflateInit(&zs, (int)t->param);
    if (rc != Z_OK)
        return zlib_status(rc);
    do {
        take = left < segment ? left : segment;
        left -= take;
        flush = left == 0 ? Z_FINISH : Z_FULL_FLUSH;
        zs.next_in = in;
        zs.avail_in = (uInt)take;
        in += take;
        do {
            uInt chunk = room > UINT_MAX ? UINT_MAX : (uInt)room;
            zs.next_out = out;
            zs.avail_out = chunk;
            rc = deflate(&zs, flush);
            out += chunk - zs.avail_out;
            room -= chunk - zs.avail_out;
            if (rc == Z_STREAM_ERROR) {
                status = DPDPU_ERR_INTERNAL;
                goto done;
            }
            if (zs.avail_out != 0 || rc == Z_STREAM_END)
                break;
            if (room == 0) { /* cannot happen within the bound; never write past dst */
                status = DPDPU_ERR_INTERNAL;
                goto done;
            }
        } while (1);
    } while (left != 0);
    if (rc != Z_STREAM_END) {
        status = DPDPU_ERR_INTERNAL;
        goto done;
    }
    t->result = (uint64_t)(out - (uint8_t *)t->dst.addr);
done:
    deflateEnd(&zs);
    return status;
}

/* Feed the next slice of a 64-bit length through zlib's 32-bit counters. */
static void refill(Bytef **next, uInt *avail, uint8_t **cursor, uint64_t *left)
{
    uInt take;

    if (*avail != 0 || *left == 0)
        return;
    take = *left > UINT_MAX ? UINT_MAX : (uInt)*left;
    *next = *cursor;
    *avail = take;
    *cursor += take;
    *left -= take;
}

static int op_decompress(struct dpdpu_task *t, uint64_t count_limit)
{
    z_stream zs;
    uint8_t scratch[16384];
    uint8_t *in = t->src.addr, *out = t->dst.addr;
    uint64_t in_left = t->src.len, out_left = t->dst.len;
    uint64_t extra = 0; /* bytes produced past the end of dst */
    int counting = 0, rc, status = DPDPU_OK;

    memset(&zs, 0, sizeof(zs));
    if (inflateInit(&zs) != Z_OK)
        return DPDPU_ERR_NO_MEMORY;

    for (;;) {
        refill(&zs.next_in, &zs.avail_in, &in, &in_left);
        if (!counting) {
            refill(&zs.next_out, &zs.avail_out, &out, &out_left);
            if (zs.avail_out == 0)
                counting = 1; /* dst is full: keep going only to measure */
        }
        if (counting) {
            zs.next_out = scratch;
            zs.avail_out = sizeof(scratch);
        }
        rc = inflate(&zs, Z_NO_FLUSH);
        if (counting)
            extra += sizeof(scratch) - zs.avail_out;
        if (rc == Z_STREAM_END)
            break;
        if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR) {
            status = DPDPU_ERR_CORRUPT_DATA;
            goto out;
        }
        if (rc == Z_MEM_ERROR) {
            status = DPDPU_ERR_NO_MEMORY;
            goto out;
        }
        if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_left == 0) {
            status = DPDPU_ERR_TRUNCATED_DATA;
            goto out;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            status = DPDPU_ERR_INTERNAL;
            goto out;
        }
        if (counting && t->dst.len + extra > count_limit) {
            status = DPDPU_ERR_TOO_LARGE;
            goto out;
        }
    }
    if (zs.avail_in != 0 || in_left != 0) {
        /* Bytes after the end of the stream are not ours to ignore. */
        status = DPDPU_ERR_CORRUPT_DATA;
        goto out;
    }
    if (extra != 0) {
        t->needed = t->dst.len + extra;
        status = DPDPU_ERR_BUFFER_TOO_SMALL;
        goto out;
    }
    t->result = zs.total_out;
out:
    inflateEnd(&zs);
    return status;
}

/* ---- the op table ------------------------------------------------------- */

static int run_nop(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    return DPDPU_OK;
}

static int run_memcpy(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    return op_memcpy(t);
}

static int run_compress(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    return op_compress(t, e->max_job_bytes == UINT64_MAX ? 0 : e->max_job_bytes);
}

static int run_decompress(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    /* Count past the engine's largest job too: the size is what lets the
     * runtime hand the job to an engine that can take it. */
    return op_decompress(t, DPDPU_COUNT_LIMIT);
}

static int run_crc32c(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    t->result = dpdpu_crc32c((uint32_t)t->param, t->src.addr, t->src.len);
    return DPDPU_OK;
}

static int run_callback(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    return e->dev->callback != NULL ? e->dev->callback(t) : DPDPU_ERR_NOT_SUPPORTED;
}

static int run_kernel(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    return dpdpu__kernel_execute(t);
}

static int check_compress(const struct dpdpu_engine *e, const struct dpdpu_task *t)
{
    return t->param < -1 || t->param > 9 ? DPDPU_ERR_INVALID_ARGUMENT : DPDPU_OK;
}

/* A decompression's output counts against the engine's largest job. */
static int check_decompress(const struct dpdpu_engine *e, const struct dpdpu_task *t)
{
    return t->dst.len > e->max_job_bytes ? DPDPU_ERR_TOO_LARGE : DPDPU_OK;
}

/* Sources up to this size are cheap enough to run on the submitter's thread
 * for the ops whose cost is the copy or the checksum: handing them to a
 * worker costs more. */
#define TINY 4096u

struct op_entry {
    struct dpdpu_op_info info;
    /* Required: run the op on the calling thread; returns its status. */
    int (*run)(struct dpdpu_engine *e, struct dpdpu_task *t);
    /* May be NULL: checks at submission beyond the common ones. */
    int (*check)(const struct dpdpu_engine *e, const struct dpdpu_task *t);
};

/* Every fact about an op, in one place.  Ops run through the device callback
 * are codecs from Python packages (and Python functions): placed, queued,
 * counted and modeled like every other op. */
_Static_assert(DPDPU_OP_COUNT == 14, "a new op needs its row in op_table");
static const struct op_entry op_table[DPDPU_OP_COUNT] = {
    [DPDPU_OP_NOP] = {.info = {.name = "nop", .inline_max_bytes = TINY}, .run = run_nop},
    [DPDPU_OP_MEMCPY] = {.info = {.name = "memcpy", .needs_dst = 1, .inline_max_bytes = TINY}, .run = run_memcpy},
    /* Larger than the engine's largest job: independent segments of one stream. */
    [DPDPU_OP_DEFLATE_COMPRESS] = {.info = {.name = "deflate_compress", .needs_dst = 1, .splits = 1},
                                   .run = run_compress,
                                   .check = check_compress},
    [DPDPU_OP_DEFLATE_DECOMPRESS] = {.info = {.name = "deflate_decompress", .needs_dst = 1},
                                     .run = run_decompress,
                                     .check = check_decompress},
    [DPDPU_OP_CRC32C] = {.info = {.name = "crc32c", .inline_max_bytes = TINY}, .run = run_crc32c},
    [DPDPU_OP_CALLBACK] = {.info = {.name = "callback", .callback = 1}, .run = run_callback},
    [DPDPU_OP_LZ4_COMPRESS] = {.info = {.name = "lz4_compress", .callback = 1}, .run = run_callback},
    [DPDPU_OP_LZ4_DECOMPRESS] = {.info = {.name = "lz4_decompress", .callback = 1}, .run = run_callback},
    [DPDPU_OP_ZSTD_COMPRESS] = {.info = {.name = "zstd_compress", .callback = 1}, .run = run_callback},
    [DPDPU_OP_ZSTD_DECOMPRESS] = {.info = {.name = "zstd_decompress", .callback = 1}, .run = run_callback},
    /* Arrow kernels: task->param points to a struct dpdpu_kernel_job. */
    [DPDPU_OP_FILTER] = {.info = {.name = "filter"}, .run = run_kernel},
    [DPDPU_OP_PROJECT] = {.info = {.name = "project"}, .run = run_kernel},
    [DPDPU_OP_AGGREGATE] = {.info = {.name = "aggregate"}, .run = run_kernel},
    [DPDPU_OP_PARTITION] = {.info = {.name = "partition"}, .run = run_kernel},
};

const struct dpdpu_op_info *dpdpu__op(uint32_t op)
{
    return &op_table[op].info;
}

int dpdpu__op_check(const struct dpdpu_engine *e, const struct dpdpu_task *t)
{
    const struct op_entry *entry = &op_table[t->op];
    return entry->check != NULL ? entry->check(e, t) : DPDPU_OK;
}

int dpdpu__op_execute(struct dpdpu_engine *e, struct dpdpu_task *t)
{
    return t->op < DPDPU_OP_COUNT ? op_table[t->op].run(e, t) : DPDPU_ERR_UNKNOWN_OP;
}

int dpdpu_op_info(uint32_t op, struct dpdpu_op_info *out)
{
    if (op >= DPDPU_OP_COUNT)
        return DPDPU_ERR_UNKNOWN_OP;
    if (out == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    *out = op_table[op].info;
    return DPDPU_OK;
}

const char *dpdpu_op_name(uint32_t op)
{
    return op < DPDPU_OP_COUNT ? op_table[op].info.name : "unknown";
}
