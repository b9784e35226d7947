/* `paella generate PROMPT [options]`: the whole pipeline in one process, no services.
 * The options fill a wire-protocol job (proto/), so the defaults, limits and the mapping to
 * the pipeline are the API's own: the same settings and seed give the same image here and
 * through the scheduler and a worker. Exit status: 0 ok, 1 runtime failure, 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/job_opts.h"
#include "cli/opts.h"
#include "cli/output.h"
#include "model/default_model.h"
#include "model/pipeline.h"
#include "ops/threads.h"
#include "proto/proto.h"
#include "worker/job_map.h"

#define CMD "paella generate"
#define STR_(x) #x
#define STR(x) STR_(x)

static void usage(FILE *f) {
  fprintf(f,
      "usage: paella generate PROMPT [options]\n"
      "\n"
      "Text to image with Paella v3 (ByT5-XL + CLIP-H conditioning, CLIP prior, VQGAN f4).\n"
      "With no models configured, runs the built-in default model: the same architecture at\n"
      "emoji scale, trained briefly on Twemoji (CC-BY 4.0) at its native size of 32x32 pixels.\n"
      "It is undertrained: it draws the emoji style (white ground, round faces, a caption's\n"
      "colours) but rarely the object itself. See docs/models.md.\n"
      "Defaults and limits are the HTTP API's (docs/protocol.md): the same settings and seed\n"
      "give the same image here and through a scheduler and worker.\n"
      "Exit status: 0 done, 1 failed while running, 2 bad command line.\n"
      "\n"
      "output:\n"
      "  -o, --output FILE       image to write (default paella.png); - writes it to stdout.\n"
      "                          Several images are FILE-00.png, FILE-01.png ... (numbered\n"
      "                          from 0, zero-padded, the extension kept). An existing FILE\n"
      "                          must be a regular file; devices, FIFOs, directories are refused\n"
      "      --format png|jpeg|webp   (default: from FILE's extension, else png)\n"
      "      --quality N         JPEG and WebP quality, " STR(PW_QUALITY_MIN) ".." STR(PW_QUALITY_MAX)
      " (default " STR(PW_DEFAULT_OUTPUT_QUALITY) ")\n"
      "                          Every image embeds its generation parameters (PNG iTXt\n"
      "                          'parameters', JPEG comment, WebP XMP) as a job JSON\n"
      "      --preview FILE      while denoising, rewrite FILE (atomically, PNG) with a small\n"
      "                          preview of image 0 (longer side " STR(PW_PREVIEW_MAX_SIDE) " px), at most one per "
      STR(PW_PREVIEW_MIN_INTERVAL_MS) " ms\n"
      "      --preview-every N   a preview every N steps, 0.." STR(PW_STEPS_MAX) " (default 1 with --preview, else 0)\n"
      "      --json              print a JSON summary (seed, timings, outputs) on stdout\n"
      "  -q, --quiet             no progress bar\n"
      "image:\n"
      "  -W, --width N, -H, --height N   size in pixels, multiples of " STR(PW_SIZE_MULTIPLE) ", "
      STR(PW_SIZE_MIN) ".." STR(PW_SIZE_MAX) "\n"
      "                          (default " STR(PW_DEFAULT_SIZE) "; 32, its native size, with the built-in model;\n"
      "                          or the input image's size cropped to a multiple of 32)\n"
      "      --batch N           images per run, 1.." STR(PW_BATCH_MAX) " (image i uses seed + i) (default 1)\n"
      "  -s, --seed N            random seed, 0..2^53-1 (default 0)\n"
      "      --max-size N        largest side accepted (default 1024)\n"
      "sampler:\n"
      "      --steps N           denoising steps, 1.." STR(PW_STEPS_MAX) " (default " STR(PW_DEFAULT_STEPS) ")\n"
      "      --cfg A[,B]         guidance scale, linear from A to B, " STR(PW_CFG_MIN) ".." STR(PW_CFG_MAX)
      " (default " STR(PW_DEFAULT_CFG) ")\n"
      "      --temp A[,B]        temperature, linear from A to B, " STR(PW_TEMP_MIN) ".." STR(PW_TEMP_MAX)
      " (default " STR(PW_DEFAULT_TEMP_START) "," STR(PW_DEFAULT_TEMP_END) ")\n"
      "      --t-start T, --t-end T   noise levels, 0..1, t-end < t-start (default 1, 0)\n"
      "      --renoise-steps N   steps re-noised toward the initial noise (default steps-1)\n"
      "      --cond-steps N      steps that apply guidance (default steps)\n"
      "      --argmax            take the most likely token instead of sampling\n"
      "      --typical MASS      v1 typical filtering of the logits (0 < MASS <= 1)\n"
      "  -n, --negative TEXT     negative prompt (the unconditional text; default empty)\n"
      "      --attn-weights B,C,I   attention re-weighting of the ByT5, CLIP text and CLIP\n"
      "                          image conditioning tokens (default 1,1,1)\n"
      "prior (CLIP text -> CLIP image embedding):\n"
      "      --prior-steps N     1.." STR(PW_PRIOR_STEPS_MAX) "; 0 disables the prior (default "
      STR(PW_DEFAULT_PRIOR_STEPS) ")\n"
      "      --prior-cfg F       0.." STR(PW_PRIOR_GUIDANCE_MAX) " (default " STR(PW_DEFAULT_PRIOR_GUIDANCE) ")\n"
      "      --prior-sampler ddpm|ddim   (default ddpm)\n"
      "editing:\n"
      "      --image FILE        input PNG, JPEG or WebP: image-to-image unless\n"
      "                          --mask/--outpaint/--variation\n"
      "      --strength S        image-to-image: noise level to start from, 0..1 (default "
      STR(PW_DEFAULT_T_START_IMG2IMG) ")\n"
      "      --mask FILE         inpainting: white = regenerate (same size as --image)\n"
      "      --outpaint X,Y      place --image at (X, Y) on the --width x --height canvas\n"
      "      --variation         condition on the CLIP embedding of --image\n"
      "      --interpolate TEXT  frames from PROMPT to TEXT (--frames N, 2.." STR(PW_FRAMES_MAX) ", default "
      STR(PW_DEFAULT_FRAMES) ";\n"
      "                          --slerp (default) or --lerp)\n"
      "      --right TEXT        PROMPT on the left half, TEXT on the right half\n"
      "      --bottom TEXT       PROMPT on the top half, TEXT on the bottom half\n"
      "models:\n"
      "      --models DIR        published checkpoints (default $PAELLA_MODELS; see\n"
      "                          docs/models.md for the file names)\n"
      "      --device cpu|cuda   backend (default cpu)\n"
      "      --threads N         CPU threads, 1.." STR(PA_THREADS_MAX) " (default $OMP_NUM_THREADS, else one per\n"
      "                          core). Speed only: any N gives the same bytes (docs/determinism.md)\n");
}

/* The job holds every setting the API has; the rest are this command's own. */
typedef struct {
  cli_job cj; /* the API's settings */
  const char *output, *models, *device, *preview;
  int max_side;
  int threads; /* 0: OpenMP's default */
  bool json, quiet;
  /* settings the API does not have */
  bool no_prior;
  int64_t cond_steps; /* -1: steps */
  double typical_mass;
  float attn_weight[3];
  pa_regions regions;
  const char *region_prompt;
} gen_opts;

typedef struct {
  bool show;
  double start;
  const char *stage;
  const char *preview; /* --preview FILE */
  int previews;        /* written so far */
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

/* --preview: each preview replaces FILE through a temporary file and a rename. A failed
 * write is reported once per preview and does not stop the run. */
static void write_preview(void *user, int step, int total, const pa_image *img) {
  (void)total;
  progress_state *s = user;
  pa_image_encoding enc = {PA_IMAGE_PNG, 0, NULL};
  void *buf = NULL;
  size_t len = 0;
  if (pa_image_encode(img, &enc, &buf, &len) == PA_OK && cli_output_write(s->preview, buf, len) == PA_OK) s->previews++;
  else fprintf(stderr, "\n" CMD ": preview at step %d: %s\n", step, pa_errmsg());
  free(buf);
}

enum { O_JSON = 256, O_PREVIEW, O_MAXSIZE, O_CONDSTEPS, O_TYPICAL, O_ATTNW, O_PSTEPS, O_RIGHT, O_BOTTOM, O_MODELS,
       O_DEVICE, O_THREADS };

/* This command's own options; the job options (cli/job_opts.h) are added to them. */
static const struct option own_opts[] = {
    {"output", required_argument, 0, 'o'}, {"json", no_argument, 0, O_JSON}, {"quiet", no_argument, 0, 'q'},
    {"preview", required_argument, 0, O_PREVIEW},
    {"max-size", required_argument, 0, O_MAXSIZE}, {"cond-steps", required_argument, 0, O_CONDSTEPS},
    {"typical", required_argument, 0, O_TYPICAL}, {"attn-weights", required_argument, 0, O_ATTNW},
    {"prior-steps", required_argument, 0, O_PSTEPS}, /* before the job's: 0 turns the prior off here */
    {"right", required_argument, 0, O_RIGHT}, {"bottom", required_argument, 0, O_BOTTOM},
    {"models", required_argument, 0, O_MODELS}, {"device", required_argument, 0, O_DEVICE},
    {"threads", required_argument, 0, O_THREADS}, {"help", no_argument, 0, 'h'}};

/* One option of this command's own; 0, CLI_EXIT_USAGE, or -1 when it is a job option. */
static int own_option(gen_opts *o, int c, const char *opt, const char *v) {
  int64_t x;
  int n = 0, rc;
  switch (c) {
    case 'o': o->output = v; return 0;
    case O_JSON: o->json = true; return 0;
    case O_PREVIEW: o->preview = v; return 0;
    case 'q': o->quiet = true; return 0;
    case O_MAXSIZE: rc = cli_opt_int(CMD, opt, v, PW_SIZE_MIN, PW_SIZE_MAX, &x); o->max_side = (int)x; return rc;
    case O_CONDSTEPS: return cli_opt_int(CMD, opt, v, 0, PW_STEPS_MAX, &o->cond_steps);
    case O_TYPICAL:
      if ((rc = cli_opt_num(CMD, opt, v, 0, 1, &o->typical_mass))) return rc;
      return o->typical_mass > 0 ? 0 : cli_usage_error(CMD, opt, "%s is out of range (0, 1]", v);
    case O_ATTNW:
      if (sscanf(v, "%f,%f,%f%n", &o->attn_weight[0], &o->attn_weight[1], &o->attn_weight[2], &n) != 3 || v[n])
        return cli_usage_error(CMD, opt, "'%s': expected three numbers B,C,I", v);
      return 0;
    case O_PSTEPS:
      if ((rc = cli_opt_int(CMD, opt, v, 0, PW_PRIOR_STEPS_MAX, &x))) return rc;
      o->no_prior = x == 0;
      if (x) o->cj.job.prior.steps = x;
      return 0;
    case O_RIGHT: o->region_prompt = v; o->regions = PA_REGIONS_LEFT_RIGHT; return 0;
    case O_BOTTOM: o->region_prompt = v; o->regions = PA_REGIONS_TOP_BOTTOM; return 0;
    case O_MODELS: o->models = v; return 0;
    case O_DEVICE: o->device = v; return 0;
    case O_THREADS: rc = cli_opt_int(CMD, opt, v, 1, PA_THREADS_MAX, &x); o->threads = (int)x; return rc;
  }
  return -1;
}

static int own_option_cb(void *user, int code, const char *opt, const char *value) {
  return own_option(user, code, opt, value);
}

static int total_images(const gen_opts *o) {
  return (int)(o->cj.job.kind == PW_KIND_INTERPOLATE ? o->cj.job.interpolate.frames : o->cj.job.batch);
}

/* Returns 0 ok, 1 or 2 (message printed), -1 for --help. */
static int parse_args(int argc, char **argv, gen_opts *o) {
  int rc = cli_job_parse(CMD, argc, argv, "o:qh", own_opts, (int)(sizeof own_opts / sizeof own_opts[0]), own_option_cb,
                         o, &o->cj);
  if (rc) return rc;
  if (optind != argc - 1) return cli_usage_error(CMD, NULL, "expected exactly one PROMPT argument (see --help)");
  pw_job *j = &o->cj.job;
  if (!(j->prompt = strdup(argv[optind]))) return cli_usage_error(CMD, NULL, "out of memory");
  if (o->regions && j->has_interpolate) return cli_usage_error(CMD, NULL, "--right/--bottom and --interpolate do not combine");
  if ((rc = cli_job_finish(CMD, &o->cj, o->output))) return rc;
  if (!strcmp(o->output, "-") && total_images(o) > 1)
    return cli_usage_error(CMD, "-o", "- writes one image; this run makes %d", total_images(o));
  if (!strcmp(o->output, "-") && o->json) return cli_usage_error(CMD, "--json", "cannot share stdout with -o -");
  if (o->preview && !strcmp(o->preview, "-")) return cli_usage_error(CMD, "--preview", "needs a file, not -");
  if (o->preview && !j->preview_every) j->preview_every = 1;
  return 0;
}

/* Loads the input image (and mask) and sizes the job as documented in --help. */
static int load_inputs(gen_opts *o, const pa_pipeline *p, pa_image **image, pa_image **mask) {
  pw_job *j = &o->cj.job;
  int rc = PA_OK, m = pa_pipeline_size_multiple(p);
  pa_image *raw = NULL, *rawmask = NULL;
  if (!j->image.present) return PA_OK;
  if ((rc = pa_image_decode(j->image.data, j->image.len, &raw))) return pa_fail_context(rc, "%s: ", o->cj.image_path);
  if (j->mask.present && (rc = pa_image_decode(j->mask.data, j->mask.len, &rawmask))) {
    pa_fail_context(rc, "%s: ", o->cj.mask_path);
    goto fail;
  }
  if (rawmask && (rawmask->width != raw->width || rawmask->height != raw->height)) {
    rc = pa_fail(PA_ERR_INVALID, "mask %s is %dx%d but the image is %dx%d", o->cj.mask_path, rawmask->width,
                 rawmask->height, raw->width, raw->height);
    goto fail;
  }
  if (!o->cj.size_given && j->kind != PW_KIND_OUTPAINT && j->kind != PW_KIND_VARIATION) {
    j->width = raw->width / m * m;
    j->height = raw->height / m * m;
    if (j->width == 0 || j->height == 0) {
      rc = pa_fail(PA_ERR_INVALID, "input image %dx%d is smaller than %d pixels", raw->width, raw->height, m);
      goto fail;
    }
  }
  if (j->kind == PW_KIND_OUTPAINT || j->kind == PW_KIND_VARIATION) {
    *image = raw; /* outpaint places it as it is; CLIP preprocessing crops a variation's */
    raw = NULL;
    goto fail;
  }
  PA_TRY(pa_image_fit(raw, (int)j->width, (int)j->height, image));
  if (rawmask) PA_TRY(pa_image_fit(rawmask, (int)j->width, (int)j->height, mask));
fail:
  pa_image_free(raw);
  pa_image_free(rawmask);
  return rc;
}

/* The pipeline request of run `run`: the job's mapping (the worker's own), then the
 * settings only this command has. */
static void make_request(const gen_opts *o, int run, pa_gen_request *r) {
  pa_request_from_job(&o->cj.job, run, (uint64_t)o->cj.job.seed, r);
  if (o->cond_steps >= 0) r->sampler.cond_steps = (int)o->cond_steps;
  r->sampler.typical_mass = (float)o->typical_mass;
  memcpy(r->attn_weight, o->attn_weight, sizeof r->attn_weight);
  if (o->regions) {
    r->regions = o->regions;
    r->prompt2 = o->region_prompt;
  }
  if (o->no_prior) r->prior_steps = 0;
}

/* The job JSON of image `index` plus this command's own settings when they are not the
 * defaults, so that the embedded parameters regenerate the image. malloc'd. */
static char *image_params(const gen_opts *o, const pa_pipeline *p, int index) {
  char *base = pa_job_params_json(&o->cj.job, (uint64_t)o->cj.job.seed, index, pa_pipeline_checksums(p));
  json_t *j = base ? json_loads(base, 0, NULL) : NULL;
  free(base);
  if (!j) return NULL;
  if (o->cond_steps >= 0) json_object_set_new(j, "cond_steps", json_integer(o->cond_steps));
  if (o->typical_mass > 0) json_object_set_new(j, "typical_mass", json_real(o->typical_mass));
  if (o->attn_weight[0] != 1 || o->attn_weight[1] != 1 || o->attn_weight[2] != 1)
    json_object_set_new(j, "attn_weights", json_pack("[f,f,f]", o->attn_weight[0], o->attn_weight[1], o->attn_weight[2]));
  if (o->regions)
    json_object_set_new(j, "regions", json_pack("{s:s,s:s}", "layout", o->regions == PA_REGIONS_LEFT_RIGHT ? "left_right" : "top_bottom",
                                                 "prompt_to", o->region_prompt));
  if (o->no_prior) json_object_set_new(j, "prior", json_null());
  char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
  json_decref(j);
  return s;
}

/* t: seconds in the text encoders, the prior, denoising and decoding (all runs summed) */
static void print_json(const gen_opts *o, const pa_pipeline *p, json_t *outputs, int previews, double t_load,
                       const double *t) {
  const pw_job *r = &o->cj.job;
  json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:s, s:b, s:o, s:{s:f, s:f, s:f, s:f, s:f}}", "prompt",
                        r->prompt, "seed", (json_int_t)r->seed, "width", (json_int_t)r->width, "height",
                        (json_int_t)r->height, "batch", (json_int_t)r->batch, "steps", (json_int_t)r->steps,
                        "format", pw_output_format_name(r->output_format), "untrained_model", pa_pipeline_untrained(p),
                        "outputs", json_incref(outputs), "seconds", "load", t_load, "encode", t[0], "prior", t[1],
                        "denoise", t[2], "decode", t[3]);
  if (j && o->preview) json_object_set_new(j, "previews", json_integer(previews));
  if (j) json_object_set_new(j, "threads", json_integer(pa_threads_get()));
  char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
  if (s) printf("%s\n", s);
  free(s);
  json_decref(j);
}

/* Runs every frame (or the one image) and keeps the images in memory, so that nothing is
 * written unless the whole run succeeds. */
static int run_all(gen_opts *o, pa_pipeline *p, const pa_image *image, const pa_image *mask, progress_state *ps,
                   pa_gen_result *results, int n_runs, double *t) {
  int rc = PA_OK;
  for (int f = 0; f < n_runs; f++) {
    pa_gen_request r;
    make_request(o, f, &r);
    r.image = image;
    r.mask = mask;
    r.progress = progress;
    r.progress_user = ps;
    if (o->preview) {
      r.preview = write_preview;
      r.preview_user = ps;
    }
    PA_TRY(pa_generate(p, &r, &results[f]));
    t[0] += results[f].seconds_encode;
    t[1] += results[f].seconds_prior;
    t[2] += results[f].seconds_denoise;
    t[3] += results[f].seconds_decode;
  }
fail:
  return rc;
}

/* Every output name, checked before any compute: a refused -o costs nothing. */
static int check_outputs(const gen_opts *o) {
  int total = total_images(o), rc = PA_OK;
  char name[4200];
  for (int k = 0; k < total && !rc; k++) {
    cli_output_name(o->output, pa_image_format_extension(pa_image_format_of_job(&o->cj.job)), k, total, name, sizeof name);
    rc = cli_output_check(name);
  }
  return rc;
}

static int encode_and_write(const gen_opts *o, const pa_pipeline *p, const pa_image *img, int k, const char *name) {
  char *params = image_params(o, p, k);
  pa_image_encoding enc = {pa_image_format_of_job(&o->cj.job), (int)o->cj.job.output_quality, params};
  void *buf = NULL;
  size_t len = 0;
  int rc = params ? pa_image_encode(img, &enc, &buf, &len) : pa_fail(PA_ERR_NOMEM, "out of memory");
  if (rc == PA_OK) rc = cli_output_write(name, buf, len);
  free(buf);
  free(params);
  return rc;
}

static int write_all(const gen_opts *o, const pa_pipeline *p, pa_gen_result *results, int n_runs, json_t *outputs) {
  int total = 0, rc = PA_OK, written = 0;
  for (int f = 0; f < n_runs; f++) total += results[f].n;
  char **names = calloc((size_t)total, sizeof *names);
  if (!names) return pa_fail(PA_ERR_NOMEM, "out of memory");
  for (int f = 0, k = 0; f < n_runs; f++)
    for (int b = 0; b < results[f].n; b++, k++) {
      char buf[4200];
      cli_output_name(o->output, pa_image_format_extension(pa_image_format_of_job(&o->cj.job)), k, total, buf, sizeof buf);
      if (!(names[k] = strdup(buf))) {
        rc = pa_fail(PA_ERR_NOMEM, "out of memory");
        goto fail;
      }
      PA_TRY(encode_and_write(o, p, results[f].images[b], k, names[k]));
      written = k + 1;
      json_array_append_new(outputs, json_string(names[k]));
    }
fail:
  if (rc)
    for (int k = 0; k < written; k++)
      if (strcmp(names[k], "-")) unlink(names[k]); /* no partial output */
  for (int k = 0; k < total; k++) free(names[k]);
  free(names);
  return rc;
}

static void opts_init(gen_opts *o) {
  memset(o, 0, sizeof *o);
  cli_job_init(&o->cj);
  o->output = "paella.png";
  o->device = "cpu";
  o->cond_steps = -1;
  o->attn_weight[0] = o->attn_weight[1] = o->attn_weight[2] = 1;
}

/* After load_inputs may have taken the size from the input image: the API's rules, then
 * the pipeline's, before any compute. */
static int revalidate(gen_opts *o, const pa_pipeline *p, const pa_image *image, const pa_image *mask) {
  pw_error err;
  pa_gen_request r;
  if (pw_job_validate(&o->cj.job, &err)) return pa_fail(PA_ERR_INVALID, "%s: %s", cli_job_option_of_field(err.field), err.message);
  make_request(o, 0, &r);
  r.image = image;
  r.mask = mask;
  return pa_gen_request_check(p, &r);
}

int cmd_generate(int argc, char **argv) {
  gen_opts o;
  opts_init(&o);
  int rc = parse_args(argc, argv, &o);
  if (rc == -1) usage(stdout);
  if (rc) {
    cli_job_free(&o.cj);
    return rc == -1 ? CLI_EXIT_OK : rc;
  }
  if (!o.models) o.models = getenv("PAELLA_MODELS");
  if (!o.cj.size_given && !(o.models && o.models[0])) /* the built-in model draws at its training size */
    o.cj.job.width = o.cj.job.height = PA_DEFAULT_NATIVE_SIZE;
  if (o.threads && pa_threads_set(o.threads)) { /* range checked above: cannot fail */
    cli_job_free(&o.cj);
    return cli_usage_error(CMD, "--threads", "%s", pa_errmsg());
  }
  pa_backend *be = pa_backend_by_name(o.device);
  if (!be) {
    cli_job_free(&o.cj);
    return cli_usage_error(CMD, "--device", "%s", pa_errmsg());
  }
  progress_state ps = {.show = !o.quiet && !o.json && isatty(2), .preview = o.preview};
  pa_pipeline *p = NULL;
  pa_image *image = NULL, *mask = NULL;
  int n_runs = o.cj.job.kind == PW_KIND_INTERPOLATE ? total_images(&o) : 1;
  pa_gen_result *results = calloc((size_t)n_runs, sizeof *results);
  json_t *outputs = json_array();
  double t_load = now(), t[4] = {0};
  pa_pipeline_options po = {.models_dir = o.models, .be = be, .max_side = o.max_side};
  if (!results || !outputs) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  PA_TRY(check_outputs(&o));
  if (o.preview) PA_TRY(cli_output_check(o.preview));
  PA_TRY(pa_pipeline_open(&po, &p));
  t_load = now() - t_load;
  PA_TRY(load_inputs(&o, p, &image, &mask));
  PA_TRY(revalidate(&o, p, image, mask));
  PA_TRY(run_all(&o, p, image, mask, &ps, results, n_runs, t));
  PA_TRY(write_all(&o, p, results, n_runs, outputs));
  if (o.json)
    print_json(&o, p, outputs, ps.previews, t_load, t);
  else if (!o.quiet)
    for (size_t i = 0; i < json_array_size(outputs); i++)
      if (strcmp(json_string_value(json_array_get(outputs, i)), "-"))
        fprintf(stderr, "wrote %s\n", json_string_value(json_array_get(outputs, i)));
fail:
  for (int f = 0; results && f < n_runs; f++) pa_gen_result_free(&results[f]);
  free(results);
  json_decref(outputs);
  pa_image_free(image);
  pa_image_free(mask);
  pa_pipeline_free(p);
  cli_job_free(&o.cj);
  if (rc) {
    if (ps.show) fputc('\n', stderr);
    fprintf(stderr, CMD ": %s\n", pa_errmsg());
    return CLI_EXIT_FAILURE;
  }
  return CLI_EXIT_OK;
}
