/* Instantiates decodek_body.h for float and double with the current ATTR and
 * DK_ISA (the includer defines both and DK(name)). */
#define T float
#define KT uint32_t
#define ST int32_t
#define DK_SFX f32
#define DK_EXP_CORE dk_exp_core_f32
#define DK_EXP dk_exp_f32
#define DK_LANES 8
#define DK_PART 4
#include "decodek_body.h"
#undef T
#undef KT
#undef ST
#undef DK_SFX
#undef DK_EXP_CORE
#undef DK_EXP
#undef DK_LANES
#undef DK_PART

#define T double
#define KT uint64_t
#define ST int64_t
#define DK_SFX f64
#define DK_EXP_CORE dk_exp_core_f64
#define DK_EXP dk_exp_f64
#define DK_LANES 16
#define DK_PART 1
#include "decodek_body.h"
#undef T
#undef KT
#undef ST
#undef DK_SFX
#undef DK_EXP_CORE
#undef DK_EXP
#undef DK_LANES
#undef DK_PART
