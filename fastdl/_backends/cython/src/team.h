/* How many threads one parallel region gets, and fork safety of the OpenMP
 * runtime.  The state lives in the _cpu extension only; the other kernels reach
 * fdl_team through _cpu's cimported function (C files get it as a pointer). */
#ifndef FASTDL_TEAM_H
#define FASTDL_TEAM_H

#include <stdint.h>

/* Hard cap for a team whatever a direct kernel call passes (the public
 * set_num_threads has a lower, documented bound). */
#define FDL_TEAM_MAX 1024

typedef int (*fdl_team_fn)(int nthreads, int64_t work_bytes, int64_t units);

/* Threads for a region over `units` independent work units touching about
 * `work_bytes` bytes, given the configured count `nthreads`: 1 below the grain
 * or in a forked child that could not get a fresh OpenMP pool; never more than
 * `units`; with load adaptation on, no more than the CPUs other processes leave
 * free. */
int fdl_team(int nthreads, int64_t work_bytes, int64_t units);

/* Threads for one BLAS call (OpenBLAS synchronizes its threads many times per
 * call, so even large calls follow the load). */
int fdl_team_blas(int nthreads);

/* Register the fork handlers (once; returns 0, or an errno value). */
int fdl_team_install_fork_handlers(void);

/* Settings (tests, benchmarks); each returns the previous value. */
int64_t fdl_team_set_grain(int64_t bytes);
int fdl_team_set_adaptive(int on);

/* Facts for diagnostics. */
int fdl_team_free_cpus(void);      /* CPUs other processes leave free, >= 1 */
/* The arithmetic behind it: `cpus` CPUs; during the last window the calling
 * thread ran `cpu_ns` and waited `delay_ns` for a CPU. */
int fdl_team_free_from(int cpus, int64_t cpu_ns, int64_t delay_ns);
int fdl_team_child_serial(void);   /* 1 in a forked child that runs serially */
int fdl_team_fork_pause(void);     /* 1 when forks pause the OpenMP pool */

#endif
