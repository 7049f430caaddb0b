/* dist.c - integer-only random durations for the simulator.
 *
 * No floating point: the same seed gives the same numbers on every machine. The tables below are
 * fixed-point (16.16) constants: EXP_NEG_LN[i] = -ln(1 - i/256) (EXP_NEG_LN[256] = ln 256) and
 * POW2[i] = 2^(i/256). They were computed once and are data, not code.
 */
#include "sim/dist.h"

static const guint32 EXP_NEG_LN[257] = {
  0u, 257u, 514u, 773u, 1032u, 1293u, 1554u, 1817u,
  2081u, 2345u, 2611u, 2878u, 3146u, 3415u, 3686u, 3957u,
  4230u, 4503u, 4778u, 5054u, 5331u, 5609u, 5889u, 6169u,
  6451u, 6734u, 7019u, 7304u, 7591u, 7879u, 8169u, 8459u,
  8751u, 9044u, 9339u, 9635u, 9932u, 10231u, 10530u, 10832u,
  11135u, 11439u, 11744u, 12051u, 12360u, 12669u, 12981u, 13294u,
  13608u, 13924u, 14241u, 14560u, 14880u, 15202u, 15526u, 15851u,
  16178u, 16507u, 16837u, 17169u, 17502u, 17837u, 18174u, 18513u,
  18854u, 19196u, 19540u, 19886u, 20233u, 20583u, 20934u, 21288u,
  21643u, 22000u, 22359u, 22720u, 23083u, 23448u, 23815u, 24185u,
  24556u, 24929u, 25305u, 25683u, 26063u, 26445u, 26829u, 27216u,
  27605u, 27996u, 28390u, 28786u, 29184u, 29585u, 29988u, 30394u,
  30802u, 31213u, 31627u, 32043u, 32461u, 32883u, 33307u, 33734u,
  34164u, 34596u, 35032u, 35470u, 35911u, 36356u, 36803u, 37254u,
  37707u, 38164u, 38624u, 39087u, 39553u, 40023u, 40496u, 40973u,
  41453u, 41937u, 42424u, 42915u, 43409u, 43908u, 44410u, 44916u,
  45426u, 45940u, 46458u, 46980u, 47507u, 48037u, 48572u, 49112u,
  49656u, 50204u, 50757u, 51315u, 51877u, 52445u, 53017u, 53595u,
  54177u, 54765u, 55358u, 55957u, 56561u, 57170u, 57786u, 58407u,
  59034u, 59667u, 60307u, 60952u, 61604u, 62263u, 62928u, 63600u,
  64280u, 64966u, 65659u, 66360u, 67069u, 67785u, 68509u, 69241u,
  69982u, 70731u, 71489u, 72255u, 73031u, 73816u, 74610u, 75414u,
  76228u, 77053u, 77887u, 78733u, 79590u, 80458u, 81338u, 82229u,
  83133u, 84050u, 84979u, 85922u, 86879u, 87850u, 88836u, 89836u,
  90852u, 91884u, 92933u, 93999u, 95082u, 96183u, 97304u, 98443u,
  99603u, 100784u, 101987u, 103212u, 104460u, 105733u, 107030u, 108354u,
  109706u, 111085u, 112495u, 113935u, 115408u, 116915u, 118457u, 120036u,
  121654u, 123314u, 125016u, 126764u, 128559u, 130405u, 132305u, 134262u,
  136278u, 138359u, 140508u, 142730u, 145029u, 147413u, 149886u, 152457u,
  155132u, 157921u, 160834u, 163883u, 167080u, 170442u, 173985u, 177731u,
  181704u, 185934u, 190455u, 195312u, 200558u, 206260u, 212507u, 219411u,
  227130u, 235882u, 245984u, 257933u, 272557u, 291410u, 317983u, 363409u,
  363409u,
};

static const guint32 POW2[257] = {
  65536u, 65714u, 65892u, 66071u, 66250u, 66429u, 66609u, 66790u,
  66971u, 67153u, 67335u, 67517u, 67700u, 67884u, 68068u, 68252u,
  68438u, 68623u, 68809u, 68996u, 69183u, 69370u, 69558u, 69747u,
  69936u, 70126u, 70316u, 70507u, 70698u, 70889u, 71082u, 71274u,
  71468u, 71661u, 71856u, 72050u, 72246u, 72442u, 72638u, 72835u,
  73032u, 73230u, 73429u, 73628u, 73828u, 74028u, 74229u, 74430u,
  74632u, 74834u, 75037u, 75240u, 75444u, 75649u, 75854u, 76060u,
  76266u, 76473u, 76680u, 76888u, 77096u, 77305u, 77515u, 77725u,
  77936u, 78147u, 78359u, 78572u, 78785u, 78998u, 79212u, 79427u,
  79642u, 79858u, 80075u, 80292u, 80510u, 80728u, 80947u, 81166u,
  81386u, 81607u, 81828u, 82050u, 82273u, 82496u, 82719u, 82944u,
  83169u, 83394u, 83620u, 83847u, 84074u, 84302u, 84531u, 84760u,
  84990u, 85220u, 85451u, 85683u, 85915u, 86148u, 86382u, 86616u,
  86851u, 87086u, 87322u, 87559u, 87796u, 88034u, 88273u, 88513u,
  88752u, 88993u, 89234u, 89476u, 89719u, 89962u, 90206u, 90451u,
  90696u, 90942u, 91188u, 91436u, 91684u, 91932u, 92181u, 92431u,
  92682u, 92933u, 93185u, 93438u, 93691u, 93945u, 94200u, 94455u,
  94711u, 94968u, 95226u, 95484u, 95743u, 96002u, 96263u, 96524u,
  96785u, 97048u, 97311u, 97575u, 97839u, 98104u, 98370u, 98637u,
  98905u, 99173u, 99442u, 99711u, 99982u, 100253u, 100524u, 100797u,
  101070u, 101344u, 101619u, 101895u, 102171u, 102448u, 102726u, 103004u,
  103283u, 103564u, 103844u, 104126u, 104408u, 104691u, 104975u, 105260u,
  105545u, 105831u, 106118u, 106406u, 106694u, 106984u, 107274u, 107565u,
  107856u, 108149u, 108442u, 108736u, 109031u, 109326u, 109623u, 109920u,
  110218u, 110517u, 110816u, 111117u, 111418u, 111720u, 112023u, 112327u,
  112631u, 112937u, 113243u, 113550u, 113858u, 114167u, 114476u, 114787u,
  115098u, 115410u, 115723u, 116036u, 116351u, 116667u, 116983u, 117300u,
  117618u, 117937u, 118257u, 118577u, 118899u, 119221u, 119544u, 119869u,
  120194u, 120519u, 120846u, 121174u, 121502u, 121832u, 122162u, 122493u,
  122825u, 123158u, 123492u, 123827u, 124163u, 124500u, 124837u, 125176u,
  125515u, 125855u, 126197u, 126539u, 126882u, 127226u, 127571u, 127917u,
  128263u, 128611u, 128960u, 129310u, 129660u, 130012u, 130364u, 130718u,
  131072u,
};

/* -ln(U) for uniform U, in 16.16 fixed point: an exponential variable with mean 1. The top byte
 * of a draw picks a 1/256 slice of the inverse CDF, the next 16 bits interpolate inside it; the
 * last slice is the tail, which by memorylessness is ln 256 plus another exponential draw. */
guint64
sim_exp_fixed(UsherRng *rng)
{
  guint64 x = 0;
  for (int guard = 0; guard < 64; guard++) {
    guint32 r = usher_rng_next_u32(rng);
    guint i = r >> 24;
    guint32 frac = (r >> 8) & 0xffff;
    if (i == 255) {
      x += EXP_NEG_LN[256];
      continue;
    }
    x += EXP_NEG_LN[i] + (((guint64)(EXP_NEG_LN[i + 1] - EXP_NEG_LN[i]) * frac) >> 16);
    break;
  }
  return x;
}

/* log2(x) in 16.16 fixed point, x >= 1. */
guint64
sim_log2_fixed(guint64 x)
{
  g_assert(x >= 1);
  guint64 ip = 63 - (guint64)__builtin_clzll(x);
  /* Normalise to [1, 2) in 1.62 fixed point, then square repeatedly for the fraction bits. */
  unsigned __int128 m = (unsigned __int128)x << (62 - ip);
  guint64 frac = 0;
  for (int b = 15; b >= 0; b--) {
    m = (m * m) >> 62;
    if (m >= ((unsigned __int128)2 << 62)) {
      m >>= 1;
      frac |= G_GUINT64_CONSTANT(1) << b;
    }
  }
  return ip << 16 | frac;
}

/* 2^(f / 65536) for 0 <= f < 65536, in 16.16 fixed point. */
static guint64
pow2_frac(guint32 f)
{
  guint i = f >> 8, t = f & 0xff;
  return POW2[i] + (((guint64)(POW2[i + 1] - POW2[i]) * t) >> 8);
}

gint64
sim_dist_sample(const SimDist *d, UsherRng *rng)
{
  switch (d->kind) {
  case SIM_DIST_FIXED:
    return d->a_us;
  case SIM_DIST_UNIFORM:
    return usher_rng_range(rng, d->a_us, d->b_us);
  case SIM_DIST_EXPONENTIAL: {
    unsigned __int128 v = (unsigned __int128)sim_exp_fixed(rng) * (guint64)d->a_us;
    v >>= 16;
    return v > (unsigned __int128)G_MAXINT64 / 2 ? G_MAXINT64 / 2 : (gint64)v;
  }
  case SIM_DIST_LOG_UNIFORM: {
    if (d->a_us >= d->b_us)
      return d->a_us;
    /* a * 2^(U * log2(b / a)), with log2(b / a) = log2 b - log2 a. */
    guint64 span = sim_log2_fixed((guint64)d->b_us) - sim_log2_fixed((guint64)d->a_us);
    guint64 e = (guint64)(((unsigned __int128)usher_rng_next_u32(rng) * span) >> 32);
    guint64 ip = e >> 16;
    guint32 f = (guint32)(e & 0xffff);
    unsigned __int128 v = ((unsigned __int128)(guint64)d->a_us * pow2_frac(f)) >> 16;
    v <<= ip;
    if (v > (unsigned __int128)d->b_us)
      v = (guint64)d->b_us;
    return MAX((gint64)v, d->a_us);
  }
  }
  return d->a_us;
}
