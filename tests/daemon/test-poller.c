/* test-poller.c - the data path's event loop (daemon/poller.c): watches and posts between threads.
 *
 * Posts are how usherd's threads talk (a worker's lookup, the core's answer, kicks), so what
 * matters is checked here directly: every post runs once, in order, on the poller's own thread;
 * a post made during a dispatch runs in that same dispatch; posts left when a poller is freed
 * are released, not run; a watch removed before its close is never called again; a peer's end
 * (EPOLLRDHUP) is reported once. */
#include "daemon/poller.h"

#include <glib.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
  GThread *expected;
  GArray *seen; /* guint, in the order the posts ran */
  gboolean wrong_thread;
} Log;

typedef struct {
  Log *log;
  guint value;
} Item;

static void
record(gpointer data)
{
  Item *it = data;
  if (g_thread_self() != it->log->expected)
    it->log->wrong_thread = TRUE;
  g_array_append_val(it->log->seen, it->value);
  g_free(it);
}

static Item *
item(Log *log, guint value)
{
  Item *it = g_new(Item, 1);
  it->log = log;
  it->value = value;
  return it;
}

typedef struct {
  Poller *poller;
  Log *log;
  guint count;
} Poster;

static gpointer
post_many(gpointer data)
{
  Poster *p = data;
  for (guint i = 0; i < p->count; i++)
    poller_post(p->poller, record, item(p->log, i), g_free);
  return NULL;
}

/* Iterates ctx until the log holds n entries (bounded: the test fails instead of hanging). */
static void
iterate_until(GMainContext *ctx, Log *log, guint n)
{
  gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (log->seen->len < n && g_get_monotonic_time() < end)
    g_main_context_iteration(ctx, TRUE);
}

static void
test_post_from_another_thread(void)
{
  GMainContext *ctx = g_main_context_new();
  g_main_context_push_thread_default(ctx);
  Poller *poller = poller_new(ctx);
  Log log = {g_thread_self(), g_array_new(FALSE, FALSE, sizeof(guint)), FALSE};
  Poster poster = {poller, &log, 10000};
  GThread *t = g_thread_new("poster", post_many, &poster);
  iterate_until(ctx, &log, poster.count);
  g_thread_join(t);
  g_assert_cmpuint(log.seen->len, ==, poster.count);
  for (guint i = 0; i < log.seen->len; i++)
    g_assert_cmpuint(g_array_index(log.seen, guint, i), ==, i);
  g_assert_false(log.wrong_thread);
  poller_free(poller);
  g_array_unref(log.seen);
  g_main_context_pop_thread_default(ctx);
  g_main_context_unref(ctx);
}

/* A watch's handler posts; that post posts again: all of it runs in the one dispatch that the
 * readable descriptor caused. */
typedef struct {
  Poller *poller;
  Log *log;
  int fd;
} Reader;

static void
second(gpointer data)
{
  Reader *r = data;
  poller_post(r->poller, record, item(r->log, 2), g_free);
}

static void
on_readable(gpointer data, guint32 events)
{
  Reader *r = data;
  (void)events;
  char c;
  g_assert_cmpint(read(r->fd, &c, 1), ==, 1);
  poller_post(r->poller, record, item(r->log, 1), g_free);
  poller_post(r->poller, second, r, NULL);
}

static void
test_post_during_dispatch(void)
{
  GMainContext *ctx = g_main_context_new();
  Poller *poller = poller_new(ctx);
  Log log = {g_thread_self(), g_array_new(FALSE, FALSE, sizeof(guint)), FALSE};
  int fds[2];
  g_assert_cmpint(pipe(fds), ==, 0);
  Reader r = {poller, &log, fds[0]};
  PollerWatch *watch = poller_add(poller, fds[0], EPOLLIN, on_readable, &r);
  g_assert_cmpint(write(fds[1], "x", 1), ==, 1);
  /* One blocking iteration: the pipe makes the epoll fd readable, one dispatch runs it all. */
  g_assert_true(g_main_context_iteration(ctx, TRUE));
  g_assert_cmpuint(log.seen->len, ==, 2);
  g_assert_cmpuint(g_array_index(log.seen, guint, 0), ==, 1);
  g_assert_cmpuint(g_array_index(log.seen, guint, 1), ==, 2);
  /* Nothing was left for later: no wakeup is pending. */
  g_assert_false(g_main_context_iteration(ctx, FALSE));
  poller_remove(poller, watch);
  close(fds[0]);
  close(fds[1]);
  poller_free(poller);
  g_array_unref(log.seen);
  g_main_context_unref(ctx);
}

static void
count_drop(gpointer data)
{
  (*(guint *)data)++;
}

static void
never(gpointer data)
{
  (void)data;
  g_assert_not_reached();
}

static void
test_free_releases_posts(void)
{
  GMainContext *ctx = g_main_context_new();
  Poller *poller = poller_new(ctx);
  guint dropped = 0;
  for (int i = 0; i < 5; i++)
    poller_post(poller, never, &dropped, count_drop);
  poller_post(poller, never, NULL, NULL);
  poller_free(poller);
  g_assert_cmpuint(dropped, ==, 5);
  g_main_context_unref(ctx);
}

static void
on_never(gpointer data, guint32 events)
{
  (void)data;
  (void)events;
  g_assert_not_reached();
}

static void
test_remove_closing(void)
{
  GMainContext *ctx = g_main_context_new();
  Poller *poller = poller_new(ctx);
  int fds[2];
  g_assert_cmpint(pipe(fds), ==, 0);
  PollerWatch *watch = poller_add(poller, fds[0], EPOLLIN, on_never, NULL);
  g_assert_cmpuint(poller_count(poller), ==, 1);
  g_assert_cmpint(write(fds[1], "x", 1), ==, 1);
  /* A copy of the descriptor elsewhere (a child between fork and exec holds one of each): the
   * close alone would leave the open file in the epoll set, its event pointing at a freed
   * watch. */
  int copy = dup(fds[0]);
  g_assert_cmpint(copy, >=, 0);
  poller_remove_closing(poller, watch);
  close(fds[0]);
  g_assert_cmpuint(poller_count(poller), ==, 0);
  /* Nothing is ready any more for this poller (a registration left behind would be ready for
   * ever, its event pointing at the freed watch). */
  for (int i = 0; i < 10 && g_main_context_iteration(ctx, FALSE); i++)
    ;
  g_assert_false(g_main_context_iteration(ctx, FALSE));
  close(copy);
  close(fds[1]);
  poller_free(poller);
  g_main_context_unref(ctx);
}

static void
on_count(gpointer data, guint32 events)
{
  guint *calls = data;
  g_assert_true(events & EPOLLRDHUP);
  (*calls)++;
}

/* A peer that shut its sending side while the owner reads nothing more from it (a half-closed
 * client waiting for its backend's answers): the end is reported once, not on every wait. */
static void
test_peer_end_once(void)
{
  GMainContext *ctx = g_main_context_new();
  Poller *poller = poller_new(ctx);
  int fds[2];
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), ==, 0);
  guint calls = 0;
  PollerWatch *watch = poller_add(poller, fds[0], 0, on_count, &calls);
  g_assert_cmpint(shutdown(fds[1], SHUT_WR), ==, 0);
  for (int i = 0; i < 100 && g_main_context_iteration(ctx, FALSE); i++)
    ;
  g_assert_cmpuint(calls, ==, 1);
  /* Asking for other events later does not bring it back. */
  poller_modify(poller, watch, EPOLLOUT);
  poller_modify(poller, watch, 0);
  for (int i = 0; i < 100 && g_main_context_iteration(ctx, FALSE); i++)
    ;
  g_assert_cmpuint(calls, ==, 1);
  poller_remove(poller, watch);
  close(fds[0]);
  close(fds[1]);
  poller_free(poller);
  g_main_context_unref(ctx);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/daemon/poller/post-from-another-thread", test_post_from_another_thread);
  g_test_add_func("/daemon/poller/post-during-dispatch", test_post_during_dispatch);
  g_test_add_func("/daemon/poller/free-releases-posts", test_free_releases_posts);
  g_test_add_func("/daemon/poller/remove-closing", test_remove_closing);
  g_test_add_func("/daemon/poller/peer-end-once", test_peer_end_once);
  return g_test_run();
}
