/* deadline.c - the core's clock: monotonic time, timeouts turned into
 * deadlines, condition waits bounded by a deadline (see internal.h). */
#include <errno.h>
#include <time.h>

#include "internal.h"

uint64_t dpdpu__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int dpdpu__cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    int rc;

    if (pthread_condattr_init(&attr) != 0)
        return -1;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

uint64_t dpdpu__deadline_ns(int64_t timeout_us)
{
    uint64_t now;

    if (timeout_us < 0)
        return DPDPU__FOREVER;
    if (timeout_us == 0)
        return DPDPU__NO_WAIT;
    now = dpdpu__now_ns();
    if ((uint64_t)timeout_us > (DPDPU__FOREVER - 1 - now) / 1000ull)
        return DPDPU__FOREVER;
    return now + (uint64_t)timeout_us * 1000ull;
}

int dpdpu__cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, uint64_t deadline_ns)
{
    struct timespec ts;

    if (deadline_ns == DPDPU__FOREVER)
        return pthread_cond_wait(cond, lock);
    if (deadline_ns == DPDPU__NO_WAIT)
        return ETIMEDOUT;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
    return pthread_cond_timedwait(cond, lock, &ts);
}
