/* poller.h - one epoll instance wrapped in one GSource: the data path's event loop.
 *
 * GLib's poll() loop costs O(every source) per wakeup; a proxy with 10,000 idle sessions would
 * spend milliseconds per event (DESIGN.md section 3). A worker thread therefore gives its
 * GMainContext a single source, this one, whose only file descriptor is the epoll fd; when it is
 * readable, the source asks epoll for the ready descriptors (a batch) and calls their handlers.
 * Cost per wakeup: the ready descriptors, not all of them. Level-triggered.
 *
 * Handlers may add, change and remove watches, their own included, at any time: a removed
 * watch's handler is never called again, even later in the same batch.
 *
 * Posts are how threads talk (DESIGN.md section 3: workers ask the core thread by request id):
 * poller_post() queues a call for the poller's thread, from any thread, and never runs it inline.
 * The queue is drained after each batch of ready descriptors, so a call posted by the poller's
 * own thread while it dispatches (a worker asking the core that shares its thread) costs no
 * system call at all; from another thread, or from outside a dispatch, it costs one eventfd
 * write, and only when the queue was empty and not yet signalled. Calls run in the order they
 * were posted. */
#pragma once

#include <glib.h>
#include <sys/epoll.h>

G_BEGIN_DECLS

typedef struct Poller Poller;
typedef struct PollerWatch PollerWatch;

/* events: EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP as epoll reports them. EPOLLRDHUP
 * (the peer ended its side) comes once per watch, whatever it asks for; reading then gives what
 * the peer sent before, then the end. */
typedef void (*PollerFunc)(gpointer data, guint32 events);

Poller *poller_new(GMainContext *context);
void poller_free(Poller *poller);

/* Watches fd for events (EPOLLIN and/or EPOLLOUT; errors and hang-ups are always reported). */
PollerWatch *poller_add(Poller *poller, int fd, guint32 events, PollerFunc func, gpointer data);
void poller_modify(Poller *poller, PollerWatch *watch, guint32 events);
/* Stops watching (the fd is not closed). */
void poller_remove(Poller *poller, PollerWatch *watch);
/* Stops watching a descriptor the caller closes right after (the same as poller_remove: a
 * close alone does not take it out of the epoll set while a forked child still holds a copy). */
void poller_remove_closing(Poller *poller, PollerWatch *watch);
guint poller_count(const Poller *poller);
/* Calls func(data) on the poller's thread soon; thread-safe. A call still queued when the poller
 * is freed is not made: destroy(data) is called instead (destroy may be NULL). */
typedef void (*PollerPostFunc)(gpointer data);
void poller_post(Poller *poller, PollerPostFunc func, gpointer data, GDestroyNotify destroy);
/* The events a watch asks for now (as last set). */
guint32 poller_events(const PollerWatch *watch);

G_END_DECLS
