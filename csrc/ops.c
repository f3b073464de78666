/* ops.c - what a worker does for each op: deflate (zlib), memcpy, crc32c. */
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

int dpdpu__op_execute(struct dpdpu_dev *dev, struct dpdpu_task *task)
{
    struct dpdpu_engine *e = &dev->engines[task->engine];

    switch (task->op) {
    case DPDPU_OP_NOP:
        return DPDPU_OK;
    case DPDPU_OP_MEMCPY:
        return op_memcpy(task);
    case DPDPU_OP_DEFLATE_COMPRESS:
        return op_compress(task, e->max_job_bytes == UINT64_MAX ? 0 : e->max_job_bytes);
    case DPDPU_OP_DEFLATE_DECOMPRESS:
        /* Count past the engine's largest job too: the size is what lets the
         * runtime hand the job to an engine that can take it. */
        return op_decompress(task, DPDPU_COUNT_LIMIT);
    case DPDPU_OP_CRC32C:
        task->result = dpdpu_crc32c((uint32_t)task->param, task->src.addr, task->src.len);
        return DPDPU_OK;
    case DPDPU_OP_CALLBACK:
    case DPDPU_OP_LZ4_COMPRESS:
    case DPDPU_OP_LZ4_DECOMPRESS:
    case DPDPU_OP_ZSTD_COMPRESS:
    case DPDPU_OP_ZSTD_DECOMPRESS:
        return dev->callback != NULL ? dev->callback(task) : DPDPU_ERR_NOT_SUPPORTED;
    case DPDPU_OP_FILTER:
    case DPDPU_OP_PROJECT:
    case DPDPU_OP_AGGREGATE:
    case DPDPU_OP_PARTITION:
        return dpdpu__kernel_execute(task);
    default:
        return DPDPU_ERR_UNKNOWN_OP;
    }
}
