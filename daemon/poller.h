/* poller.h - one epoll instance wrapped in one GSource: the data path's event loop.
 *
 * GLib's poll() loop costs O(every source) per wakeup; a proxy with 10,000 idle sessions would
 * spend milliseconds per event (DESIGN.md section 3). A worker thread therefore gives its
 * GMainContext a single source, this one, whose only file descriptor is the epoll fd; when it is
 * readable, the source asks epoll for the ready descriptors (a batch) and calls their handlers.
 * Cost per wakeup: the ready descriptors, not all of them. Level-triggered.
 *
 * Handlers may add, change and remove watches, their own included, at any time: a removed
 * watch's handler is never called again, even later in the same batch. */
#pragma once

#include <glib.h>
#include <sys/epoll.h>

G_BEGIN_DECLS

typedef struct Poller Poller;
typedef struct PollerWatch PollerWatch;

/* events: EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP as epoll reports them. */
typedef void (*PollerFunc)(gpointer data, guint32 events);

Poller *poller_new(GMainContext *context);
void poller_free(Poller *poller);

/* Watches fd for events (EPOLLIN and/or EPOLLOUT; errors and hang-ups are always reported). */
PollerWatch *poller_add(Poller *poller, int fd, guint32 events, PollerFunc func, gpointer data);
void poller_modify(Poller *poller, PollerWatch *watch, guint32 events);
/* Stops watching (the fd is not closed). */
void poller_remove(Poller *poller, PollerWatch *watch);
guint poller_count(const Poller *poller);
/* The events a watch asks for now (as last set). */
guint32 poller_events(const PollerWatch *watch);

G_END_DECLS
