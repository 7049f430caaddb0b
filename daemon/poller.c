/* poller.c - one epoll fd as one GSource (see poller.h). */
#include "daemon/poller.h"

#include <errno.h>
#include <unistd.h>

#define BATCH 256

struct PollerWatch {
  int fd;
  guint32 events;
  PollerFunc func;
  gpointer data;
  gboolean removed;
};

typedef struct {
  GSource source;
  Poller *poller;
} PollerSource;

struct Poller {
  int epfd;
  GSource *source;
  gpointer tag;
  guint count;
  GPtrArray *graveyard; /* watches removed during a dispatch, freed after it */
  gboolean dispatching;
};

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
  p->dispatching = TRUE;
  for (int i = 0; i < n; i++) {
    PollerWatch *w = evs[i].data.ptr;
    if (!w->removed)
      w->func(w->data, evs[i].events);
  }
  p->dispatching = FALSE;
  g_ptr_array_set_size(p->graveyard, 0); /* frees the removed watches */
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs poller_funcs = {.dispatch = poller_dispatch};

Poller *
poller_new(GMainContext *context)
{
  Poller *p = g_new0(Poller, 1);
  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (p->epfd < 0)
    g_error("epoll_create1: %s", g_strerror(errno));
  p->graveyard = g_ptr_array_new_with_free_func(g_free);
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
  g_ptr_array_unref(p->graveyard);
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
  struct epoll_event ev = {.events = events | EPOLLRDHUP, .data.ptr = w};
  if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
    g_error("epoll_ctl ADD %d: %s", fd, g_strerror(errno));
  p->count++;
  return w;
}

void
poller_modify(Poller *p, PollerWatch *w, guint32 events)
{
  if (w->events == events)
    return;
  w->events = events;
  struct epoll_event ev = {.events = events | EPOLLRDHUP, .data.ptr = w};
  if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, w->fd, &ev) != 0)
    g_error("epoll_ctl MOD %d: %s", w->fd, g_strerror(errno));
}

void
poller_remove(Poller *p, PollerWatch *w)
{
  if (w == NULL)
    return;
  (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, w->fd, NULL);
  w->removed = TRUE;
  p->count--;
  /* Another ready event of this batch may still point at it: free it after the batch. */
  if (p->dispatching)
    g_ptr_array_add(p->graveyard, w);
  else
    g_free(w);
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
