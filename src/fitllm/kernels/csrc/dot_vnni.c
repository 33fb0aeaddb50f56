/* vnni build of the matrix-product kernels (dot_impl.h) */
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define FL_SIMD 1
#define FL_VNNI 1
#define FL_SUFFIX vnni
#include "dot_impl.h"
