/* asymviz CPU kernels: one pass over the kept entries where PyTorch's eager ops need many.
 *
 * Built on first use by asymviz/fast/kernels.py (any C99 compiler: cc -O3 -shared -fPIC) and
 * called through ctypes with raw pointers to contiguous tensors whose shapes and dtypes that
 * module has checked; asymviz falls back to PyTorch ops when no compiler is there. Every index
 * list is checked here against the dimension it indexes before anything is read or written:
 * a function returns OK, or BAD_ROW / BAD_COL / BAD_STEP and touches nothing. The tests check
 * every kernel against those ops and the float64 reference of DESIGN.md.
 *
 * Work is split by rows over `threads` OpenMP threads (the caller passes torch's thread count);
 * without OpenMP it runs on the calling thread.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*row_fn)(const void* args, int64_t r0, int64_t r1);

enum { OK = 0, BAD_ROW = 1, BAD_COL = 2, BAD_STEP = 3 };

/* 1 if an index of idx[0..count) is outside [0, bound) (NULL: none to check) */
static int out_of_range(const int64_t* idx, int64_t count, int64_t bound) {
    if (!idx)
        return 0;
    for (int64_t i = 0; i < count; i++)
        if (idx[i] < 0 || idx[i] >= bound)
            return 1;
    return 0;
}

/* fn over rows [0, n), split into `threads` contiguous chunks. Built with -fopenmp, the library
 * links libgomp by its soname, so inside a process where torch already loaded its own copy the
 * loader hands over that one: these loops run on torch's thread pool, not beside it. */
static void parallel_rows(row_fn fn, const void* args, int64_t n, int threads) {
#ifdef _OPENMP
    if (threads > 1 && n > 1) {
        if (threads > n)
            threads = (int)n;
#pragma omp parallel num_threads(threads)
        {
            const int64_t t = omp_get_thread_num(), all = omp_get_num_threads();
            fn(args, n * t / all, n * (t + 1) / all);
        }
        return;
    }
#else
    (void)threads;
#endif
    fn(args, 0, n);
}

/* ------------------------------------------------------------------ the lazy optimizer update */

enum { SGD = 0, MOMENTUM = 1, ADAM = 2 };

typedef struct {
    int kind;
    float* p;            /* (n_out, n_in) parameter (a bias is (n_out, 1)) */
    int64_t n_in;
    const float* grad;   /* p.grad (n_out, n_in), or with grad_block the kept entries (k, kc) */
    int64_t grad_block;
    float* m;            /* Adam's first moment, or SGD's momentum buffer */
    float* v;            /* Adam's second moment */
    const int64_t* rows; /* (k,) kept rows */
    int64_t k;
    const int64_t* cols; /* (kc,) kept columns of every kept row, or NULL: all n_in */
    int64_t kc;
    const uint8_t* mask; /* (k, kc) entries to update inside the kept rows, or NULL: all */
    const int64_t* row_t;  /* Adam: per kept row, its step count after this step; or NULL ... */
    int32_t* entry_step;   /* ... per entry (n_out, n_in), incremented here for updated entries */
    const float* scale;    /* Adam: by step count t, bc1 / (lr sqrt(bc2)) */
    const float* shift;    /* Adam: by step count t, eps bc1 / lr */
    float lr, momentum, b1, b2, c1, c2, wd; /* c1 = 1 - b1, c2 = 1 - b2, rounded once from double */
} update_args;

static void update_rows(const void* a_, int64_t r0, int64_t r1) {
    const update_args* a = (const update_args*)a_;
    const int64_t n_in = a->n_in, kc = a->cols ? a->kc : a->n_in;
    const float c1 = a->c1, c2 = a->c2;
    for (int64_t i = r0; i < r1; i++) {
        const int64_t base = a->rows[i] * n_in;
        float* w = a->p + base;
        float* m = a->m ? a->m + base : NULL;
        float* v = a->v ? a->v + base : NULL;
        const float* g = a->grad_block ? a->grad + i * kc : a->grad + base;
        const uint8_t* mask = a->mask ? a->mask + i * kc : NULL;
        if (a->kind == ADAM && !a->cols && !mask && a->row_t) { /* whole rows, one step count: the common case */
            const float sc = a->scale[a->row_t[i]], sh = a->shift[a->row_t[i]], b1 = a->b1, b2 = a->b2, wd = a->wd;
            for (int64_t j = 0; j < n_in; j++) {
                const float gj = g[j] + wd * w[j];
                const float mj = b1 * m[j] + c1 * gj;
                const float vj = b2 * v[j] + c2 * gj * gj;
                m[j] = mj;
                v[j] = vj;
                w[j] -= mj / (sqrtf(vj) * sc + sh);
            }
            continue;
        }
        for (int64_t jj = 0; jj < kc; jj++) {
            if (mask && !mask[jj])
                continue;
            const int64_t j = a->cols ? a->cols[jj] : jj;
            const float gj = (a->grad_block ? g[jj] : g[j]) + a->wd * w[j];
            if (a->kind == SGD) {
                w[j] -= a->lr * gj;
            } else if (a->kind == MOMENTUM) {
                const float bj = a->momentum * m[j] + gj;
                m[j] = bj;
                w[j] -= a->lr * bj;
            } else {
                const int64_t t = a->row_t ? a->row_t[i] : (int64_t)(++a->entry_step[base + j]);
                const float mj = a->b1 * m[j] + c1 * gj;
                const float vj = a->b2 * v[j] + c2 * gj * gj;
                m[j] = mj;
                v[j] = vj;
                w[j] -= mj / (sqrtf(vj) * a->scale[t] + a->shift[t]);
            }
        }
    }
}

/* n_out: rows of p; n_table: entries of scale and shift (Adam's step counts must index them;
 * per-entry counts are kept below it by the caller, which validates loaded state). */
int asymviz_update(int kind, float* p, int64_t n_out, int64_t n_in, const float* grad, int64_t grad_block, float* m,
                   float* v, const int64_t* rows, int64_t k, const int64_t* cols, int64_t kc, const uint8_t* mask,
                   const int64_t* row_t, int32_t* entry_step, const float* scale, const float* shift, int64_t n_table,
                   float lr, float momentum, float b1, float b2, float c1, float c2, float wd, int threads) {
    if (out_of_range(rows, k, n_out))
        return BAD_ROW;
    if (out_of_range(cols, kc, n_in))
        return BAD_COL;
    if (out_of_range(row_t, k, n_table))
        return BAD_STEP;
    update_args a = {kind, p, n_in, grad, grad_block, m, v, rows, k, cols, kc, mask, row_t, entry_step,
                     scale, shift, lr, momentum, b1, b2, c1, c2, wd};
    parallel_rows(update_rows, &a, k, threads);
    return OK;
}

/* ------------------------------------------------------------------ backward helpers */

typedef struct {
    const float* x;
    int64_t rows, n;
    float* out;
} colsum_args;

static void abs_colsum_lines(const void* a_, int64_t l0, int64_t l1) {
    /* columns in lines of 16 floats (64 bytes), so no two threads write the same cache line of out */
    const colsum_args* a = (const colsum_args*)a_;
    const int64_t c0 = l0 * 16, c1 = l1 * 16 < a->n ? l1 * 16 : a->n;
    float* out = a->out;
    for (int64_t j = c0; j < c1; j++)
        out[j] = 0.0f;
    for (int64_t b = 0; b < a->rows; b++) {
        const float* x = a->x + b * a->n;
        for (int64_t j = c0; j < c1; j++)
            out[j] += fabsf(x[j]);
    }
}

/* out[j] = sum_b |x[b, j]| for x (rows, n): the batch-summed magnitude, one read of x. */
int asymviz_abs_colsum(const float* x, int64_t rows, int64_t n, float* out, int threads) {
    colsum_args a = {x, rows, n, out};
    const int64_t lines = (n + 15) / 16;
    parallel_rows(abs_colsum_lines, &a, lines, lines >= 64 ? threads : 1);
    return OK;
}

typedef struct {
    float* full;
    int64_t n_in;
    const int64_t* rows;
    const int64_t* cols;
    int64_t kc;
    float* block;
    int scatter;
} block_args;

static void block_rows(const void* a_, int64_t r0, int64_t r1) {
    const block_args* a = (const block_args*)a_;
    for (int64_t i = r0; i < r1; i++) {
        float* row = a->full + a->rows[i] * a->n_in;
        float* blk = a->block + i * a->kc;
        if (a->scatter)
            for (int64_t jj = 0; jj < a->kc; jj++) row[a->cols[jj]] = blk[jj];
        else
            for (int64_t jj = 0; jj < a->kc; jj++) blk[jj] = row[a->cols[jj]];
    }
}

/* block (k, kc) = full[rows][:, cols] for full (n_out, n_in), one pass (the W block of `refined`'s da). */
int asymviz_gather_block(const float* full, int64_t n_out, int64_t n_in, const int64_t* rows, int64_t k,
                         const int64_t* cols, int64_t kc, float* block, int threads) {
    if (out_of_range(rows, k, n_out))
        return BAD_ROW;
    if (out_of_range(cols, kc, n_in))
        return BAD_COL;
    block_args a = {(float*)full, n_in, rows, cols, kc, block, 0};
    parallel_rows(block_rows, &a, k, threads);
    return OK;
}

/* full[rows][:, cols] = block (k, kc) (`refined`'s dW into the gradient buffer). */
int asymviz_scatter_block(float* full, int64_t n_out, int64_t n_in, const int64_t* rows, int64_t k,
                          const int64_t* cols, int64_t kc, const float* block, int threads) {
    if (out_of_range(rows, k, n_out))
        return BAD_ROW;
    if (out_of_range(cols, kc, n_in))
        return BAD_COL;
    block_args a = {full, n_in, rows, cols, kc, (float*)block, 1};
    parallel_rows(block_rows, &a, k, threads);
    return OK;
}

typedef struct {
    float* full;
    int64_t n_in;
    const int64_t* rows; /* sorted */
    int64_t k;
    const float* block;  /* (k, n_in) */
    const int64_t* old;  /* sorted */
    int64_t k_old;
} rows_args;

static void write_rows(const void* a_, int64_t r0, int64_t r1) {
    const rows_args* a = (const rows_args*)a_;
    const size_t bytes = (size_t)a->n_in * sizeof(float);
    for (int64_t i = r0; i < r1; i++)
        memcpy(a->full + a->rows[i] * a->n_in, a->block + i * a->n_in, bytes);
}

static void clear_stale_rows(const void* a_, int64_t r0, int64_t r1) {
    /* old rows [r0, r1) that are not among the new rows: both lists are sorted */
    const rows_args* a = (const rows_args*)a_;
    const size_t bytes = (size_t)a->n_in * sizeof(float);
    int64_t j = 0;
    for (int64_t i = r0; i < r1; i++) {
        const int64_t r = a->old[i];
        while (j < a->k && a->rows[j] < r)
            j++;
        if (j < a->k && a->rows[j] == r)
            continue;
        memset(a->full + r * a->n_in, 0, bytes);
    }
}

/* full[rows] = block and full[old rows not in rows] = 0: the gradient buffer's next step (with
 * k = 0: clear the old rows). Sorted
 * row lists skip the rows about to be overwritten; unsorted ones only cost extra zeroing (every
 * clear comes before every copy). */
int asymviz_replace_rows(float* full, int64_t n_out, int64_t n_in, const int64_t* rows, int64_t k,
                         const float* block, const int64_t* old, int64_t k_old, int threads) {
    if (out_of_range(rows, k, n_out) || out_of_range(old, k_old, n_out))
        return BAD_ROW;
    rows_args a = {full, n_in, rows, k, block, old, k_old};
    if (old && k_old > 0)
        parallel_rows(clear_stale_rows, &a, k_old, threads);
    parallel_rows(write_rows, &a, k, threads);
    return OK;
}

typedef struct {
    const float* src;
    float* dst;
    int64_t n;             /* row length of the wide side */
    const int64_t* index;  /* rows (gather_rows) or columns (cols ops) */
    int64_t count;
} index_args;

static void gather_rows_fn(const void* a_, int64_t r0, int64_t r1) {
    const index_args* a = (const index_args*)a_;
    const size_t bytes = (size_t)a->n * sizeof(float);
    for (int64_t i = r0; i < r1; i++)
        memcpy(a->dst + i * a->n, a->src + a->index[i] * a->n, bytes);
}

/* dst (k, n) = src[rows] for src (n_rows, n): W's kept rows. */
int asymviz_gather_rows(const float* src, int64_t n_rows, int64_t n, const int64_t* rows, int64_t k, float* dst,
                        int threads) {
    if (out_of_range(rows, k, n_rows))
        return BAD_ROW;
    index_args a = {src, dst, n, rows, k};
    parallel_rows(gather_rows_fn, &a, k, threads);
    return OK;
}

static void gather_cols_fn(const void* a_, int64_t r0, int64_t r1) {
    const index_args* a = (const index_args*)a_;
    for (int64_t b = r0; b < r1; b++) {
        const float* src = a->src + b * a->n;
        float* dst = a->dst + b * a->count;
        for (int64_t jj = 0; jj < a->count; jj++)
            dst[jj] = src[a->index[jj]];
    }
}

/* dst (B, kc) = src[:, cols] for src (B, n): refined's kept input columns. */
int asymviz_gather_cols(const float* src, int64_t rows, int64_t n, const int64_t* cols, int64_t kc, float* dst,
                        int threads) {
    if (out_of_range(cols, kc, n))
        return BAD_COL;
    index_args a = {src, dst, n, cols, kc};
    parallel_rows(gather_cols_fn, &a, rows, threads);
    return OK;
}

static void expand_cols_fn(const void* a_, int64_t r0, int64_t r1) {
    const index_args* a = (const index_args*)a_;
    for (int64_t b = r0; b < r1; b++) {
        const float* src = a->src + b * a->count;
        float* dst = a->dst + b * a->n;
        memset(dst, 0, (size_t)a->n * sizeof(float));
        for (int64_t jj = 0; jj < a->count; jj++)
            dst[a->index[jj]] = src[jj];
    }
}

/* dst (B, n) = 0 except dst[:, cols] = src (B, kc): refined's da, zero at the dropped inputs. */
int asymviz_expand_cols(const float* src, int64_t rows, int64_t n, const int64_t* cols, int64_t kc, float* dst,
                        int threads) {
    if (out_of_range(cols, kc, n))
        return BAD_COL;
    index_args a = {src, dst, n, cols, kc};
    parallel_rows(expand_cols_fn, &a, rows, threads);
    return OK;
}
