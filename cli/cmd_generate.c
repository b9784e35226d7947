/* `paella generate PROMPT [options]`: the whole pipeline in one process, no services. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "model/default_model.h"
#include "model/pipeline.h"
#include "ops/parse.h"

static void usage(FILE *f) {
  fprintf(f,
      "usage: paella generate PROMPT [options]\n"
      "\n"
      "Text to image with Paella v3 (ByT5-XL + CLIP-H conditioning, CLIP prior, VQGAN f4).\n"
      "With no models configured, runs the built-in default model: the same architecture at\n"
      "emoji scale, trained on Twemoji (CC-BY 4.0) at its native size of 32x32 pixels; it draws\n"
      "emoji-like pictures of short captions (\"fox face\", \"red apple\"). See docs/models.md.\n"
      "\n"
      "output:\n"
      "  -o, --output FILE       PNG to write (default paella.png); with several images\n"
      "                          FILE-<i>.png, interpolation frames FILE-<frame>.png\n"
      "      --json              print a JSON summary (seed, timings, outputs) on stdout\n"
      "  -q, --quiet             no progress bar\n"
      "image:\n"
      "  -W, --width N, -H, --height N   size in pixels, multiples of 32 (16 with the built-in\n"
      "                          model; default 256, 32 with the built-in model, or the input\n"
      "                          image's size cropped to a multiple of 32)\n"
      "      --batch N           images per run (image i uses seed + i) (default 1)\n"
      "  -s, --seed N            random seed (default 0)\n"
      "      --max-size N        largest side accepted (default 1024)\n"
      "sampler:\n"
      "      --steps N           denoising steps (default 12)\n"
      "      --cfg A[,B]         guidance scale, linear from A to B (default 8)\n"
      "      --temp A[,B]        temperature, linear from A to B (default 0.7,0.3)\n"
      "      --t-start T, --t-end T   noise levels (default 1, 0)\n"
      "      --renoise-steps N   steps re-noised toward the initial noise (default steps-1)\n"
      "      --cond-steps N      steps that apply guidance (default steps)\n"
      "      --argmax            take the most likely token instead of sampling\n"
      "      --typical MASS      v1 typical filtering of the logits (0 < MASS <= 1)\n"
      "  -n, --negative TEXT     negative prompt (the unconditional text; default empty)\n"
      "      --attn-weights B,C,I   attention re-weighting of the ByT5, CLIP text and CLIP\n"
      "                          image conditioning tokens (default 1,1,1)\n"
      "prior (CLIP text -> CLIP image embedding):\n"
      "      --prior-steps N     0 disables the prior (default 60)\n"
      "      --prior-cfg F       (default 3)\n"
      "      --prior-sampler ddpm|ddim   (default ddpm)\n"
      "editing:\n"
      "      --image FILE        input PNG: image-to-image unless --mask/--outpaint/--variation\n"
      "      --strength S        image-to-image: noise level to start from, 0..1 (default 0.5)\n"
      "      --mask FILE         inpainting: white = regenerate (same size as --image)\n"
      "      --outpaint X,Y      place --image at (X, Y) on the --width x --height canvas\n"
      "      --variation         condition on the CLIP embedding of --image\n"
      "      --interpolate TEXT  frames from PROMPT to TEXT (--frames N, default 5; --slerp)\n"
      "      --right TEXT        PROMPT on the left half, TEXT on the right half\n"
      "      --bottom TEXT       PROMPT on the top half, TEXT on the bottom half\n"
      "models:\n"
      "      --models DIR        published checkpoints (default $PAELLA_MODELS; see\n"
      "                          docs/models.md for the file names)\n"
      "      --device cpu|cuda   backend (default cpu)\n");
}

typedef struct {
  pa_gen_request req;
  const char *output, *image_path, *mask_path, *models, *device;
  int frames, max_side;
  bool json, quiet, size_given, outpaint, variation;
} gen_opts;

typedef struct {
  bool show;
  double start;
  const char *stage;
} progress_state;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* "stage [#####.....] 6/12  3.1 it/s  ETA 2s" on stderr, redrawn in place */
static bool progress(void *user, const char *stage, int step, int total) {
  progress_state *s = user;
  if (!s->show) return true;
  if (s->stage != stage) {
    s->stage = stage;
    s->start = now();
  }
  double el = now() - s->start, rate = el > 0 ? step / el : 0, eta = rate > 0 ? (total - step) / rate : 0;
  char bar[31];
  int fill = total ? step * 30 / total : 30;
  for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
  bar[30] = 0;
  fprintf(stderr, "\r%-8s [%s] %d/%d  %.1f it/s  ETA %.0fs ", stage, bar, step, total, rate, eta);
  if (step == total) fputc('\n', stderr);
  return true;
}

static int parse_pair(const char *s, float *a, float *b) {
  char *end;
  errno = 0;
  *a = strtof(s, &end);
  *b = *a;
  if (end == s || errno) return -1;
  if (*end == ',') {
    const char *t = end + 1;
    *b = strtof(t, &end);
    if (end == t || errno) return -1;
  }
  return *end ? -1 : 0;
}

enum {
  O_JSON = 256, O_BATCH, O_MAXSIZE, O_STEPS, O_CFG, O_TEMP, O_TSTART, O_TEND, O_RENOISE, O_CONDSTEPS,
  O_ARGMAX, O_TYPICAL, O_ATTNW, O_PSTEPS, O_PCFG, O_PSAMPLER, O_IMAGE, O_STRENGTH, O_MASK, O_OUTPAINT,
  O_VARIATION, O_INTERP, O_FRAMES, O_SLERP, O_RIGHT, O_BOTTOM, O_MODELS, O_DEVICE
};

static const struct option long_opts[] = {
    {"output", required_argument, 0, 'o'}, {"json", no_argument, 0, O_JSON}, {"quiet", no_argument, 0, 'q'},
    {"width", required_argument, 0, 'W'}, {"height", required_argument, 0, 'H'},
    {"batch", required_argument, 0, O_BATCH}, {"seed", required_argument, 0, 's'},
    {"max-size", required_argument, 0, O_MAXSIZE}, {"steps", required_argument, 0, O_STEPS},
    {"cfg", required_argument, 0, O_CFG}, {"temp", required_argument, 0, O_TEMP},
    {"t-start", required_argument, 0, O_TSTART}, {"t-end", required_argument, 0, O_TEND},
    {"renoise-steps", required_argument, 0, O_RENOISE}, {"cond-steps", required_argument, 0, O_CONDSTEPS},
    {"argmax", no_argument, 0, O_ARGMAX}, {"typical", required_argument, 0, O_TYPICAL},
    {"negative", required_argument, 0, 'n'}, {"attn-weights", required_argument, 0, O_ATTNW},
    {"prior-steps", required_argument, 0, O_PSTEPS}, {"prior-cfg", required_argument, 0, O_PCFG},
    {"prior-sampler", required_argument, 0, O_PSAMPLER}, {"image", required_argument, 0, O_IMAGE},
    {"strength", required_argument, 0, O_STRENGTH}, {"mask", required_argument, 0, O_MASK},
    {"outpaint", required_argument, 0, O_OUTPAINT}, {"variation", no_argument, 0, O_VARIATION},
    {"interpolate", required_argument, 0, O_INTERP}, {"frames", required_argument, 0, O_FRAMES},
    {"slerp", no_argument, 0, O_SLERP}, {"right", required_argument, 0, O_RIGHT},
    {"bottom", required_argument, 0, O_BOTTOM}, {"models", required_argument, 0, O_MODELS},
    {"device", required_argument, 0, O_DEVICE}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};

/* Returns 0 ok, 2 usage error (message printed), -1 for --help. */
static int parse_args(int argc, char **argv, gen_opts *o) {
  pa_gen_request *r = &o->req;
  int c, steps_given = 0, renoise_given = 0, cond_given = 0, w = 0, h = 0;
  float a, b;
  opterr = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:qW:H:s:n:h", long_opts, NULL)) != -1) {
    const char *v = optarg;
    int bad = 0;
    switch (c) {
      case 'o': o->output = v; break;
      case O_JSON: o->json = true; break;
      case 'q': o->quiet = true; break;
      case 'W': bad = pa_parse_int(v, 1, 65536, &w); o->size_given = true; break;
      case 'H': bad = pa_parse_int(v, 1, 65536, &h); o->size_given = true; break;
      case O_BATCH: bad = pa_parse_int(v, 1, 64, &r->batch); break;
      case 's': {
        char *end;
        errno = 0;
        r->seed = strtoull(v, &end, 10);
        bad = end == v || *end || errno || v[0] == '-';
        break;
      }
      case O_MAXSIZE: bad = pa_parse_int(v, 32, 16384, &o->max_side); break;
      case O_STEPS: bad = pa_parse_int(v, 1, 1000, &r->sampler.steps); steps_given = 1; break;
      case O_CFG: bad = parse_pair(v, &r->sampler.cfg[0], &r->sampler.cfg[1]); break;
      case O_TEMP: bad = parse_pair(v, &r->sampler.temp[0], &r->sampler.temp[1]); break;
      case O_TSTART: bad = parse_pair(v, &r->sampler.t_start, &a); break;
      case O_TEND: bad = parse_pair(v, &r->sampler.t_end, &a); break;
      case O_RENOISE: bad = pa_parse_int(v, 0, 1000, &r->sampler.renoise_steps); renoise_given = 1; break;
      case O_CONDSTEPS: bad = pa_parse_int(v, 0, 1000, &r->sampler.cond_steps); cond_given = 1; break;
      case O_ARGMAX: r->sampler.mode = PA_SAMPLE_ARGMAX; break;
      case O_TYPICAL: bad = parse_pair(v, &r->sampler.typical_mass, &a) || !(a > 0 && a <= 1); break;
      case 'n': r->negative_prompt = v; break;
      case O_ATTNW:
        bad = sscanf(v, "%f,%f,%f", &r->attn_weight[0], &r->attn_weight[1], &r->attn_weight[2]) != 3;
        break;
      case O_PSTEPS: bad = pa_parse_int(v, 0, 1000, &r->prior_steps); break;
      case O_PCFG: bad = parse_pair(v, &r->prior_cfg, &a); break;
      case O_PSAMPLER:
        bad = strcmp(v, "ddpm") && strcmp(v, "ddim");
        r->prior_ddim = !strcmp(v, "ddim");
        break;
      case O_IMAGE: o->image_path = v; break;
      case O_STRENGTH: bad = parse_pair(v, &r->strength, &a) || r->strength < 0 || r->strength > 1; break;
      case O_MASK: o->mask_path = v; break;
      case O_OUTPAINT:
        bad = sscanf(v, "%d,%d", &r->offset_x, &r->offset_y) != 2;
        o->outpaint = true;
        break;
      case O_VARIATION: o->variation = true; break;
      case O_INTERP: r->prompt2 = v; r->interpolate = true; break;
      case O_FRAMES: bad = pa_parse_int(v, 2, 1000, &o->frames); break;
      case O_SLERP: r->slerp = true; break;
      case O_RIGHT: r->prompt2 = v; r->regions = PA_REGIONS_LEFT_RIGHT; break;
      case O_BOTTOM: r->prompt2 = v; r->regions = PA_REGIONS_TOP_BOTTOM; break;
      case O_MODELS: o->models = v; break;
      case O_DEVICE: o->device = v; break;
      case 'h': return -1;
      default:
        fprintf(stderr, "paella generate: unknown or incomplete option '%s' (see --help)\n", argv[optind - 1]);
        return 2;
    }
    (void)b;
    if (bad) {
      fprintf(stderr, "paella generate: invalid value '%s' for %s\n", v ? v : "", argv[optind - 1]);
      return 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "paella generate: expected exactly one PROMPT argument (see --help)\n");
    return 2;
  }
  r->prompt = argv[optind];
  if (steps_given && !renoise_given) r->sampler.renoise_steps = r->sampler.steps - 1;
  if (steps_given && !cond_given) r->sampler.cond_steps = r->sampler.steps;
  if (w) r->width = w;
  if (h) r->height = h;
  if ((o->mask_path || o->outpaint || o->variation) && !o->image_path) {
    fprintf(stderr, "paella generate: --mask, --outpaint and --variation need --image\n");
    return 2;
  }
  if ((o->mask_path != NULL) + o->outpaint + o->variation > 1) {
    fprintf(stderr, "paella generate: choose one of --mask, --outpaint, --variation\n");
    return 2;
  }
  return 0;
}

/* Loads the input image (and mask) and sizes the request as documented in --help. */
static int load_inputs(gen_opts *o, const pa_pipeline *p, pa_image **image, pa_image **mask) {
  pa_gen_request *r = &o->req;
  int rc = PA_OK, m = pa_pipeline_size_multiple(p);
  pa_image *raw = NULL, *rawmask = NULL;
  if (!o->image_path) return PA_OK;
  PA_TRY(pa_image_read_png(o->image_path, &raw));
  if (o->mask_path) {
    PA_TRY(pa_image_read_png(o->mask_path, &rawmask));
    if (rawmask->width != raw->width || rawmask->height != raw->height) {
      rc = pa_fail(PA_ERR_INVALID, "mask %s is %dx%d but the image is %dx%d", o->mask_path, rawmask->width,
                   rawmask->height, raw->width, raw->height);
      goto fail;
    }
  }
  if (o->outpaint) { /* placed as it is; the canvas is --width x --height */
    *image = raw;
    raw = NULL;
    r->mode = PA_GEN_OUTPAINT;
    goto fail;
  }
  r->mode = o->mask_path ? PA_GEN_INPAINT : (o->variation ? PA_GEN_VARIATION : PA_GEN_IMG2IMG);
  if (!o->size_given && r->mode != PA_GEN_VARIATION) {
    r->width = raw->width / m * m;
    r->height = raw->height / m * m;
    if (r->width == 0 || r->height == 0) {
      rc = pa_fail(PA_ERR_INVALID, "input image %dx%d is smaller than %d pixels", raw->width, raw->height, m);
      goto fail;
    }
  }
  if (r->mode == PA_GEN_VARIATION) {
    *image = raw; /* CLIP preprocessing resizes and crops it */
    raw = NULL;
    goto fail;
  }
  PA_TRY(pa_image_fit(raw, r->width, r->height, image));
  if (rawmask) PA_TRY(pa_image_fit(rawmask, r->width, r->height, mask));
fail:
  pa_image_free(raw);
  pa_image_free(rawmask);
  return rc;
}

/* "fox.png" -> "fox-3.png" */
static void output_name(const char *base, int index, bool numbered, char *buf, size_t cap) {
  if (!numbered) {
    snprintf(buf, cap, "%s", base);
    return;
  }
  const char *dot = strrchr(base, '.'), *slash = strrchr(base, '/');
  if (!dot || (slash && dot < slash)) dot = base + strlen(base);
  snprintf(buf, cap, "%.*s-%d%s", (int)(dot - base), base, index, dot);
}

/* t: seconds in the text encoders, the prior, denoising and decoding (all runs summed) */
static void print_json(const gen_opts *o, const pa_pipeline *p, json_t *outputs, double t_load, const double *t) {
  const pa_gen_request *r = &o->req;
  json_t *j = json_pack("{s:s, s:I, s:i, s:i, s:i, s:i, s:b, s:o, s:{s:f, s:f, s:f, s:f, s:f}}", "prompt",
                        r->prompt, "seed", (json_int_t)r->seed, "width", r->width, "height", r->height, "batch",
                        r->batch, "steps", r->sampler.steps, "untrained_model", pa_pipeline_untrained(p), "outputs",
                        json_incref(outputs), "seconds", "load", t_load, "encode", t[0], "prior", t[1], "denoise",
                        t[2], "decode", t[3]);
  char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
  if (s) printf("%s\n", s);
  free(s);
  json_decref(j);
}

/* Runs every frame (or the one image) and keeps the images in memory, so that nothing is
 * written unless the whole run succeeds. */
static int run_all(gen_opts *o, pa_pipeline *p, pa_gen_result *results, int n_runs, double *t) {
  int rc = PA_OK;
  for (int f = 0; f < n_runs; f++) {
    pa_gen_request r = o->req;
    if (r.interpolate) r.interp_t = (float)f / (float)(n_runs - 1);
    PA_TRY(pa_generate(p, &r, &results[f]));
    t[0] += results[f].seconds_encode;
    t[1] += results[f].seconds_prior;
    t[2] += results[f].seconds_denoise;
    t[3] += results[f].seconds_decode;
  }
fail:
  return rc;
}

static int write_all(const gen_opts *o, pa_gen_result *results, int n_runs, json_t *outputs) {
  int total = 0, rc = PA_OK, written = 0;
  for (int f = 0; f < n_runs; f++) total += results[f].n;
  char **names = calloc((size_t)total, sizeof *names);
  if (!names) return pa_fail(PA_ERR_NOMEM, "out of memory");
  for (int f = 0, k = 0; f < n_runs; f++)
    for (int b = 0; b < results[f].n; b++, k++) {
      char buf[4096];
      output_name(o->output, k, total > 1, buf, sizeof buf);
      if (!(names[k] = strdup(buf))) {
        rc = pa_fail(PA_ERR_NOMEM, "out of memory");
        goto fail;
      }
      PA_TRY(pa_image_write_png(names[k], results[f].images[b]));
      written = k + 1;
      json_array_append_new(outputs, json_string(names[k]));
    }
fail:
  if (rc)
    for (int k = 0; k < written; k++) unlink(names[k]); /* no partial output */
  for (int k = 0; k < total; k++) free(names[k]);
  free(names);
  return rc;
}

int cmd_generate(int argc, char **argv) {
  gen_opts o = {.req = pa_gen_request_default(), .output = "paella.png", .frames = 5, .device = "cpu"};
  int rc = parse_args(argc, argv, &o);
  if (rc == -1) {
    usage(stdout);
    return 0;
  }
  if (rc) return rc;
  if (!o.models) o.models = getenv("PAELLA_MODELS");
  if (!o.size_given && !(o.models && o.models[0])) /* the built-in model draws at its training size */
    o.req.width = o.req.height = PA_DEFAULT_NATIVE_SIZE;
  pa_backend *be = pa_backend_by_name(o.device);
  if (!be) {
    fprintf(stderr, "paella generate: %s\n", pa_errmsg());
    return 2;
  }
  progress_state ps = {.show = !o.quiet && !o.json && isatty(2)};
  o.req.progress = progress;
  o.req.progress_user = &ps;
  pa_pipeline *p = NULL;
  pa_image *image = NULL, *mask = NULL;
  int n_runs = o.req.interpolate ? o.frames : 1;
  pa_gen_result *results = calloc((size_t)n_runs, sizeof *results);
  json_t *outputs = json_array();
  double t_load = now(), t[4] = {0};
  pa_pipeline_options po = {.models_dir = o.models, .be = be, .max_side = o.max_side};
  if (!results || !outputs) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  PA_TRY(pa_pipeline_open(&po, &p));
  t_load = now() - t_load;
  PA_TRY(load_inputs(&o, p, &image, &mask));
  o.req.image = image;
  o.req.mask = mask;
  PA_TRY(pa_gen_request_check(p, &o.req)); /* fail before any compute */
  PA_TRY(run_all(&o, p, results, n_runs, t));
  PA_TRY(write_all(&o, results, n_runs, outputs));
  if (o.json)
    print_json(&o, p, outputs, t_load, t);
  else if (!o.quiet)
    for (size_t i = 0; i < json_array_size(outputs); i++)
      fprintf(stderr, "wrote %s\n", json_string_value(json_array_get(outputs, i)));
fail:
  for (int f = 0; results && f < n_runs; f++) pa_gen_result_free(&results[f]);
  free(results);
  json_decref(outputs);
  pa_image_free(image);
  pa_image_free(mask);
  pa_pipeline_free(p);
  if (rc) {
    if (ps.show) fputc('\n', stderr);
    fprintf(stderr, "paella generate: %s\n", pa_errmsg());
    return 1;
  }
  return 0;
}
