/*
 * kernels_internal.h - helpers shared by the Arrow kernels (kernels*.c).
 * Nothing here is part of the public API.
 */
#ifndef DPDPU_KERNELS_INTERNAL_H
#define DPDPU_KERNELS_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "internal.h"

/* Rows evaluated at a time: registers of this many values stay in L1/L2. */
#define KBLOCK 1024

/* Most rows of one job: selections are 32-bit row numbers. */
#define KMAX_ROWS 2147483647LL

/* Record why a job is invalid and return the status to report. */
int dpdpu__kfail(struct dpdpu_kernel_job *job, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void *dpdpu__kalloc(size_t n);
void *dpdpu__kcalloc(size_t n);

static inline int kbit(const uint8_t *bits, int64_t i)
{
    return (bits[i >> 3] >> (i & 7)) & 1;
}

static inline int ktype_is_int(uint32_t t)
{
    return t >= DPDPU_COL_INT8 && t <= DPDPU_COL_UINT64;
}

static inline int ktype_is_float(uint32_t t)
{
    return t == DPDPU_COL_FLOAT32 || t == DPDPU_COL_FLOAT64;
}

static inline int ktype_is_string(uint32_t t)
{
    return t == DPDPU_COL_STRING || t == DPDPU_COL_LARGE_STRING;
}

static inline int ktype_is_numeric(uint32_t t)
{
    return t == DPDPU_COL_BOOL || ktype_is_int(t) || ktype_is_float(t);
}

/* Bytes per value of a fixed-width type (0 for bits, strings and the rest). */
static inline size_t ktype_width(const struct dpdpu_column *c)
{
    static const uint8_t widths[] = {0, 0, 1, 2, 4, 8, 1, 2, 4, 8, 4, 8, 0, 0, 0, 0};
    if (c->type == DPDPU_COL_FIXED)
        return c->width;
    return c->type < sizeof(widths) ? widths[c->type] : 0;
}

/* The column whose values rows resolve to (the dictionary, or the column). */
static inline const struct dpdpu_column *kvalues_of(const struct dpdpu_column *c)
{
    return c->dictionary != NULL ? c->dictionary : c;
}

/* Integer value at element (not row) i of an integer column. */
static inline int64_t kint_at(const struct dpdpu_column *c, int64_t i)
{
    switch (c->type) {
    case DPDPU_COL_INT8:
        return ((const int8_t *)c->values)[i];
    case DPDPU_COL_INT16:
        return ((const int16_t *)c->values)[i];
    case DPDPU_COL_INT32:
        return ((const int32_t *)c->values)[i];
    case DPDPU_COL_INT64:
        return ((const int64_t *)c->values)[i];
    case DPDPU_COL_UINT8:
        return ((const uint8_t *)c->values)[i];
    case DPDPU_COL_UINT16:
        return ((const uint16_t *)c->values)[i];
    case DPDPU_COL_UINT32:
        return ((const uint32_t *)c->values)[i];
    case DPDPU_COL_UINT64:
        return (int64_t)((const uint64_t *)c->values)[i];
    case DPDPU_COL_BOOL:
        return kbit((const uint8_t *)c->values, i);
    default:
        return 0;
    }
}

/* Row r of a plain (non-dictionary) column is valid. */
static inline int kplain_valid(const struct dpdpu_column *c, int64_t r)
{
    if (c->type == DPDPU_COL_NULL)
        return 0;
    return c->validity == NULL || c->null_count == 0 || kbit(c->validity, c->offset + r);
}

/* Element of the value column row r resolves to (-1: null). */
static inline int64_t kresolve(const struct dpdpu_column *c, int64_t r)
{
    if (!kplain_valid(c, r))
        return -1;
    if (c->dictionary == NULL)
        return c->offset + r;
    int64_t d = kint_at(c, c->offset + r);
    if (!kplain_valid(c->dictionary, d))
        return -1;
    return c->dictionary->offset + d;
}

/* Bytes of element i of a string column. */
static inline const uint8_t *kstr_at(const struct dpdpu_column *c, int64_t i, int64_t *len)
{
    int64_t b, e;
    if (c->type == DPDPU_COL_STRING) {
        b = ((const int32_t *)c->offsets)[i];
        e = ((const int32_t *)c->offsets)[i + 1];
    } else {
        b = ((const int64_t *)c->offsets)[i];
        e = ((const int64_t *)c->offsets)[i + 1];
    }
    *len = e - b;
    return (const uint8_t *)c->values + b;
}

/* Bytes of element i of a string or fixed-width column. */
static inline const uint8_t *kbytes_at(const struct dpdpu_column *c, int64_t i, int64_t *len)
{
    if (c->type == DPDPU_COL_FIXED) {
        *len = c->width;
        return (const uint8_t *)c->values + (size_t)i * c->width;
    }
    return kstr_at(c, i, len);
}

/* Three-way bytewise comparison, shorter first on a common prefix. */
static inline int kstr_cmp(const uint8_t *a, int64_t na, const uint8_t *b, int64_t nb)
{
    int64_t n = na < nb ? na : nb;
    int r = n ? memcmp(a, b, (size_t)n) : 0;
    if (r != 0)
        return r;
    return (na > nb) - (na < nb);
}

static inline int kcmp_holds(int op, int c)
{
    switch (op) {
    case DPDPU_KCMP_EQ:
        return c == 0;
    case DPDPU_KCMP_NE:
        return c != 0;
    case DPDPU_KCMP_LT:
        return c < 0;
    case DPDPU_KCMP_LE:
        return c <= 0;
    case DPDPU_KCMP_GT:
        return c > 0;
    default:
        return c >= 0;
    }
}

/* bytes[i] = bit (start + i) of bits, for n bits. */
void dpdpu__unpack_bits(const uint8_t *bits, int64_t start, int64_t n, uint8_t *bytes);
/* Set bits [start, start + n) of out from bytes (0/1); out's other bits untouched
 * except those of partially covered bytes past the end. */
void dpdpu__pack_bits(const uint8_t *bytes, int64_t n, uint8_t *out, int64_t start);
/* Validity of rows [r, r + n) as bytes (dictionary values included); returns
 * 1 if every row is valid (bytes then untouched). */
int dpdpu__valid_bytes(const struct dpdpu_column *c, int64_t r, int64_t n, uint8_t *bytes);
/* The same for the column's own bitmap only (a dictionary's indices). */
int dpdpu__valid_bytes_plain_index(const struct dpdpu_column *c, int64_t r, int64_t n, uint8_t *bytes);

/* --- hashing (kernels_agg.c) ---------------------------------------------- */

/* Deterministic 64-bit hashes: no seed varies between runs or machines. */
static inline uint64_t kmix(uint64_t x)
{
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    return x;
}

#define KHASH_NULL 0x5be0cd19137e2179ULL

uint64_t dpdpu__hash_bytes(const uint8_t *p, int64_t n);
/* out[i] = hash of the keys of row r + i, for n rows. */
void dpdpu__hash_rows(const struct dpdpu_column *cols, const int32_t *keys, uint32_t n_keys, int64_t r, int64_t n,
                      uint64_t *out);

/* --- program evaluation (kernels_eval.c) ------------------------------------ */

struct kreg {
    uint8_t kind;
    uint8_t all_valid; /* validity bytes are meaningless when set */
    union {
        int64_t *i;
        double *f;
        uint8_t *b;
        void *p;
    } v;
    uint8_t *valid;
};

struct kprog;

/* Check the job's program and set up its registers. */
int dpdpu__kprog_new(struct dpdpu_kernel_job *job, struct kprog **out);
/* Evaluate the program over rows [r, r + n) of the columns, n <= KBLOCK.
 * Bool registers hold 0 wherever they are null. */
void dpdpu__kprog_eval(struct kprog *p, int64_t r, int64_t n);
const struct kreg *dpdpu__kprog_reg(const struct kprog *p, int32_t reg);
void dpdpu__kprog_free(struct kprog *p);

/* --- gathering (kernels.c) -------------------------------------------------- */

/* out = rows row0 + sel[0..n) of column c. */
int dpdpu__gather(const struct dpdpu_column *c, int64_t row0, const uint32_t *sel, int64_t n,
                  struct dpdpu_kernel_out *out);
void dpdpu__out_release(struct dpdpu_kernel_out *out, uint32_t n);
/* Check the job's gathered columns and outputs. */
int dpdpu__check_gather(struct dpdpu_kernel_job *job);
/* Gather every gathered column at sel (rows relative to row_begin) into
 * job->out; on failure nothing is left allocated. */
int dpdpu__gather_all(struct dpdpu_kernel_job *job, const uint32_t *sel, int64_t n);

/* --- aggregation (kernels_agg.c) -------------------------------------------- */

int dpdpu__kernel_aggregate(struct dpdpu_kernel_job *job);
int dpdpu__kernel_partition(struct dpdpu_kernel_job *job);

#endif /* DPDPU_KERNELS_INTERNAL_H */
