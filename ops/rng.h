/* The sampler's randomness and its arithmetic, shared bit for bit by the host (model/sampler.c)
 * and the CUDA sampler kernel (kernels/): the same source compiled twice, so that both
 * backends draw the same tokens for the same logits.
 *
 * Why not logf: glibc's logf is not correctly rounded (about 0.7% of the 2^24 uniforms give
 * a result one ulp away from CUDA's) and even picks an FMA variant by CPU. The Gumbel noise
 * here uses a log built only from IEEE +, -, *, / and frexp, evaluated in double with no
 * contraction into FMAs (explicit _rn intrinsics on the device), then rounded to float once.
 *
 * Every function is static inline; PA_HD marks them __host__ __device__ under nvcc. */
#ifndef PAELLA_OPS_RNG_H
#define PAELLA_OPS_RNG_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define PA_HD __host__ __device__ __forceinline__
#else
#define PA_HD static inline
#endif

#if defined(__clang__) && !defined(__CUDACC__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Rounded IEEE operations that the compiler may not fuse (the C build runs in ISO mode,
 * where GCC does not contract; nvcc would without the intrinsics). */
#ifdef __CUDA_ARCH__
#define PA_DMUL(a, b) __dmul_rn((a), (b))
#define PA_DADD(a, b) __dadd_rn((a), (b))
#define PA_DDIV(a, b) __ddiv_rn((a), (b))
#define PA_FMUL(a, b) __fmul_rn((a), (b))
#define PA_FADD(a, b) __fadd_rn((a), (b))
#define PA_FSUB(a, b) __fsub_rn((a), (b))
#define PA_FDIV(a, b) __fdiv_rn((a), (b))
#else
#define PA_DMUL(a, b) ((a) * (b))
#define PA_DADD(a, b) ((a) + (b))
#define PA_DDIV(a, b) ((a) / (b))
#define PA_FMUL(a, b) ((a) * (b))
#define PA_FADD(a, b) ((a) + (b))
#define PA_FSUB(a, b) ((a) - (b))
#define PA_FDIV(a, b) ((a) / (b))
#endif

/* Philox4x32-10 (Salmon et al. 2011): four 32-bit outputs for a 128-bit counter, 64-bit key. */
PA_HD void pa_philox4x32_hd(const uint32_t ctr[4], uint64_t key, uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* Uniforms from one 32-bit draw, exact in float: [0, 1) with 24 bits, and the open (0, 1)
 * with 23 bits plus a half step, whose largest value 1 - 2^-24 is still below 1 (with 24
 * bits the top value 1 - 2^-25 would round to 1.0f and give a Gumbel score of +inf). */
PA_HD float pa_u32_to_uniform(uint32_t x) { return (float)(x >> 8) * 0x1p-24f; }
PA_HD float pa_u32_to_uniform_open(uint32_t x) { return ((float)(x >> 9) + 0.5f) * 0x1p-23f; }

/* Natural log of a positive normal double: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
 * log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172, 11 odd terms (truncation < 1e-17). */
PA_HD double pa_log_portable(double x) {
  if (!(x > 0)) return x == 0 ? -INFINITY : NAN;
  int e;
  double m = frexp(x, &e); /* [0.5, 1) */
  if (m < 0.70710678118654752440) {
    m = PA_DMUL(m, 2.0);
    e -= 1;
  }
  double s = PA_DDIV(PA_DADD(m, -1.0), PA_DADD(m, 1.0)), s2 = PA_DMUL(s, s);
  double p = 1.0 / 21.0;
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 19.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 17.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 15.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 13.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 11.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 9.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 7.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 5.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0 / 3.0);
  p = PA_DADD(PA_DMUL(p, s2), 1.0);
  double logm = PA_DMUL(PA_DMUL(2.0, s), p);
  /* ln 2 split so that e * hi is exact for |e| < 2^11 */
  const double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
  return PA_DADD(PA_DMUL((double)e, ln2_hi), PA_DADD(PA_DMUL((double)e, ln2_lo), logm));
}

/* Gumbel noise -log(-log(u)) for u in (0, 1), rounded to float once; finite for every
 * value pa_u32_to_uniform_open returns. */
PA_HD float pa_gumbel(float u) {
  double inner = -pa_log_portable((double)u); /* > 0 */
  return (float)-pa_log_portable(inner);
}

/* The Gumbel-max score of one class: logit / temp + Gumbel(u). */
PA_HD float pa_gumbel_score(float logit, float temp, float u) {
  return PA_FSUB(PA_FDIV(logit, temp), -pa_gumbel(u));
}

/* Classifier-free guidance as upstream writes it (not a lerp): c * cfg + u * (1 - cfg). */
PA_HD float pa_cfg_combine(float cond, float uncond, float cfg) {
  return PA_FADD(PA_FMUL(cond, cfg), PA_FMUL(uncond, PA_FSUB(1.0f, cfg)));
}

/* The prior's guidance: torch.lerp(uncond, cond, cfg) = u + cfg * (c - u). */
PA_HD float pa_prior_guidance(float cond, float uncond, float cfg) {
  return PA_FADD(uncond, PA_FMUL(cfg, PA_FSUB(cond, uncond)));
}

/* One element of a Diffuzz DDPM step in double: mu = sqrt(1/a) * (x - (1-a) * eps / sqrt(1-ac)),
 * x_prev = mu + sd * z, with a = ac / acp (ac, acp: alpha_cumprod at t and t_prev). */
PA_HD float pa_diffuzz_ddpm(float x, float eps, float z, double a, double ac, double sd) {
  double mu = PA_DMUL(sqrt(PA_DDIV(1.0, a)), (double)x - PA_DDIV(PA_DMUL(1.0 - a, (double)eps), sqrt(1.0 - ac)));
  return (float)PA_DADD(mu, PA_DMUL(sd, (double)z));
}

/* One element of a DDIM step (eta 0): x0 = (x - sqrt(1-ac) eps) / sqrt(ac),
 * x_prev = sqrt(acp) x0 + sqrt(1-acp) eps. */
PA_HD float pa_diffuzz_ddim(float x, float eps, double ac, double acp) {
  double x0 = PA_DDIV((double)x - PA_DMUL(sqrt(1.0 - ac), (double)eps), sqrt(ac));
  return (float)PA_DADD(PA_DMUL(sqrt(acp), x0), PA_DMUL(sqrt(1.0 - acp), (double)eps));
}

#endif
