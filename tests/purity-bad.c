/* purity-bad.c - a deliberately impure object: the purity check must reject it. */
#include <stdlib.h>
#include <time.h>

long purity_bad_example(void);

long
purity_bad_example(void)
{
  return (long)time(NULL) + rand();
}
