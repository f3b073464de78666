/*
 * kernels.c - Arrow columnar kernels run by engine workers: the job entry
 * point, bitmaps, gathering rows into new arrays, filter and project.
 * Aggregation and partitioning live in kernels_agg.c, the program of
 * predicates and projections in kernels_eval.c.
 *
 * Inputs are read in place through struct dpdpu_column views; outputs are
 * allocated here, sized exactly, and handed to the caller.  Nothing here
 * touches Python.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels_internal.h"

int dpdpu__kfail(struct dpdpu_kernel_job *job, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->message, sizeof(job->message), fmt, ap);
    va_end(ap);
    return DPDPU_ERR_INVALID_ARGUMENT;
}

void *dpdpu__kalloc(size_t n)
{
    void *p = NULL;
    /* 64-byte alignment and padding, as Arrow allocates its own buffers. */
    size_t size = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, size ? size : 64) != 0)
        return NULL;
    return p;
}

void *dpdpu__kcalloc(size_t n)
{
    void *p = dpdpu__kalloc(n);
    if (p != NULL)
        memset(p, 0, (n + 63) & ~(size_t)63);
    return p;
}

void dpdpu_kernel_free(void *ptr)
{
    free(ptr);
}

/* --- bitmaps ---------------------------------------------------------------- */

/* spread[b]: the 8 bits of b as 8 bytes of 0/1, least significant first. */
static uint64_t spread[256];

__attribute__((constructor)) static void init_spread(void)
{
    for (unsigned b = 0; b < 256; b++) {
        uint64_t w = 0;
        for (unsigned k = 0; k < 8; k++)
            w |= (uint64_t)((b >> k) & 1) << (8 * k);
        spread[b] = w;
    }
}

void dpdpu__unpack_bits(const uint8_t *bits, int64_t start, int64_t n, uint8_t *bytes)
{
    int64_t i = 0;
    while (i < n && ((start + i) & 7))
        bytes[i] = (uint8_t)kbit(bits, start + i), i++;
    const uint8_t *p = bits + ((start + i) >> 3);
    for (; i + 8 <= n; i += 8, p++)
        memcpy(bytes + i, &spread[*p], 8);
    for (; i < n; i++)
        bytes[i] = (uint8_t)kbit(bits, start + i);
}

void dpdpu__pack_bits(const uint8_t *bytes, int64_t n, uint8_t *out, int64_t start)
{
    int64_t i = 0;
    for (; i < n && ((start + i) & 7); i++) {
        int64_t j = start + i;
        out[j >> 3] = (uint8_t)((out[j >> 3] & ~(1u << (j & 7))) | ((unsigned)(bytes[i] & 1) << (j & 7)));
    }
    uint8_t *o = out + ((start + i) >> 3);
    for (; i + 8 <= n; i += 8) {
        const uint8_t *b = bytes + i;
        *o++ = (uint8_t)(b[0] | b[1] << 1 | b[2] << 2 | b[3] << 3 | b[4] << 4 | b[5] << 5 | b[6] << 6 | b[7] << 7);
    }
    if (i < n) {
        uint8_t last = 0;
        for (int64_t k = 0; i + k < n; k++)
            last |= (uint8_t)((bytes[i + k] & 1) << k);
        *o = last;
    }
}

/* Validity of the column's own rows (indices, for a dictionary). */
int dpdpu__valid_bytes_plain_index(const struct dpdpu_column *c, int64_t r, int64_t n, uint8_t *bytes)
{
    if (c->validity == NULL || c->null_count == 0)
        return 1;
    dpdpu__unpack_bits(c->validity, c->offset + r, n, bytes);
    return 0;
}

int dpdpu__valid_bytes(const struct dpdpu_column *c, int64_t r, int64_t n, uint8_t *bytes)
{
    int ok;
    const struct dpdpu_column *d = c->dictionary;

    if (c->type == DPDPU_COL_NULL) {
        memset(bytes, 0, (size_t)n);
        return 0;
    }
    ok = dpdpu__valid_bytes_plain_index(c, r, n, bytes);
    if (d == NULL || ((d->validity == NULL || d->null_count == 0) && d->type != DPDPU_COL_NULL))
        return ok;
    if (ok)
        memset(bytes, 1, (size_t)n);
    for (int64_t i = 0; i < n; i++)
        if (bytes[i])
            bytes[i] = (uint8_t)kplain_valid(d, kint_at(c, c->offset + r + i));
    return 0;
}

/* --- gathering ---------------------------------------------------------------- */

void dpdpu__out_release(struct dpdpu_kernel_out *out, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(out[i].validity);
        free(out[i].values);
        free(out[i].offsets);
        out[i].validity = out[i].values = out[i].offsets = NULL;
    }
}

/* dst bits [0, n) = src bits base + sel[j]; returns how many are set. */
static int64_t gather_bits(const uint8_t *src, int64_t base, const uint32_t *sel, int64_t n, uint8_t *dst)
{
    int64_t set = 0, j = 0;
    for (; j + 8 <= n; j += 8) {
        unsigned byte = 0;
        for (int k = 0; k < 8; k++)
            byte |= (unsigned)kbit(src, base + sel[j + k]) << k;
        dst[j >> 3] = (uint8_t)byte;
        set += __builtin_popcount(byte);
    }
    if (j < n) {
        unsigned byte = 0;
        for (int k = 0; j + k < n; k++)
            byte |= (unsigned)kbit(src, base + sel[j + k]) << k;
        dst[j >> 3] = (uint8_t)byte;
        set += __builtin_popcount(byte);
    }
    return set;
}

#define GATHER_FIXED(T)                                                                                        \
    do {                                                                                                       \
        const T *s = (const T *)c->values + base;                                                              \
        T *d = (T *)out->values;                                                                               \
        for (int64_t j = 0; j < n; j++)                                                                        \
            d[j] = s[sel[j]];                                                                                  \
    } while (0)

#define GATHER_STRINGS(O)                                                                                      \
    do {                                                                                                       \
        const O *so = (const O *)c->offsets + base;                                                            \
        O *doff;                                                                                               \
        uint64_t total = 0;                                                                                    \
        for (int64_t j = 0; j < n; j++)                                                                        \
            total += (uint64_t)(so[sel[j] + 1] - so[sel[j]]);                                                  \
        out->offsets_bytes = (uint64_t)(n + 1) * sizeof(O);                                                    \
        out->values_bytes = total;                                                                             \
        out->offsets = dpdpu__kalloc(out->offsets_bytes);                                                      \
        out->values = dpdpu__kalloc(total);                                                                    \
        if (out->offsets == NULL || out->values == NULL)                                                       \
            goto nomem;                                                                                        \
        doff = (O *)out->offsets;                                                                              \
        doff[0] = 0;                                                                                           \
        uint8_t *dst = (uint8_t *)out->values;                                                                 \
        const uint8_t *src = (const uint8_t *)c->values;                                                       \
        O pos = 0;                                                                                             \
        for (int64_t j = 0; j < n; j++) {                                                                      \
            O b = so[sel[j]], len = so[sel[j] + 1] - b;                                                        \
            memcpy(dst + pos, src + b, (size_t)len);                                                           \
            pos += len;                                                                                        \
            doff[j + 1] = pos;                                                                                 \
        }                                                                                                      \
    } while (0)

int dpdpu__gather(const struct dpdpu_column *c, int64_t row0, const uint32_t *sel, int64_t n,
                  struct dpdpu_kernel_out *out)
{
    int64_t base = c->offset + row0;
    size_t width = ktype_width(c);

    memset(out, 0, sizeof(*out));
    out->type = c->type;
    out->width = c->width;
    out->length = n;
    if (c->type == DPDPU_COL_NULL) {
        out->null_count = n;
        return DPDPU_OK;
    }
    if (c->type == DPDPU_COL_OTHER)
        return DPDPU_ERR_INVALID_ARGUMENT;
    if (c->validity != NULL && c->null_count > 0 && n > 0) {
        out->validity_bytes = (uint64_t)(n + 7) / 8;
        out->validity = dpdpu__kalloc(out->validity_bytes);
        if (out->validity == NULL)
            goto nomem;
        out->null_count = n - gather_bits(c->validity, base, sel, n, out->validity);
        if (out->null_count == 0) {
            free(out->validity);
            out->validity = NULL;
            out->validity_bytes = 0;
        }
    }
    switch (c->type) {
    case DPDPU_COL_BOOL:
        out->values_bytes = (uint64_t)(n + 7) / 8;
        if ((out->values = dpdpu__kalloc(out->values_bytes)) == NULL)
            goto nomem;
        gather_bits(c->values, base, sel, n, out->values);
        break;
    case DPDPU_COL_STRING:
        GATHER_STRINGS(int32_t);
        break;
    case DPDPU_COL_LARGE_STRING:
        GATHER_STRINGS(int64_t);
        break;
    default:
        out->values_bytes = (uint64_t)n * width;
        if ((out->values = dpdpu__kalloc(out->values_bytes)) == NULL)
            goto nomem;
        switch (width) {
        case 1:
            GATHER_FIXED(uint8_t);
            break;
        case 2:
            GATHER_FIXED(uint16_t);
            break;
        case 4:
            GATHER_FIXED(uint32_t);
            break;
        case 8:
            GATHER_FIXED(uint64_t);
            break;
        default: {
            const uint8_t *s = (const uint8_t *)c->values + (size_t)base * width;
            for (int64_t j = 0; j < n; j++)
                memcpy((uint8_t *)out->values + (size_t)j * width, s + (size_t)sel[j] * width, width);
        }
        }
    }
    return DPDPU_OK;
nomem:
    dpdpu__out_release(out, 1);
    return DPDPU_ERR_NO_MEMORY;
}

/* --- job checks ----------------------------------------------------------------- */

static int check_columns(struct dpdpu_kernel_job *job)
{
    if (job->n_columns > 0 && job->columns == NULL)
        return dpdpu__kfail(job, "no column views");
    if (job->n_rows < 0 || job->n_rows > KMAX_ROWS || job->row_begin < 0)
        return dpdpu__kfail(job, "rows [%lld, +%lld) out of range", (long long)job->row_begin,
                            (long long)job->n_rows);
    for (uint32_t i = 0; i < job->n_columns; i++) {
        const struct dpdpu_column *c = &job->columns[i];
        const struct dpdpu_column *d = c->dictionary;
        if (c->type > DPDPU_COL_OTHER || c->length < 0 || c->offset < 0 || c->null_count < 0)
            return dpdpu__kfail(job, "column %u: bad view", i);
        if (job->row_begin + job->n_rows > c->length)
            return dpdpu__kfail(job, "column %u has %lld rows, the job reads to row %lld", i,
                                (long long)c->length, (long long)(job->row_begin + job->n_rows));
        if (c->type == DPDPU_COL_FIXED && c->width == 0)
            return dpdpu__kfail(job, "column %u: fixed width 0", i);
        if (c->type != DPDPU_COL_NULL && c->type != DPDPU_COL_OTHER && c->length > 0 && c->values == NULL)
            return dpdpu__kfail(job, "column %u has no values", i);
        if (ktype_is_string(c->type) && c->offsets == NULL)
            return dpdpu__kfail(job, "column %u has no offsets", i);
        if (d != NULL) {
            if (!ktype_is_int(c->type))
                return dpdpu__kfail(job, "column %u: dictionary indices must be integers", i);
            if (d->dictionary != NULL || d->type > DPDPU_COL_OTHER || d->length < 0 || d->offset < 0 ||
                (d->type != DPDPU_COL_NULL && d->length > 0 && d->values == NULL) ||
                (ktype_is_string(d->type) && d->offsets == NULL))
                return dpdpu__kfail(job, "column %u: bad dictionary", i);
        }
    }
    return DPDPU_OK;
}

static int check_list(struct dpdpu_kernel_job *job, const int32_t *list, uint32_t n, const char *what)
{
    if (n > 0 && list == NULL)
        return dpdpu__kfail(job, "no %s list", what);
    for (uint32_t i = 0; i < n; i++)
        if (list[i] < 0 || (uint32_t)list[i] >= job->n_columns)
            return dpdpu__kfail(job, "%s %u names column %d of %u", what, i, list[i], job->n_columns);
    return DPDPU_OK;
}

int dpdpu__check_gather(struct dpdpu_kernel_job *job)
{
    int rc = check_list(job, job->gather, job->n_gather, "gathered column");
    if (rc != DPDPU_OK)
        return rc;
    if (job->n_out < job->n_gather || (job->n_gather > 0 && job->out == NULL))
        return dpdpu__kfail(job, "%u outputs for %u gathered columns", job->n_out, job->n_gather);
    for (uint32_t i = 0; i < job->n_gather; i++)
        if (job->columns[job->gather[i]].type == DPDPU_COL_OTHER)
            return dpdpu__kfail(job, "column %d cannot be gathered", job->gather[i]);
    return DPDPU_OK;
}

/* Gather every gathered column at sel; on failure nothing is left allocated. */
int dpdpu__gather_all(struct dpdpu_kernel_job *job, const uint32_t *sel, int64_t n)
{
    for (uint32_t i = 0; i < job->n_gather; i++) {
        int rc = dpdpu__gather(&job->columns[job->gather[i]], job->row_begin, sel, n, &job->out[i]);
        if (rc != DPDPU_OK) {
            dpdpu__out_release(job->out, i);
            return rc;
        }
    }
    return DPDPU_OK;
}

/* --- filter ------------------------------------------------------------------------ */

static int kernel_filter(struct dpdpu_kernel_job *job)
{
    struct kprog *prog;
    uint32_t *sel;
    int64_t count = 0, n = job->n_rows;
    int rc;

    if ((rc = dpdpu__check_gather(job)) != DPDPU_OK)
        return rc;
    if (job->result < 0 || (uint32_t)job->result >= job->n_regs)
        return dpdpu__kfail(job, "result register %d of %u", job->result, job->n_regs);
    if ((rc = dpdpu__kprog_new(job, &prog)) != DPDPU_OK)
        return rc;
    if (dpdpu__kprog_reg(prog, job->result)->kind != DPDPU_KIND_BOOL) {
        dpdpu__kprog_free(prog);
        return dpdpu__kfail(job, "the predicate register %d is not a bool", job->result);
    }
    sel = dpdpu__kalloc((size_t)n * sizeof(uint32_t));
    if (sel == NULL) {
        dpdpu__kprog_free(prog);
        return DPDPU_ERR_NO_MEMORY;
    }
    for (int64_t r = 0; r < n; r += KBLOCK) {
        int64_t m = n - r < KBLOCK ? n - r : KBLOCK;
        dpdpu__kprog_eval(prog, job->row_begin + r, m);
        /* Null predicate values are stored as 0, so the value alone decides. */
        const uint8_t *keep = dpdpu__kprog_reg(prog, job->result)->v.b;
        for (int64_t i = 0; i < m; i++) {
            sel[count] = (uint32_t)(r + i);
            count += keep[i];
        }
    }
    dpdpu__kprog_free(prog);
    job->out_rows = count;
    if (count == n && (job->flags & DPDPU_KJOB_PASSTHROUGH)) {
        free(sel);
        job->passthrough = 1;
        return DPDPU_OK;
    }
    if ((rc = dpdpu__gather_all(job, sel, count)) != DPDPU_OK) {
        free(sel);
        return rc;
    }
    if (job->flags & DPDPU_KJOB_KEEP_SELECTION)
        job->selection = sel;
    else
        free(sel);
    return DPDPU_OK;
}

/* --- project ----------------------------------------------------------------------- */

static int kernel_project(struct dpdpu_kernel_job *job)
{
    struct kprog *prog;
    int64_t n = job->n_rows;
    int rc;

    if (job->n_out < job->n_project || (job->n_project > 0 && (job->out == NULL || job->project == NULL)))
        return dpdpu__kfail(job, "%u outputs for %u projections", job->n_out, job->n_project);
    for (uint32_t i = 0; i < job->n_project; i++)
        if (job->project[i] < 0 || (uint32_t)job->project[i] >= job->n_regs)
            return dpdpu__kfail(job, "projection %u names register %d of %u", i, job->project[i], job->n_regs);
    if ((rc = dpdpu__kprog_new(job, &prog)) != DPDPU_OK)
        return rc;
    for (uint32_t i = 0; i < job->n_project; i++) {
        struct dpdpu_kernel_out *o = &job->out[i];
        uint8_t kind = dpdpu__kprog_reg(prog, job->project[i])->kind;
        memset(o, 0, sizeof(*o));
        o->length = n;
        o->type = kind == DPDPU_KIND_BOOL ? DPDPU_COL_BOOL
                  : kind == DPDPU_KIND_I64 ? DPDPU_COL_INT64
                                           : DPDPU_COL_FLOAT64;
        o->values_bytes = kind == DPDPU_KIND_BOOL ? (uint64_t)(n + 7) / 8 : (uint64_t)n * 8;
        o->validity_bytes = (uint64_t)(n + 7) / 8;
        o->values = dpdpu__kalloc(o->values_bytes);
        o->validity = dpdpu__kalloc(o->validity_bytes);
        if (o->values == NULL || o->validity == NULL) {
            dpdpu__out_release(job->out, i + 1);
            dpdpu__kprog_free(prog);
            return DPDPU_ERR_NO_MEMORY;
        }
    }
    for (int64_t r = 0; r < n; r += KBLOCK) {
        int64_t m = n - r < KBLOCK ? n - r : KBLOCK;
        dpdpu__kprog_eval(prog, job->row_begin + r, m);
        for (uint32_t i = 0; i < job->n_project; i++) {
            const struct kreg *reg = dpdpu__kprog_reg(prog, job->project[i]);
            struct dpdpu_kernel_out *o = &job->out[i];
            /* Blocks start at multiples of 8 rows, so bitmaps are written byte-aligned. */
            if (reg->kind == DPDPU_KIND_BOOL)
                dpdpu__pack_bits(reg->v.b, m, o->values, r);
            else
                memcpy((uint8_t *)o->values + r * 8, reg->v.p, (size_t)m * 8);
            if (reg->all_valid) {
                memset((uint8_t *)o->validity + r / 8, 0xff, (size_t)(m + 7) / 8);
            } else {
                int64_t valid = 0;
                for (int64_t k = 0; k < m; k++)
                    valid += reg->valid[k];
                o->null_count += m - valid;
                dpdpu__pack_bits(reg->valid, m, o->validity, r);
            }
        }
    }
    dpdpu__kprog_free(prog);
    for (uint32_t i = 0; i < job->n_project; i++) {
        struct dpdpu_kernel_out *o = &job->out[i];
        if (o->null_count == 0) {
            free(o->validity);
            o->validity = NULL;
            o->validity_bytes = 0;
        }
    }
    job->out_rows = n;
    return DPDPU_OK;
}

/* --- entry point --------------------------------------------------------------------- */

int dpdpu__kernel_execute(struct dpdpu_task *task)
{
    struct dpdpu_kernel_job *job = (struct dpdpu_kernel_job *)(uintptr_t)task->param;
    int rc;

    if (job == NULL)
        return DPDPU_ERR_INVALID_ARGUMENT;
    job->message[0] = '\0';
    job->out_rows = 0;
    job->passthrough = 0;
    job->selection = NULL;
    job->state = NULL;
    if (job->op != task->op)
        return dpdpu__kfail(job, "a job for op %u run as op %u", job->op, task->op);
    if ((rc = check_columns(job)) != DPDPU_OK)
        return rc;
    switch (task->op) {
    case DPDPU_OP_FILTER:
        rc = kernel_filter(job);
        break;
    case DPDPU_OP_PROJECT:
        rc = kernel_project(job);
        break;
    case DPDPU_OP_AGGREGATE:
        rc = dpdpu__kernel_aggregate(job);
        break;
    case DPDPU_OP_PARTITION:
        rc = dpdpu__kernel_partition(job);
        break;
    default:
        return DPDPU_ERR_UNKNOWN_OP;
    }
    if (rc == DPDPU_OK)
        task->result = (uint64_t)job->out_rows;
    return rc;
}
