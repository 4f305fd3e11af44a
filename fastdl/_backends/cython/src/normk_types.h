/* Instantiates normk_body.h for float and double with the current ATTR/NK_ISA. */
#define T float
#define NL 16
#define NK_SFX f32
#define NK_STREAM NK_STREAM_F32
#define NK_LANES nk_lanes_f32
#include "normk_body.h"
#undef T
#undef NL
#undef NK_SFX
#undef NK_STREAM
#undef NK_LANES
#define T double
#define NL 8
#define NK_SFX f64
#define NK_STREAM NK_STREAM_F64
#define NK_LANES nk_lanes_f64
#include "normk_body.h"
#undef T
#undef NL
#undef NK_SFX
#undef NK_STREAM
#undef NK_LANES
