/* Cost of membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) with one registered
 * process running: what a sleeper would pay per park if the writer's
 * seq_cst fence were replaced by an asymmetric barrier (Linux >= 4.16).
 *
 *   gcc -O2 membarrier_cost.c -o /tmp/membarrier_cost && /tmp/membarrier_cost */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <sys/syscall.h>
#include <linux/membarrier.h>
#include <time.h>
static long mb(int cmd) { return syscall(__NR_membarrier, cmd, 0, 0); }
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec*1e9+t.tv_nsec;}
int main(void){
    pid_t c = fork();
    if (c == 0) { mb(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED); volatile unsigned long x=0; for(;;) x++; }
    usleep(200000);
    for (int k=0;k<3;k++){
        double t0=now(); int n=20000;
        for(int i=0;i<n;i++) if (mb(MEMBARRIER_CMD_GLOBAL_EXPEDITED)) { perror("mb"); return 1; }
        printf("membarrier(GLOBAL_EXPEDITED), registered writer spinning: %.2f us/call\n",(now()-t0)/n/1e3);
    }
    kill(c, SIGKILL);
    return 0;
}
