/* Floor of a cross-process futex wake on this machine, in plain C: a
 * producer stamps CLOCK_MONOTONIC every 1 ms and FUTEX_WAKEs; the reader
 * FUTEX_WAITs (or busy-spins with an argument).  Compare with
 * `python -m benchmarks.wake`.
 *
 *   gcc -O2 futex_floor.c -o /tmp/futex_floor && /tmp/futex_floor && /tmp/futex_floor spin */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/futex.h>
static int64_t now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec*1000000000LL+t.tv_nsec;}
typedef struct { _Atomic uint32_t seq; _Atomic int64_t stamp; } shm_t;
static int cmp(const void*a,const void*b){int64_t x=*(int64_t*)a,y=*(int64_t*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
    int N=3000, spin=argc>1; shm_t *s=mmap(0,4096,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0);
    int pfd[2]; pipe(pfd);
    pid_t c=fork();
    if(c==0){ /* producer */
        struct timespec ms={0,1000000};
        for(int i=1;i<=N+50;i++){ nanosleep(&ms,0); atomic_store(&s->stamp,now()); atomic_store(&s->seq,i);
            syscall(SYS_futex,&s->seq,FUTEX_WAKE,1,0,0,0); }
        _exit(0);}
    int64_t *lat=malloc(sizeof(int64_t)*N); uint32_t seen=0; int k=0;
    while(seen<(uint32_t)(N+50) && k<N+50){
        uint32_t v=atomic_load(&s->seq);
        if(v==seen){ if(!spin) syscall(SYS_futex,&s->seq,FUTEX_WAIT,seen,0,0,0); continue; }
        int64_t l=now()-atomic_load(&s->stamp); seen=v; if(k>=50) lat[k-50]=l; k++;
    }
    waitpid(c,0,0); N=k>50?k-50:1; qsort(lat,N,8,cmp);
    printf("C %s: p50 %.1f us  p99 %.1f us  max %.1f us\n", spin?"busy-spinning reader":"futex-parked reader", lat[N/2]/1e3, lat[N*99/100]/1e3, lat[N-1]/1e3);
    return 0;
}
