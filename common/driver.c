/* driver.c - the effect drain loop shared by usherd and ushersim (see driver.h). */
#include "common/driver.h"

guint
usher_driver_drain(UsherDirector *d, UsherEffectHandler handler, gpointer data)
{
  guint total = 0;
  while (usher_director_has_effects(d)) {
    GArray *effects = usher_director_take_effects(d);
    for (guint i = 0; i < effects->len; i++)
      handler(data, &g_array_index(effects, UsherEffect, i));
    total += effects->len;
    g_array_unref(effects);
  }
  return total;
}
