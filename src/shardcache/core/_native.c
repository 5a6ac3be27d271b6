/* shardcache.core._native: the two loops a batch is made of, in one pass each, and the
 * build's check that a float tensor can be stored narrow.
 *
 * copy(dst, src, nbytes)
 *     memcpy; from 64 KiB on, with non-temporal (streaming) stores where the CPU has AVX2.
 *     glibc's memmove switches to them only above a threshold derived from the cache size
 *     (192 MiB on this project's VMs), so it reads every destination line before writing
 *     it: for 1 MiB samples into a reused batch buffer, streaming stores were 1.2-1.5x.
 *
 * widen(dst, src, count, stored_bytes, divide, factor)
 *     dst[i] = (float) src[i] / factor  (divide=1)   or   (float) src[i] * factor  (0),
 *     src uint8 (stored_bytes=1) or uint16 (2), dst float32. IEEE single-precision
 *     arithmetic, correctly rounded in the vector and the scalar paths alike (no fast-math,
 *     no contraction): bit for bit what numpy's float32 divide/multiply gives, which
 *     shardcache.core.narrow checks for every stored value before using it.
 *
 * narrow(dst, src, count, stored_bytes, scale, div_factor, mul_factor) -> (div, mul)
 *     The build's exactness check in one pass over float32 src: k = rint(src[i] * scale) in
 *     float32 as numpy computes it, refused outside [0, 255] (or 65535; NaN fails), stored
 *     in dst as uint8 (uint16); div (mul): whether widen(k, divide=1 (0), factor) gives
 *     every src[i] back bit for bit. Stops at the first value neither gives back (dst is
 *     then partly written and unusable).
 *
 * Addresses are Python ints (tensor.data_ptr()); the GIL is released during the loops.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

#define STREAM_FROM (64 * 1024)

static int have_avx2 = 0;

#ifdef HAVE_X86
__attribute__((target("avx2"))) static void copy_stream(char *dst, const char *src, size_t n) {
    while (n && ((uintptr_t)dst & 31)) {
        *dst++ = *src++;
        n--;
    }
    for (; n >= 128; n -= 128, dst += 128, src += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)src);
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + 96));
        _mm256_stream_si256((__m256i *)dst, a);
        _mm256_stream_si256((__m256i *)(dst + 32), b);
        _mm256_stream_si256((__m256i *)(dst + 64), c);
        _mm256_stream_si256((__m256i *)(dst + 96), d);
    }
    _mm_sfence();
    memcpy(dst, src, n);
}

__attribute__((target("avx2"))) static void widen_u8(
    float *dst, const uint8_t *src, size_t n, int divide, float factor) {
    const __m256 f = _mm256_set1_ps(factor);
    const int stream = n * sizeof(float) >= STREAM_FROM;
    size_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 31); i++)
        dst[i] = divide ? (float)src[i] / factor : (float)src[i] * factor;
    for (; i + 8 <= n; i += 8) {
        __m128i bytes = _mm_loadl_epi64((const __m128i *)(src + i));
        __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
        __m256 y = divide ? _mm256_div_ps(x, f) : _mm256_mul_ps(x, f);
        if (stream)
            _mm256_stream_ps(dst + i, y);
        else
            _mm256_store_ps(dst + i, y);
    }
    if (stream) _mm_sfence();
    for (; i < n; i++) dst[i] = divide ? (float)src[i] / factor : (float)src[i] * factor;
}

__attribute__((target("avx2"))) static void widen_u16(
    float *dst, const uint16_t *src, size_t n, int divide, float factor) {
    const __m256 f = _mm256_set1_ps(factor);
    const int stream = n * sizeof(float) >= STREAM_FROM;
    size_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 31); i++)
        dst[i] = divide ? (float)src[i] / factor : (float)src[i] * factor;
    for (; i + 8 <= n; i += 8) {
        __m128i words = _mm_loadu_si128((const __m128i *)(src + i));
        __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(words));
        __m256 y = divide ? _mm256_div_ps(x, f) : _mm256_mul_ps(x, f);
        if (stream)
            _mm256_stream_ps(dst + i, y);
        else
            _mm256_store_ps(dst + i, y);
    }
    if (stream) _mm_sfence();
    for (; i < n; i++) dst[i] = divide ? (float)src[i] / factor : (float)src[i] * factor;
}
#endif

static void widen_scalar(float *dst, const void *src, size_t n, int stored, int divide, float f) {
    if (stored == 1) {
        const uint8_t *s = (const uint8_t *)src;
        for (size_t i = 0; i < n; i++) dst[i] = divide ? (float)s[i] / f : (float)s[i] * f;
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (size_t i = 0; i < n; i++) dst[i] = divide ? (float)s[i] / f : (float)s[i] * f;
    }
}

static PyObject *native_copy(PyObject *self, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "KKn:copy", &dst, &src, &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "copy: negative size");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_X86
    if (have_avx2 && n >= STREAM_FROM)
        copy_stream((char *)(uintptr_t)dst, (const char *)(uintptr_t)src, (size_t)n);
    else
#endif
        memcpy((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, (size_t)n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *native_widen(PyObject *self, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t n;
    int stored, divide;
    float factor;
    if (!PyArg_ParseTuple(args, "KKnipf:widen", &dst, &src, &n, &stored, &divide, &factor))
        return NULL;
    if (n < 0 || (stored != 1 && stored != 2)) {
        PyErr_SetString(PyExc_ValueError, "widen: negative count, or stored bytes not 1 or 2");
        return NULL;
    }
    float *out = (float *)(uintptr_t)dst;
    const void *in = (const void *)(uintptr_t)src;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_X86
    if (have_avx2 && stored == 1)
        widen_u8(out, (const uint8_t *)in, (size_t)n, divide, factor);
    else if (have_avx2)
        widen_u16(out, (const uint16_t *)in, (size_t)n, divide, factor);
    else
#endif
        widen_scalar(out, in, (size_t)n, stored, divide, factor);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* narrow: one pass, stopping at the first value that neither widening gives back. ok[0], ok[1]:
 * whether every value so far is (float)k / div_factor, resp. (float)k * mul_factor, bit for
 * bit: the arithmetic of widen, so a value passes only if widen serves its very bits. k goes
 * back through an integer first: -0.0 rounds to k = 0, which serves +0.0, and fails. */
static int narrow_one(float x, float scale, float limit, float div_factor, float mul_factor,
                      int *ok, uint32_t *k) {
    float r = rintf(x * scale);
    if (!(r >= 0.0f && r <= limit)) { /* NaN too */
        ok[0] = ok[1] = 0;
        return 0;
    }
    *k = (uint32_t)r;
    float kf = (float)*k, d = kf / div_factor, m = kf * mul_factor;
    uint32_t xb, db, mb;
    memcpy(&xb, &x, 4);
    memcpy(&db, &d, 4);
    memcpy(&mb, &m, 4);
    ok[0] &= db == xb;
    ok[1] &= mb == xb;
    return ok[0] | ok[1];
}

static void narrow_scalar(void *out, const float *in, size_t n, int stored, float scale,
                          float div_factor, float mul_factor, int *ok) {
    const float limit = stored == 1 ? 255.0f : 65535.0f;
    for (size_t i = 0; i < n; i++) {
        uint32_t k;
        if (!narrow_one(in[i], scale, limit, div_factor, mul_factor, ok, &k)) return;
        if (stored == 1)
            ((uint8_t *)out)[i] = (uint8_t)k;
        else
            ((uint16_t *)out)[i] = (uint16_t)k;
    }
}

#ifdef HAVE_X86
__attribute__((target("avx2"))) static void narrow_avx2(void *out, const float *in, size_t n,
                                                        int stored, float scale,
                                                        float div_factor, float mul_factor,
                                                        int *ok) {
    const float limit = stored == 1 ? 255.0f : 65535.0f;
    const __m256 vscale = _mm256_set1_ps(scale), vlimit = _mm256_set1_ps(limit);
    const __m256 vzero = _mm256_setzero_ps();
    const __m256 vdiv = _mm256_set1_ps(div_factor), vmul = _mm256_set1_ps(mul_factor);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(in + i);
        __m256 r = _mm256_round_ps(_mm256_mul_ps(x, vscale),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 inside = _mm256_and_ps(_mm256_cmp_ps(r, vzero, _CMP_GE_OQ),
                                      _mm256_cmp_ps(r, vlimit, _CMP_LE_OQ));
        if (_mm256_movemask_ps(inside) != 0xFF) {
            ok[0] = ok[1] = 0;
            return;
        }
        __m256i k = _mm256_cvtps_epi32(r);
        __m256 kf = _mm256_cvtepi32_ps(k);
        __m256i xb = _mm256_castps_si256(x);
        __m256i d = _mm256_cmpeq_epi32(_mm256_castps_si256(_mm256_div_ps(kf, vdiv)), xb);
        __m256i m = _mm256_cmpeq_epi32(_mm256_castps_si256(_mm256_mul_ps(kf, vmul)), xb);
        ok[0] &= _mm256_movemask_ps(_mm256_castsi256_ps(d)) == 0xFF;
        ok[1] &= _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xFF;
        if (!(ok[0] | ok[1])) return;
        __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
        if (stored == 1)
            _mm_storel_epi64((__m128i *)((uint8_t *)out + i), _mm_packus_epi16(words, words));
        else
            _mm_storeu_si128((__m128i *)((uint16_t *)out + i), words);
    }
    char *rest = (char *)out + i * (size_t)stored;
    narrow_scalar(rest, in + i, n - i, stored, scale, div_factor, mul_factor, ok);
}
#endif

static PyObject *native_narrow(PyObject *self, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t n;
    int stored;
    float scale, div_factor, mul_factor;
    if (!PyArg_ParseTuple(args, "KKnifff:narrow", &dst, &src, &n, &stored, &scale, &div_factor,
                          &mul_factor))
        return NULL;
    if (n < 0 || (stored != 1 && stored != 2)) {
        PyErr_SetString(PyExc_ValueError, "narrow: negative count, or stored bytes not 1 or 2");
        return NULL;
    }
    void *out = (void *)(uintptr_t)dst;
    const float *in = (const float *)(uintptr_t)src;
    int ok[2] = {1, 1};
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_X86
    if (have_avx2)
        narrow_avx2(out, in, (size_t)n, stored, scale, div_factor, mul_factor, ok);
    else
#endif
        narrow_scalar(out, in, (size_t)n, stored, scale, div_factor, mul_factor, ok);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(OO)", ok[0] ? Py_True : Py_False, ok[1] ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"copy", native_copy, METH_VARARGS, "copy(dst, src, nbytes): memcpy, streaming when large."},
    {"widen", native_widen, METH_VARARGS,
     "widen(dst, src, count, stored_bytes, divide, factor): uint8/16 to float32, exactly."},
    {"narrow", native_narrow, METH_VARARGS,
     "narrow(dst, src, count, stored_bytes, scale, div_factor, mul_factor): the exactness check."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shardcache.core._native",
    "Batch copy and widening loops, the narrowing check (see _native.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2") != 0;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "AVX2", have_avx2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
