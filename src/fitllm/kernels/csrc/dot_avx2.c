/* avx2 build of the matrix-product kernels (dot_impl.h) */
#pragma GCC target("avx2,fma,f16c")
#define FL_SIMD 1
#define FL_VNNI 0
#define FL_SUFFIX avx2
#include "dot_impl.h"
