// Linked into every executable of the TSan build (tools/test --sanitize=thread) only.
//
// Debian's librdkafka uses C11 threads (thrd_create, mtx_lock, cnd_wait, call_once). glibc
// implements them by calling its internal pthread functions directly, so ThreadSanitizer's
// interceptors never see them: a thread made by thrd_create has no TSan state and crashes at
// its first allocation (SEGV in the sanitizer's allocator cache, in the "rdk:*" threads), and
// librdkafka's locks would be invisible. These definitions take precedence over glibc's (the
// executable is searched first) and forward to the pthread functions TSan intercepts. glibc's
// mtx_t, cnd_t and once_flag hold exactly a pthread_mutex_t, pthread_cond_t and pthread_once_t.
#include <pthread.h>
#include <threads.h>

#include <cerrno>
#include <cstdint>
#include <new>

namespace {

int Result(int err) {
  switch (err) {
    case 0: return thrd_success;
    case ETIMEDOUT: return thrd_timedout;
    case EBUSY: return thrd_busy;
    case ENOMEM: return thrd_nomem;
    default: return thrd_error;
  }
}

struct Start {
  thrd_start_t func;
  void* arg;
};

void* Run(void* p) {
  Start s = *static_cast<Start*>(p);
  delete static_cast<Start*>(p);
  return reinterpret_cast<void*>(static_cast<intptr_t>(s.func(s.arg)));
}

}  // namespace

extern "C" {

int thrd_create(thrd_t* thr, thrd_start_t func, void* arg) {
  Start* s = new (std::nothrow) Start{func, arg};
  if (s == nullptr) return thrd_nomem;
  int err = pthread_create(reinterpret_cast<pthread_t*>(thr), nullptr, Run, s);
  if (err != 0) delete s;
  return Result(err);
}

int thrd_join(thrd_t thr, int* res) {
  void* out = nullptr;
  int err = pthread_join(static_cast<pthread_t>(thr), &out);
  if (err == 0 && res != nullptr) *res = static_cast<int>(reinterpret_cast<intptr_t>(out));
  return Result(err);
}

int thrd_detach(thrd_t thr) { return Result(pthread_detach(static_cast<pthread_t>(thr))); }

int mtx_init(mtx_t* m, int type) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  if (type & mtx_recursive) pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
  int err = pthread_mutex_init(reinterpret_cast<pthread_mutex_t*>(m), &attr);
  pthread_mutexattr_destroy(&attr);
  return Result(err);
}
int mtx_lock(mtx_t* m) { return Result(pthread_mutex_lock(reinterpret_cast<pthread_mutex_t*>(m))); }
int mtx_trylock(mtx_t* m) { return Result(pthread_mutex_trylock(reinterpret_cast<pthread_mutex_t*>(m))); }
int mtx_timedlock(mtx_t* __restrict m, const struct timespec* __restrict ts) {
  return Result(pthread_mutex_timedlock(reinterpret_cast<pthread_mutex_t*>(m), ts));
}
int mtx_unlock(mtx_t* m) { return Result(pthread_mutex_unlock(reinterpret_cast<pthread_mutex_t*>(m))); }
void mtx_destroy(mtx_t* m) { pthread_mutex_destroy(reinterpret_cast<pthread_mutex_t*>(m)); }

int cnd_init(cnd_t* c) { return Result(pthread_cond_init(reinterpret_cast<pthread_cond_t*>(c), nullptr)); }
int cnd_signal(cnd_t* c) { return Result(pthread_cond_signal(reinterpret_cast<pthread_cond_t*>(c))); }
int cnd_broadcast(cnd_t* c) { return Result(pthread_cond_broadcast(reinterpret_cast<pthread_cond_t*>(c))); }
int cnd_wait(cnd_t* c, mtx_t* m) {
  return Result(pthread_cond_wait(reinterpret_cast<pthread_cond_t*>(c), reinterpret_cast<pthread_mutex_t*>(m)));
}
int cnd_timedwait(cnd_t* __restrict c, mtx_t* __restrict m, const struct timespec* __restrict ts) {
  return Result(
      pthread_cond_timedwait(reinterpret_cast<pthread_cond_t*>(c), reinterpret_cast<pthread_mutex_t*>(m), ts));
}
void cnd_destroy(cnd_t* c) { pthread_cond_destroy(reinterpret_cast<pthread_cond_t*>(c)); }

void call_once(once_flag* flag, void (*func)(void)) { pthread_once(reinterpret_cast<pthread_once_t*>(flag), func); }

}  // extern "C"
