/* Plain memory streams used as the memory-traffic limit in benchmarks. */
#ifndef FASTDL_TRAFFIC_H
#define FASTDL_TRAFFIC_H
#include <stdint.h>
uint64_t fdl_read_bytes(const unsigned char *p, int64_t nbytes, int level);
#endif
