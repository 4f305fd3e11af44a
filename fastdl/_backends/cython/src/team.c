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
 *   The load is judged two ways (see free_cpus_now): the calling thread's own
 *   wait for a CPU (/proc/thread-self/schedstat; ~0 idle, ~1/2 with one busy
 *   process per CPU), and the machine's runnable tasks (/proc/loadavg) less
 *   every worker thread of ours, which may be spinning after its region (a
 *   discount by measured CPU time missed them and halved idle speed-ups).
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
#define FDL_HAVE_SCHEDSTAT 1
#else
#define FDL_HAVE_SCHEDSTAT 0
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
/* worker threads (OpenMP or BLAS) of our teams that may still be spinning: OpenBLAS's
 * workers spin for about 0.1 s after their last call however small the calls since,
 * so the largest team of the last SPIN_NS counts, not just the last one (counting
 * only the last let one 1-thread verdict keep the next calls at 1 thread while a
 * worker of an earlier 2-thread call spun on: back-to-back BLAS calls on an idle
 * machine got 1 thread 61% of the time) */
#define SPIN_NS 250000000
static int pool_workers = 0;
static int64_t pool_workers_ns = 0;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void note_team(int n) {
    int64_t t = now_ns();
    if (n - 1 >= LOAD(pool_workers) || t - LOAD(pool_workers_ns) > SPIN_NS) {
        STORE(pool_workers, n - 1);
        STORE(pool_workers_ns, t);
    }
}
/* ------------------------------------------------------------ load */

#if FDL_HAVE_SCHEDSTAT
static int ncpu = 1;
#define REFRESH_NS 1000000      /* a verdict is kept for a millisecond per thread */
#define MIN_INFO_NS 200000      /* runnable time a verdict needs */

/* per calling thread: the statistics the next verdict is measured from, and the verdict */
static __thread int64_t s_wall = 0, s_base_wall = 0, s_cpu = 0, s_delay = 0;  /* ns */
static __thread int s_free = 0, s_wait_free = 0;

static int64_t clock_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* a small /proc file into buf (NUL-terminated); 0 on success.  Opened and closed
 * each time (once a millisecond at most): a descriptor kept per thread would leak
 * with every thread that exits. */
static int read_proc(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    return 0;
}

/* runnable tasks on the machine (4th field of /proc/loadavg, "R/T"), -1 unknown */
static int runnable(void) {
    char buf[128];
    if (read_proc("/proc/loadavg", buf, sizeof buf) != 0) return -1;
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

/* this thread's CPU time and run-queue wait (ns); 0 on success */
static int schedstat(int64_t *cpu, int64_t *delay) {
    char buf[128];
    if (read_proc("/proc/thread-self/schedstat", buf, sizeof buf) != 0) return -1;
    int64_t v[2] = {0, 0};
    const char *p = buf;
    for (int f = 0; f < 2; f++) {
        while (*p == ' ') p++;
        if (*p < '0' || *p > '9') return -1;
        while (*p >= '0' && *p <= '9') v[f] = 10 * v[f] + (*p++ - '0');
    }
    *cpu = v[0];
    *delay = v[1];
    return 0;
}

/* from this thread's own wait for a CPU since the last verdict */
static int free_by_wait(int64_t wall) {
    int64_t cpu, delay;
    if (schedstat(&cpu, &delay) != 0) return ncpu;       /* no statistics: no adaptation */
    if (s_base_wall == 0) {
        s_base_wall = wall; s_cpu = cpu; s_delay = delay;
        return ncpu;
    }
    int64_t dc = cpu - s_cpu, dd = delay - s_delay;
    if (dc + dd < MIN_INFO_NS) return s_wait_free ? s_wait_free : ncpu;  /* too little to judge */
    s_base_wall = wall; s_cpu = cpu; s_delay = delay;
    s_wait_free = fdl_team_free_from(ncpu, dc, dd);
    return s_wait_free;
}

/* The smaller of two views: this thread's wait (it misses other processes that
 * only our workers meet, as when this thread has a CPU to itself) and the
 * machine's runnable tasks less this thread and every worker of ours that may be
 * spinning (it misses nothing on a machine of our own, and counts other
 * containers' tasks on a shared host: FASTDL_ADAPTIVE_THREADS=0 turns both off). */
static int free_cpus_now(int64_t wall) {
    int f = free_by_wait(wall);
    int r = runnable();
    if (r >= 0) {
        int others = r - 1 - LOAD(pool_workers);
        int g = ncpu - (others < 0 ? 0 : others);
        if (g < f) f = g;
    }
    return f < 1 ? 1 : f;
}
#endif

int fdl_team_free_from(int cpus, int64_t cpu_ns, int64_t delay_ns) {
    /* w = the share of runnable time spent waiting.  k busy processes on n CPUs
     * make us share a CPU with probability ~k/n, half the time each: w ~ k/(2n),
     * so the free CPUs are n(1 - 2w) */
    if (cpus < 1) return 1;
    if (cpu_ns < 0) cpu_ns = 0;
    if (delay_ns <= 0 || cpu_ns + delay_ns <= 0) return cpus;
    double w = (double)delay_ns / (double)(cpu_ns + delay_ns);
    double f = cpus * (1.0 - 2.0 * w) + 0.5;
    return f < 1.0 ? 1 : (f > cpus ? cpus : (int)f);
}

int fdl_team_free_cpus(void) {
#if FDL_HAVE_SCHEDSTAT
    int64_t t = clock_ns(CLOCK_MONOTONIC);
    if (s_free == 0 || t - s_wall > REFRESH_NS) {
        s_wall = t;
        s_free = free_cpus_now(t);
    }
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
#if FDL_HAVE_SCHEDSTAT
    s_wall = 0;         /* the child is a new task: its statistics start again */
    s_base_wall = 0;
    s_free = s_wait_free = 0;
#endif
}
#endif

int fdl_team_install_fork_handlers(void) {
    static int done = 0;
    if (done) return 0;
    done = 1;
#if FDL_HAVE_SCHEDSTAT
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    ncpu = c > 0 ? (c > FDL_TEAM_MAX ? FDL_TEAM_MAX : (int)c) : 1;
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
