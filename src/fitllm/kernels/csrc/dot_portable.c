/* portable build of the matrix-product kernels (dot_impl.h) */

#define FL_SIMD 0
#define FL_VNNI 0
#define FL_SUFFIX portable
#include "dot_impl.h"
