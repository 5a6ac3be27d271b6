/* shardcache.core._native: the two loops a batch is made of, in one pass each.
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
 * Addresses are Python ints (tensor.data_ptr()); the GIL is released during the loops.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
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

static PyMethodDef methods[] = {
    {"copy", native_copy, METH_VARARGS, "copy(dst, src, nbytes): memcpy, streaming when large."},
    {"widen", native_widen, METH_VARARGS,
     "widen(dst, src, count, stored_bytes, divide, factor): uint8/16 to float32, exactly."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shardcache.core._native",
    "Batch copy and widening loops (see _native.c).", -1, methods,
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
