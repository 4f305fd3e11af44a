/* The float32 and float64 bodies of rnnk_body.h for one ISA: the includer defines
 * ATTR (the target attribute, empty for scalar) and RK_ISA (the name suffix).
 * No include guard: rnnk.c includes it once per ISA. */
#define T float
#define RK_SFX f32
#define RK_TANH rk_tanh_f32
#include "rnnk_body.h"
#undef T
#undef RK_SFX
#undef RK_TANH

#define T double
#define RK_SFX f64
#define RK_TANH rk_tanh_f64
#include "rnnk_body.h"
#undef T
#undef RK_SFX
#undef RK_TANH
