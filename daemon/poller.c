/* poller.c - one epoll fd as one GSource (see poller.h). */
#include "daemon/poller.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define BATCH 256
/* Rounds of posted calls run after one batch: calls posted by those calls run in the next round
 * (a worker's question to the core on the same thread, then the core's answer). What is still
 * queued after these waits for the next wakeup, so posts cannot starve the descriptors. */
#define POST_ROUNDS 4

struct PollerWatch {
  int fd;
  guint32 events; /* what the owner asks for */
  guint32 armed;  /* what the epoll set holds for it */
  PollerFunc func;
  gpointer data;
  gboolean removed;
  /* EPOLLRDHUP was reported: it is not asked for again. Level-triggered, it would be reported
   * on every wait while the owner still waits for the other direction (the backend's answers
   * to a client that half-closed): a busy loop. */
  gboolean peer_ended;
};

typedef struct {
  GSource source;
  Poller *poller;
} PollerSource;

static GSourceFuncs poller_funcs;

typedef struct {
  PollerPostFunc func;
  gpointer data;
  GDestroyNotify destroy;
} PollerPost;

struct Poller {
  int epfd;
  GSource *source;
  gpointer tag;
  guint count;
  GPtrArray *graveyard; /* watches removed during a dispatch, freed after it */
  /* Posts (poller_post): the queue and the flag are guarded by lock; running and graveyard are
   * only ever touched by the poller's own thread. */
  GMutex lock;
  GArray *posts;   /* PollerPost, in order */
  GArray *running; /* the round being run, swapped with posts */
  int eventfd;
  gboolean signalled;   /* the eventfd was written and not yet read */
  /* Atomic: the thread inside poller_dispatch, or NULL. Other threads only compare it with
   * themselves (is the poster the dispatching thread?). */
  GThread *dispatcher;
};

#define EVENTFD_TAG ((gpointer)&poller_funcs)

static void
run_posts(Poller *p)
{
  for (int round = 0; round < POST_ROUNDS; round++) {
    g_mutex_lock(&p->lock);
    GArray *batch = p->posts;
    p->posts = p->running;
    p->running = batch;
    g_mutex_unlock(&p->lock);
    if (batch->len == 0)
      return;
    for (guint i = 0; i < batch->len; i++) {
      PollerPost *post = &g_array_index(batch, PollerPost, i);
      post->func(post->data);
    }
    g_array_set_size(batch, 0);
  }
  /* More is queued: come back after the descriptors had their turn. */
  g_mutex_lock(&p->lock);
  gboolean wake = p->posts->len > 0 && !p->signalled;
  if (wake)
    p->signalled = TRUE;
  g_mutex_unlock(&p->lock);
  if (wake)
    (void)eventfd_write(p->eventfd, 1);
}

static guint32
arm_mask(const PollerWatch *w)
{
  return w->events | (w->peer_ended ? 0 : EPOLLRDHUP);
}

static void
arm(Poller *p, PollerWatch *w, int op)
{
  struct epoll_event ev = {.events = arm_mask(w), .data.ptr = w};
  if (epoll_ctl(p->epfd, op, w->fd, &ev) != 0)
    g_error("epoll_ctl %s %d: %s", op == EPOLL_CTL_ADD ? "ADD" : "MOD", w->fd, g_strerror(errno));
  w->armed = ev.events;
}

static gboolean
poller_dispatch(GSource *source, GSourceFunc callback, gpointer user_data)
{
  Poller *p = ((PollerSource *)source)->poller;
  (void)callback;
  (void)user_data;
  struct epoll_event evs[BATCH];
  int n = epoll_wait(p->epfd, evs, BATCH, 0);
  if (n < 0 && errno != EINTR)
    g_error("epoll_wait: %s", g_strerror(errno));
  g_atomic_pointer_set(&p->dispatcher, g_thread_self());
  for (int i = 0; i < n; i++) {
    if (evs[i].data.ptr == EVENTFD_TAG) {
      eventfd_t value;
      (void)eventfd_read(p->eventfd, &value);
      g_mutex_lock(&p->lock);
      p->signalled = FALSE;
      g_mutex_unlock(&p->lock);
      continue; /* the posts run below */
    }
    PollerWatch *w = evs[i].data.ptr;
    if (w->removed)
      continue;
    if (evs[i].events & EPOLLRDHUP)
      w->peer_ended = TRUE;
    w->func(w->data, evs[i].events);
    if (!w->removed && w->armed != arm_mask(w))
      arm(p, w, EPOLL_CTL_MOD); /* the handler left the mask as it was */
  }
  run_posts(p);
  g_atomic_pointer_set(&p->dispatcher, NULL);
  g_ptr_array_set_size(p->graveyard, 0); /* frees the removed watches */
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs poller_funcs = {.dispatch = poller_dispatch};

void
poller_post(Poller *p, PollerPostFunc func, gpointer data, GDestroyNotify destroy)
{
  PollerPost post = {func, data, destroy};
  /* The poller's own thread inside a dispatch runs the queue before it polls again. */
  gboolean inside = g_atomic_pointer_get(&p->dispatcher) == g_thread_self();
  g_mutex_lock(&p->lock);
  g_array_append_val(p->posts, post);
  gboolean wake = !inside && !p->signalled;
  if (wake)
    p->signalled = TRUE;
  g_mutex_unlock(&p->lock);
  if (wake)
    (void)eventfd_write(p->eventfd, 1);
}

Poller *
poller_new(GMainContext *context)
{
  Poller *p = g_new0(Poller, 1);
  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (p->epfd < 0)
    g_error("epoll_create1: %s", g_strerror(errno));
  p->graveyard = g_ptr_array_new_with_free_func(g_free);
  g_mutex_init(&p->lock);
  p->posts = g_array_new(FALSE, FALSE, sizeof(PollerPost));
  p->running = g_array_new(FALSE, FALSE, sizeof(PollerPost));
  p->eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (p->eventfd < 0)
    g_error("eventfd: %s", g_strerror(errno));
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = EVENTFD_TAG};
  if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->eventfd, &ev) != 0)
    g_error("epoll_ctl ADD eventfd: %s", g_strerror(errno));
  p->source = g_source_new(&poller_funcs, sizeof(PollerSource));
  ((PollerSource *)p->source)->poller = p;
  g_source_set_name(p->source, "usherd poller");
  /* GLib blocks a source during its dispatch unless it may recurse: it takes the epoll fd out of
   * the poll set and puts it back, waking its own context twice and polling once more for
   * nothing on every dispatch. Nothing here iterates the context from inside a callback. */
  g_source_set_can_recurse(p->source, TRUE);
  p->tag = g_source_add_unix_fd(p->source, p->epfd, G_IO_IN);
  g_source_attach(p->source, context);
  return p;
}

void
poller_free(Poller *p)
{
  if (p == NULL)
    return;
  g_source_destroy(p->source);
  g_source_unref(p->source);
  close(p->epfd);
  close(p->eventfd);
  g_ptr_array_unref(p->graveyard);
  /* Calls never made (their thread has stopped): their data is only released. */
  for (guint i = 0; i < p->posts->len; i++) {
    PollerPost *post = &g_array_index(p->posts, PollerPost, i);
    if (post->destroy != NULL)
      post->destroy(post->data);
  }
  g_array_unref(p->posts);
  g_array_unref(p->running);
  g_mutex_clear(&p->lock);
  g_free(p);
}

PollerWatch *
poller_add(Poller *p, int fd, guint32 events, PollerFunc func, gpointer data)
{
  PollerWatch *w = g_new0(PollerWatch, 1);
  w->fd = fd;
  w->events = events;
  w->func = func;
  w->data = data;
  arm(p, w, EPOLL_CTL_ADD);
  p->count++;
  return w;
}

void
poller_modify(Poller *p, PollerWatch *w, guint32 events)
{
  w->events = events;
  if (w->armed != arm_mask(w))
    arm(p, w, EPOLL_CTL_MOD);
}

static void
forget(Poller *p, PollerWatch *w)
{
  w->removed = TRUE;
  p->count--;
  /* Another ready event of this batch may still point at it: free it after the batch. Watches
   * change only on the poller's own thread, so a dispatcher here means this thread's batch. */
  if (g_atomic_pointer_get(&p->dispatcher) != NULL)
    g_ptr_array_add(p->graveyard, w);
  else
    g_free(w);
}

void
poller_remove(Poller *p, PollerWatch *w)
{
  if (w == NULL)
    return;
  (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, w->fd, NULL);
  forget(p, w);
}

void
poller_remove_closing(Poller *p, PollerWatch *w)
{
  /* Taken out explicitly although the close would do it: a close takes a descriptor out of the
   * epoll set only when no other descriptor shares its open file, and a child being forked (a
   * flush hook) holds a copy of every one until its exec. An event in that window would come
   * with a freed watch. */
  poller_remove(p, w);
}

guint
poller_count(const Poller *p)
{
  return p->count;
}

guint32
poller_events(const PollerWatch *w)
{
  return w->events;
}
