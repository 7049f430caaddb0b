/* driver.c - the effect drain loop shared by usherd and ushersim (see driver.h). */
#include "common/driver.h"

guint
usher_driver_drain(UsherDirector *d, UsherEffectHandler handler, gpointer data)
{
  guint total = 0;
  for (;;) {
    GArray *effects = usher_director_take_effects(d);
    guint len = effects->len;
    for (guint i = 0; i < len; i++)
      handler(data, &g_array_index(effects, UsherEffect, i));
    g_array_unref(effects);
    total += len;
    if (len == 0)
      return total;
  }
}
