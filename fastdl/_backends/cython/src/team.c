/* Team sizes for the parallel regions and fork safety (see team.h).
 *
 * Why a team is smaller than the configured count:
 * - grain: a region's fork/join costs microseconds, so work below the grain runs
 *   on the calling thread;
 * - units: a thread without a work unit only adds to the join;
 * - load: every region ends at a barrier, and a thread that another process
 *   preempted holds the whole team until the scheduler runs it again (a quantum,
 *   ~4 ms, each time).  When other processes keep the CPUs busy, a region gets
 *   only the CPUs they leave free, usually 1 thread.  Measured on 2 cores with 2
 *   busy processes: even 60 MiB norm_stats and 4096x4096 quantize lose with 2
 *   threads once the load is higher than that (2x slower at a load of 7).
 *
 * Fork: GNU OpenMP keeps a pool of worker threads per calling thread; a forked
 * child inherits the pool's bookkeeping but not its threads, and its first
 * multi-threaded region waits for them forever.  A pthread_atfork prepare
 * handler releases the forking thread's pool (omp_pause_resource_all), so the
 * child starts a fresh pool and the parent re-creates its own on its next
 * region.  Where that is impossible (no pause routine in this OpenMP, or the
 * fork comes from inside a parallel region) the child runs every region on one
 * thread.
 */
#include "team.h"

#include <errno.h>

#if defined(__linux__)
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#define FDL_HAVE_LOADAVG 1
#else
#define FDL_HAVE_LOADAVG 0
#endif

#if defined(_OPENMP) && !defined(_WIN32)
#include <omp.h>
#include <pthread.h>
#define FDL_FORK_HANDLERS 1
#else
#define FDL_FORK_HANDLERS 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LOAD(v) __atomic_load_n(&(v), __ATOMIC_RELAXED)
#define STORE(v, x) __atomic_store_n(&(v), (x), __ATOMIC_RELAXED)
#else
#define LOAD(v) (v)
#define STORE(v, x) ((v) = (x))
#endif

/* 64 KiB: ~5 us of streaming work on one core, a few times an idle fork/join */
static int64_t grain = 64 * 1024;
static int adaptive = 1;

static int child_serial = 0;
static int pause_failed = 0;
/* most worker threads (OpenMP or BLAS) a team of ours has had: the only threads
 * of this process not counted as other load */
static int pool_workers = 0;

static void note_team(int n) {
    if (n - 1 > LOAD(pool_workers)) STORE(pool_workers, n - 1);
}

/* ------------------------------------------------------------ load */

#if FDL_HAVE_LOADAVG
static int loadavg_fd = -1;
static int ncpu = 1;
#define REFRESH_NS 1000000      /* load read at most once a millisecond per thread */

/* per calling thread: the last sample and its verdict */
static __thread int64_t s_wall = 0, s_proc = 0, s_self = 0;
static __thread int s_free = 1;

static int64_t clock_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* runnable tasks on the machine (4th field of /proc/loadavg, "R/T"), -1 unknown */
static int runnable(void) {
    char buf[128];
    int fd = LOAD(loadavg_fd);
    if (fd < 0) return -1;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    const char *p = buf;
    for (int f = 0; f < 3; f++) {
        while (*p && *p != ' ') p++;
        while (*p == ' ') p++;
    }
    if (*p < '0' || *p > '9') return -1;
    int r = 0;
    while (*p >= '0' && *p <= '9' && r < 1000000) r = 10 * r + (*p++ - '0');
    return r;
}

/* CPUs that tasks of other processes leave free.  The runnable count includes
 * this thread and our own running threads (OpenMP workers computing, or
 * spinning after a region for up to milliseconds); those are counted from the
 * CPU time this process used beside this thread since the last sample. */
static int free_cpus_now(int64_t wall) {
    int64_t proc = clock_ns(CLOCK_PROCESS_CPUTIME_ID), self = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    int64_t dw = wall - s_wall, dp = (proc - s_proc) - (self - s_self);
    int fresh = s_wall == 0;
    s_wall = wall; s_proc = proc; s_self = self;
    int r = runnable();
    if (r < 0) return ncpu;
    return fdl_team_free_from(ncpu, r, fresh ? 0 : dp, dw, LOAD(pool_workers));
}
#endif

int fdl_team_free_from(int cpus, int runnable_tasks, int64_t other_cpu_ns, int64_t wall_ns,
                       int workers) {
    int ours = 0;
    /* rounded up: a worker that ran for part of the window may be spinning now */
    if (wall_ns > 0 && other_cpu_ns > 0)
        ours = (int)((other_cpu_ns + wall_ns - wall_ns / 16) / wall_ns);
    if (ours > workers) ours = workers;     /* other busy threads of ours are load */
    int others = runnable_tasks - 1 - ours;
    if (others < 0) others = 0;
    int f = cpus - others;
    return f < 1 ? 1 : f;
}

int fdl_team_free_cpus(void) {
#if FDL_HAVE_LOADAVG
    int64_t t = clock_ns(CLOCK_MONOTONIC);
    if (t - s_wall > REFRESH_NS) s_free = free_cpus_now(t);
    return s_free;
#else
    return FDL_TEAM_MAX;
#endif
}

int fdl_team(int nthreads, int64_t work_bytes, int64_t units) {
    if (nthreads < 2 || units < 2 || work_bytes < LOAD(grain) || LOAD(child_serial))
        return 1;
    int64_t n = nthreads < units ? nthreads : units;
    if (n > FDL_TEAM_MAX) n = FDL_TEAM_MAX;
    if (LOAD(adaptive)) {
        int f = fdl_team_free_cpus();
        if (n > f) n = f;
    }
    note_team((int)n);
    return (int)n;
}

int fdl_team_blas(int nthreads) {
    if (nthreads < 2 || LOAD(child_serial)) return 1;
    int n = nthreads > FDL_TEAM_MAX ? FDL_TEAM_MAX : nthreads;
    if (LOAD(adaptive)) {
        int f = fdl_team_free_cpus();
        if (n > f) n = f;
    }
    note_team(n);
    return n;
}

/* ------------------------------------------------------------ fork */

#if FDL_FORK_HANDLERS
static void before_fork(void) {
#if defined(FASTDL_OMP_PAUSE)
    /* cheap without a pool; non-zero inside a parallel region (the pool stays) */
    pause_failed = omp_pause_resource_all(omp_pause_hard) != 0;
#else
    pause_failed = 1;
#endif
}

static void in_child(void) {
    if (pause_failed) child_serial = 1;
#if FDL_HAVE_LOADAVG
    s_wall = 0;         /* the child's CPU clocks start again */
#endif
}
#endif

int fdl_team_install_fork_handlers(void) {
    static int done = 0;
    if (done) return 0;
    done = 1;
#if FDL_HAVE_LOADAVG
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    ncpu = c > 0 ? (c > FDL_TEAM_MAX ? FDL_TEAM_MAX : (int)c) : 1;
    loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
#endif
#if FDL_FORK_HANDLERS
    return pthread_atfork(before_fork, NULL, in_child);
#else
    return 0;
#endif
}

int64_t fdl_team_set_grain(int64_t bytes) {
    int64_t old = LOAD(grain);
    STORE(grain, bytes < 0 ? 0 : bytes);
    return old;
}

int fdl_team_set_adaptive(int on) {
    int old = LOAD(adaptive);
    STORE(adaptive, on ? 1 : 0);
    return old;
}

int fdl_team_child_serial(void) { return LOAD(child_serial); }

int fdl_team_fork_pause(void) {
#if FDL_FORK_HANDLERS && defined(FASTDL_OMP_PAUSE)
    return 1;
#else
    return 0;
#endif
}
