/* Instantiates moments_body.h for float and double with the current ATTR/MOM_ISA. */
#define T float
#define NL 32
#define MOM_SFX f32
#define MOM_REDUCE fdl_mom_reduce32f
#include "moments_body.h"
#undef T
#undef NL
#undef MOM_SFX
#undef MOM_REDUCE
#define T double
#define NL 16
#define MOM_SFX f64
#define MOM_REDUCE fdl_mom_reduce16
#include "moments_body.h"
#undef T
#undef NL
#undef MOM_SFX
#undef MOM_REDUCE
