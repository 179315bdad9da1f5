// cdiphase CUDA emulator runtime: a pool of OS worker threads takes the blocks of a grid one
// at a time; each block runs its CUDA threads as fibers (hand-written x86_64 context switch,
// ucontext elsewhere) on fixed 64 KiB stacks with a guard page. A fiber runs until it
// reaches a barrier (block or warp) or returns; the scheduler then resumes the others in the
// launch's schedule order and releases a barrier once every live thread of its scope has
// arrived. A barrier that can never be released (threads of one warp waiting at different
// barriers) is reported as CDEMU_DEADLOCK instead of hanging.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_emu.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

#if defined(__x86_64__)
// void cdemu_switch(void** save_sp, void* next_sp): saves the callee-saved registers on the
// current stack, stores its pointer in *save_sp, and resumes the stack next_sp.
asm(R"(
.text
.globl cdemu_switch
.hidden cdemu_switch
.type cdemu_switch,@function
cdemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size cdemu_switch,.-cdemu_switch
.globl cdemu_trampoline
.hidden cdemu_trampoline
.type cdemu_trampoline,@function
cdemu_trampoline:
    movq %r12, %rdi
    andq $-16, %rsp
    callq *%r13
    ud2
.size cdemu_trampoline,.-cdemu_trampoline
)");
extern "C" void cdemu_switch(void** save_sp, void* next_sp);
extern "C" void cdemu_trampoline();
#endif

namespace cdemu {
namespace {

constexpr size_t kStack = 64 * 1024;
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxDynShared = 48 * 1024;

enum State : uint8_t { READY, WARP_WAIT, BLOCK_WAIT, DONE };

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    State state = READY;
};

// Everything one worker thread needs to run blocks.
struct Worker {
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    size_t page = 4096;
#if defined(__x86_64__)
    void* sched_sp = nullptr;
#else
    ucontext_t sched_ctx;
#endif
    Fiber* cur = nullptr;
    unsigned cur_index = 0;
    unsigned nthreads = 0;
    BodyFn body = nullptr;
    void* ctx = nullptr;
    std::vector<uint64_t> slots;       // 32 per warp
    std::vector<unsigned char> dyn;    // dynamic shared memory
    std::vector<unsigned> order;
    uint64_t rng = 0;

    ~Worker() {
        for (char* s : stacks) munmap(s, kStack + page);
    }
    void ensure(unsigned n) {
        page = (size_t)sysconf(_SC_PAGESIZE);
        while (stacks.size() < n) {
            void* m = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) {
                std::fprintf(stderr, "cdemu: cannot map a fiber stack\n");
                std::abort();
            }
            mprotect(m, page, PROT_NONE);  // guard page: a stack overflow faults
            stacks.push_back(static_cast<char*>(m));
        }
        if (fibers.size() < n) fibers.resize(n);
        if (slots.size() < (size_t)((n + 31) / 32) * 32) slots.resize((size_t)((n + 31) / 32) * 32);
    }
};

thread_local Worker* tl_worker = nullptr;
// Owns the calling thread's worker (its fiber stacks are unmapped when the thread exits).
thread_local std::unique_ptr<Worker> tl_worker_owner;

Worker& worker() {
    if (!tl_worker) {
        tl_worker_owner = std::make_unique<Worker>();
        tl_worker = tl_worker_owner.get();
    }
    return *tl_worker;
}

void fiber_main(void* arg) {
    Worker* w = static_cast<Worker*>(arg);
    w->body(w->ctx);
    w->cur->state = DONE;
#if defined(__x86_64__)
    void* dummy;
    cdemu_switch(&dummy, w->sched_sp);
#else
    swapcontext(&w->cur->ctx, &w->sched_ctx);
#endif
    std::abort();  // a finished fiber is never resumed
}

#if !defined(__x86_64__)
void fiber_main_uc(unsigned lo, unsigned hi) {
    fiber_main(reinterpret_cast<void*>(((uintptr_t)hi << 32) | lo));
}
#endif

void yield_to_scheduler(State s) {
    Worker& w = *tl_worker;
    w.cur->state = s;
#if defined(__x86_64__)
    cdemu_switch(&w.cur->sp, w.sched_sp);
#else
    swapcontext(&w.cur->ctx, &w.sched_ctx);
#endif
}

uint64_t next_rand(uint64_t& s) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

void make_order(Worker& w, unsigned order) {
    const unsigned n = w.nthreads;
    w.order.resize(n);
    for (unsigned i = 0; i < n; ++i) w.order[i] = order == 1 ? n - 1 - i : i;
    if (order == 2) {
        for (unsigned i = n; i > 1; --i) std::swap(w.order[i - 1], w.order[next_rand(w.rng) % i]);
    }
}

// Runs one block to completion. Returns a CDEMU_* status.
int run_block(Worker& w, const cdemu_launch_cfg* cfg, uint64_t block_linear) {
    const unsigned n = w.nthreads;
    const unsigned bx = cfg->block[0], by = cfg->block[1];
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.tid = uint3{i % bx, (i / bx) % by, i / (bx * by)};
        f.state = READY;
        char* top = w.stacks[i] + w.page + kStack;
#if defined(__x86_64__)
        uintptr_t t = reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15);
        void** sp = reinterpret_cast<void**>(t) - 8;
        // popped by cdemu_switch: r15 r14 r13 r12 rbx rbp, then ret -> trampoline
        sp[0] = nullptr;
        sp[1] = nullptr;
        sp[2] = reinterpret_cast<void*>(&fiber_main);
        sp[3] = &w;
        sp[4] = nullptr;
        sp[5] = nullptr;
        sp[6] = reinterpret_cast<void*>(&cdemu_trampoline);
        sp[7] = nullptr;
        f.sp = sp;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = w.stacks[i] + w.page;
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = nullptr;
        uintptr_t p = reinterpret_cast<uintptr_t>(&w);
        makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main_uc), 2, (unsigned)(p & 0xffffffffu),
                    (unsigned)(p >> 32));
#endif
    }
    w.rng = cfg->seed * 0x9E3779B97F4A7C15ull + block_linear * 0xD1B54A32D192ED03ull + 1;
    if (w.rng == 0) w.rng = 1;
    const unsigned nwarps = (n + 31) / 32;
    unsigned done = 0;
    while (done < n) {
        make_order(w, cfg->order);
        bool ran = false;
        for (unsigned k = 0; k < n; ++k) {
            const unsigned i = w.order[k];
            Fiber& f = w.fibers[i];
            if (f.state != READY) continue;
            ran = true;
            w.cur = &f;
            w.cur_index = i;
#if defined(__x86_64__)
            cdemu_switch(&w.sched_sp, f.sp);
#else
            swapcontext(&w.sched_ctx, &f.ctx);
#endif
            if (f.state == DONE) ++done;
        }
        if (done == n) break;
        // Release barriers whose scope has fully arrived.
        bool released = false;
        unsigned live = 0, at_block = 0;
        for (unsigned i = 0; i < n; ++i) {
            if (w.fibers[i].state != DONE) ++live;
            if (w.fibers[i].state == BLOCK_WAIT) ++at_block;
        }
        if (live > 0 && at_block == live) {
            for (unsigned i = 0; i < n; ++i)
                if (w.fibers[i].state == BLOCK_WAIT) w.fibers[i].state = READY;
            released = true;
        } else {
            for (unsigned wp = 0; wp < nwarps; ++wp) {
                unsigned wl = 0, ww = 0;
                const unsigned e = std::min(n, (wp + 1) * 32);
                for (unsigned i = wp * 32; i < e; ++i) {
                    if (w.fibers[i].state != DONE) ++wl;
                    if (w.fibers[i].state == WARP_WAIT) ++ww;
                }
                if (wl > 0 && ww == wl) {
                    for (unsigned i = wp * 32; i < e; ++i) w.fibers[i].state = READY;
                    released = true;
                }
            }
        }
        if (!ran && !released) return CDEMU_DEADLOCK;
        (void)ran;
    }
    return CDEMU_OK;
}

struct Job {
    const cdemu_launch_cfg* cfg = nullptr;
    BodyFn body = nullptr;
    void* ctx = nullptr;
    uint64_t nblocks = 0;
    std::atomic<uint64_t> next{0};
    std::atomic<int> status{CDEMU_OK};
};

void run_blocks(Job& job) {
    Worker& w = worker();
    const cdemu_launch_cfg* cfg = job.cfg;
    const unsigned n = cfg->block[0] * cfg->block[1] * cfg->block[2];
    w.ensure(n);
    w.nthreads = n;
    w.body = job.body;
    w.ctx = job.ctx;
    if (w.dyn.size() < cfg->shmem_bytes + 16) w.dyn.resize(cfg->shmem_bytes + 16);
    gridDim = dim3(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    blockDim = dim3(cfg->block[0], cfg->block[1], cfg->block[2]);
    for (;;) {
        const uint64_t b = job.next.fetch_add(1);
        if (b >= job.nblocks || job.status.load() != CDEMU_OK) break;
        blockIdx = uint3{(unsigned)(b % cfg->grid[0]), (unsigned)((b / cfg->grid[0]) % cfg->grid[1]),
                         (unsigned)(b / ((uint64_t)cfg->grid[0] * cfg->grid[1]))};
        // poison dynamic shared memory: a kernel that reads it before writing sees NaN
        std::memset(w.dyn.data(), 0xff, cfg->shmem_bytes + 16);
        const int st = run_block(w, cfg, b);
        if (st != CDEMU_OK) {
            int expect = CDEMU_OK;
            job.status.compare_exchange_strong(expect, st);
            break;
        }
    }
}

// A fixed pool of worker threads (the hardware's concurrency, or CDIPHASE_EMU_THREADS).
class Pool {
  public:
    Pool() {
        unsigned n = std::thread::hardware_concurrency();
        if (const char* e = std::getenv("CDIPHASE_EMU_THREADS")) n = (unsigned)std::atoi(e);
        if (n == 0) n = 1;
        for (unsigned i = 1; i < n; ++i) std::thread([this] { loop(); }).detach();
        workers_ = n - 1;
    }
    void run(Job& job) {
        {
            std::lock_guard<std::mutex> g(m_);
            job_ = &job;
            ++epoch_;
            busy_ = workers_;
        }
        cv_.notify_all();
        run_blocks(job);  // the calling thread works too
        std::unique_lock<std::mutex> g(m_);
        done_cv_.wait(g, [this] { return busy_ == 0; });
        job_ = nullptr;
    }

  private:
    void loop() {
        uint64_t seen = 0;
        for (;;) {
            Job* j;
            {
                std::unique_lock<std::mutex> g(m_);
                cv_.wait(g, [&] { return epoch_ != seen; });
                seen = epoch_;
                j = job_;
            }
            run_blocks(*j);
            {
                std::lock_guard<std::mutex> g(m_);
                --busy_;
            }
            done_cv_.notify_all();
        }
    }
    size_t workers_ = 0;
    std::mutex m_;
    std::condition_variable cv_, done_cv_;
    Job* job_ = nullptr;
    uint64_t epoch_ = 0;
    size_t busy_ = 0;
};

std::mutex g_launch;  // one launch at a time (launches are synchronous, like one stream)

}  // namespace

const uint3& current_thread_idx() { return tl_worker->cur->tid; }
void block_barrier() { yield_to_scheduler(BLOCK_WAIT); }
void warp_barrier() { yield_to_scheduler(WARP_WAIT); }
uint64_t* warp_slots() {
    Worker& w = *tl_worker;
    return w.slots.data() + (w.cur_index & ~31u);
}
int lane_id() { return (int)(tl_worker->cur_index & 31u); }
int warp_live_mask_bits(unsigned int* live) {
    Worker& w = *tl_worker;
    const unsigned base = w.cur_index & ~31u;
    unsigned bits = 0;
    for (unsigned l = 0; l < 32 && base + l < w.nthreads; ++l)
        if (w.fibers[base + l].state != DONE) bits |= 1u << l;
    *live = bits;
    return (int)base;
}
void* dynamic_shared() {
    uintptr_t p = reinterpret_cast<uintptr_t>(tl_worker->dyn.data());
    return reinterpret_cast<void*>((p + 15) & ~uintptr_t(15));
}

int run_grid(const cdemu_launch_cfg* cfg, BodyFn body, void* ctx) {
    const uint64_t nthreads = (uint64_t)cfg->block[0] * cfg->block[1] * cfg->block[2];
    const uint64_t nblocks = (uint64_t)cfg->grid[0] * cfg->grid[1] * cfg->grid[2];
    if (nthreads == 0 || nthreads > kMaxThreads || cfg->block[2] > 64 || cfg->grid[1] > 65535 ||
        cfg->grid[2] > 65535 || cfg->shmem_bytes > kMaxDynShared || cfg->order > 2)
        return CDEMU_BAD_CONFIG;
    if (nblocks == 0) return CDEMU_OK;
    static Pool* pool = new Pool();  // never destroyed: its threads live until exit
    std::lock_guard<std::mutex> g(g_launch);
    Job job;
    job.cfg = cfg;
    job.body = body;
    job.ctx = ctx;
    job.nblocks = nblocks;
    pool->run(job);
    return job.status.load();
}

}  // namespace cdemu
