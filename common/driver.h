/* driver.h - how a driver (usherd, ushersim) hands a director's effects to its own I/O.
 *
 * Every call into a director is followed by usher_driver_drain(): it takes the outbox and hands
 * each effect to the driver's handler in order, and keeps going while handling produced more
 * (a handler may call back into the director: report a write, a kick done at once, ...). Both
 * drivers use it, so they call the core in the same way. */
#pragma once

#include "libcore/director.h"

G_BEGIN_DECLS

typedef void (*UsherEffectHandler)(gpointer data, UsherEffect *effect);

/* Returns the number of effects handled. */
guint usher_driver_drain(UsherDirector *director, UsherEffectHandler handler, gpointer data);

G_END_DECLS
