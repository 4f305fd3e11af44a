/* The float32 and float64 bodies of lorak_body.h for one ISA: the includer
 * defines ATTR (the target attribute, empty for scalar) and LK_ISA (the name
 * suffix).  No include guard: lorak.c includes it once per ISA. */
#define T float
#define SI int32_t
#define LK_MAG INT32_MAX
#define LK_SFX f32
#define LK_EXP_CORE dk_exp_core_f32
#define LK_MIN dk_minf
#define LK_LO F32_LO
#define LK_HI F32_HI
#include "lorak_body.h"
#undef T
#undef SI
#undef LK_MAG
#undef LK_SFX
#undef LK_EXP_CORE
#undef LK_MIN
#undef LK_LO
#undef LK_HI

#define T double
#define SI int64_t
#define LK_MAG INT64_MAX
#define LK_SFX f64
#define LK_EXP_CORE dk_exp_core_f64
#define LK_MIN dk_mind
#define LK_LO F64_LO
#define LK_HI F64_HI
#include "lorak_body.h"
#undef T
#undef SI
#undef LK_MAG
#undef LK_SFX
#undef LK_EXP_CORE
#undef LK_MIN
#undef LK_LO
#undef LK_HI
