#include "cli/job_opts.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/opts.h"
#include "model/image.h"

enum {
  J_BATCH = CLI_JOB_OPT_BASE, J_STEPS, J_RENOISE, J_CFG, J_TEMP, J_TSTART, J_TEND, J_ARGMAX, J_PSTEPS, J_PCFG,
  J_PSAMPLER, J_IMAGE, J_MASK, J_STRENGTH, J_OUTPAINT, J_VARIATION, J_INTERP, J_FRAMES, J_SLERP, J_LERP, J_FORMAT,
  J_QUALITY, J_PREVIEW_EVERY
};

const struct option cli_job_opts[] = {
    {"width", required_argument, 0, 'W'}, {"height", required_argument, 0, 'H'},
    {"seed", required_argument, 0, 's'}, {"negative", required_argument, 0, 'n'},
    {"batch", required_argument, 0, J_BATCH}, {"steps", required_argument, 0, J_STEPS},
    {"renoise-steps", required_argument, 0, J_RENOISE}, {"cfg", required_argument, 0, J_CFG},
    {"temp", required_argument, 0, J_TEMP}, {"t-start", required_argument, 0, J_TSTART},
    {"t-end", required_argument, 0, J_TEND}, {"argmax", no_argument, 0, J_ARGMAX},
    {"prior-steps", required_argument, 0, J_PSTEPS}, {"prior-cfg", required_argument, 0, J_PCFG},
    {"prior-sampler", required_argument, 0, J_PSAMPLER}, {"image", required_argument, 0, J_IMAGE},
    {"mask", required_argument, 0, J_MASK}, {"strength", required_argument, 0, J_STRENGTH},
    {"outpaint", required_argument, 0, J_OUTPAINT}, {"variation", no_argument, 0, J_VARIATION},
    {"interpolate", required_argument, 0, J_INTERP}, {"frames", required_argument, 0, J_FRAMES},
    {"slerp", no_argument, 0, J_SLERP}, {"lerp", no_argument, 0, J_LERP},
    {"format", required_argument, 0, J_FORMAT}, {"quality", required_argument, 0, J_QUALITY},
    {"preview-every", required_argument, 0, J_PREVIEW_EVERY}};
const int cli_job_n_opts = sizeof cli_job_opts / sizeof cli_job_opts[0];

void cli_job_init(cli_job *c) {
  memset(c, 0, sizeof *c);
  pw_job_init(&c->job);
  c->job.id = strdup("cli");
  c->job.has_seed = 1; /* seed 0 unless given: a run is reproducible by default */
}

void cli_job_free(cli_job *c) { pw_job_free(&c->job); }

const char *cli_job_option_name(char **argv, int optind_now, const char *optarg_now) {
  static char name[64];
  const char *opt = argv[optind_now - 1];
  if (optarg_now && opt == optarg_now) return argv[optind_now - 2]; /* "--steps 5" */
  if (optarg_now && !strncmp(opt, "--", 2) && strchr(opt, '=')) { /* "--steps=5" */
    snprintf(name, sizeof name, "%.*s", (int)(strchr(opt, '=') - opt), opt);
    return name;
  }
  if (optarg_now && opt[0] == '-' && opt[1] != '-') { /* "-s5" */
    snprintf(name, sizeof name, "%.2s", opt);
    return name;
  }
  return opt;
}

int cli_job_parse(const char *cmd, int argc, char **argv, const char *own_short, const struct option *own, int n_own,
                  cli_own_option_fn fn, void *user, cli_job *cj) {
  struct option all[64] = {{0}};
  char shorts[64];
  int c, rc;
  if (n_own + cli_job_n_opts >= (int)(sizeof all / sizeof all[0])) return cli_usage_error(cmd, NULL, "too many options");
  memcpy(all, own, (size_t)n_own * sizeof *own);
  memcpy(all + n_own, cli_job_opts, (size_t)cli_job_n_opts * sizeof *cli_job_opts);
  snprintf(shorts, sizeof shorts, "%s" CLI_JOB_SHORT_OPTS, own_short);
  opterr = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, shorts, all, NULL)) != -1) {
    if (c == 'h') return CLI_WANTS_HELP;
    if (c == '?' || c == ':') return cli_usage_error(cmd, argv[optind - 1], "unknown option or missing value (see --help)");
    const char *opt = c == 1 ? NULL : cli_job_option_name(argv, optind, optarg);
    if ((rc = fn(user, c, opt, optarg)) == -1) rc = cli_job_option(cmd, cj, c, opt, optarg);
    if (rc) return rc;
  }
  return 0;
}

static int set_text(const char *cmd, char **dst, const char *v) {
  free(*dst);
  *dst = strdup(v);
  return *dst ? 0 : cli_usage_error(cmd, NULL, "out of memory");
}

static int set_name(const char *cmd, const char *opt, const char *v, const char *const *names, int n, void *out) {
  int idx = 0, rc = cli_opt_name(cmd, opt, v, names, n, &idx);
  if (!rc) *(int *)out = idx; /* the proto's enums are ints */
  return rc;
}

static int geometry_option(const char *cmd, cli_job *c, int code, const char *opt, const char *v) {
  pw_job *j = &c->job;
  int n = 0;
  switch (code) {
    case 'W': c->size_given = true; return cli_opt_int(cmd, opt, v, PW_SIZE_MIN, PW_SIZE_MAX, &j->width);
    case 'H': c->size_given = true; return cli_opt_int(cmd, opt, v, PW_SIZE_MIN, PW_SIZE_MAX, &j->height);
    case J_BATCH: return cli_opt_int(cmd, opt, v, 1, PW_BATCH_MAX, &j->batch);
    case 's': j->has_seed = 1; return cli_opt_int(cmd, opt, v, 0, PW_SEED_MAX, &j->seed);
    case J_IMAGE: c->image_path = v; return 0;
    case J_MASK: c->mask_path = v; return 0;
    case J_STRENGTH: c->strength_given = true; return cli_opt_num(cmd, opt, v, 0, 1, &c->strength);
    case J_VARIATION: c->variation = true; return 0;
    case J_OUTPAINT:
      j->has_outpaint = 1;
      if (sscanf(v, "%" SCNd64 ",%" SCNd64 "%n", &j->outpaint.offset_x, &j->outpaint.offset_y, &n) != 2 || v[n])
        return cli_usage_error(cmd, opt, "'%s': expected X,Y in pixels", v);
      return 0;
    case J_INTERP: j->has_interpolate = 1; return set_text(cmd, &j->interpolate.prompt_to, v);
    case J_FRAMES: return cli_opt_int(cmd, opt, v, PW_FRAMES_MIN, PW_FRAMES_MAX, &j->interpolate.frames);
    case J_SLERP: j->interpolate.mode = PW_INTERP_SLERP; return 0;
    case J_LERP: j->interpolate.mode = PW_INTERP_LERP; return 0;
    case J_FORMAT:
      c->format_given = true;
      return set_name(cmd, opt, !strcmp(v, "jpg") ? "jpeg" : v, (const char *const[]){"png", "jpeg", "webp"},
                      PW_FORMAT_COUNT, &j->output_format);
    case J_QUALITY: return cli_opt_int(cmd, opt, v, PW_QUALITY_MIN, PW_QUALITY_MAX, &j->output_quality);
    case J_PREVIEW_EVERY: return cli_opt_int(cmd, opt, v, 0, PW_STEPS_MAX, &j->preview_every);
  }
  return -1;
}

int cli_job_option(const char *cmd, cli_job *c, int code, const char *opt, const char *v) {
  pw_job *j = &c->job;
  switch (code) {
    case 'n': return set_text(cmd, &j->negative_prompt, v);
    case J_STEPS: return cli_opt_int(cmd, opt, v, 1, PW_STEPS_MAX, &j->steps);
    case J_RENOISE: return cli_opt_int(cmd, opt, v, 0, PW_STEPS_MAX - 1, &j->renoise_steps);
    case J_CFG: return cli_opt_pair(cmd, opt, v, PW_CFG_MIN, PW_CFG_MAX, j->cfg);
    case J_TEMP: return cli_opt_pair(cmd, opt, v, PW_TEMP_MIN, PW_TEMP_MAX, j->temperature);
    case J_TSTART: return cli_opt_num(cmd, opt, v, 0, 1, &j->t_start);
    case J_TEND: return cli_opt_num(cmd, opt, v, 0, 1, &j->t_end);
    case J_ARGMAX: j->sampling = PW_SAMPLING_ARGMAX; return 0;
    case J_PSTEPS: return cli_opt_int(cmd, opt, v, 1, PW_PRIOR_STEPS_MAX, &j->prior.steps);
    case J_PCFG: return cli_opt_num(cmd, opt, v, 0, PW_PRIOR_GUIDANCE_MAX, &j->prior.guidance);
    case J_PSAMPLER:
      return set_name(cmd, opt, v, (const char *const[]){"ddpm", "ddim"}, PW_PRIOR_SAMPLER_COUNT, &j->prior.sampler);
  }
  return geometry_option(cmd, c, code, opt, v);
}

const char *cli_job_option_of_field(const char *field) {
  static const char *const map[][2] = {
      {"prompt", "PROMPT"}, {"negative_prompt", "--negative"}, {"width", "--width"}, {"height", "--height"},
      {"batch", "--batch"}, {"steps", "--steps"}, {"renoise_steps", "--renoise-steps"}, {"cfg", "--cfg"},
      {"temperature", "--temp"}, {"t_start", "--t-start/--strength"}, {"t_end", "--t-end"},
      {"prior.steps", "--prior-steps"}, {"prior.guidance", "--prior-cfg"}, {"prior", "--prior-sampler"},
      {"image", "--image"}, {"mask", "--mask"}, {"outpaint", "--outpaint"}, {"interpolate.prompt_to", "--interpolate"},
      {"interpolate.frames", "--frames"}, {"interpolate", "--interpolate"}, {"output_quality", "--quality"},
      {"output_format", "--format"}, {"preview_every", "--preview-every"}, {"seed", "--seed"}, {"webhook", "--webhook-url"}, {"output", "--output-dir"},
      {"priority", "--priority"}, {"deadline_ms", "--deadline-ms"}, {"idempotency_key", "--idempotency-key"}};
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (!strncmp(field, map[i][0], strlen(map[i][0]))) return map[i][1];
  return field;
}

/* Reads an input image's bytes into the job (the proto's size limit applies). */
static int attach_image(const char *cmd, pw_image *dst, const char *path, const char *opt) {
  FILE *f = fopen(path, "rb");
  if (!f) return fprintf(stderr, "%s: %s %s: %s\n", cmd, opt, path, strerror(errno)), CLI_EXIT_FAILURE;
  uint8_t *buf = malloc(PW_MAX_IMAGE_BYTES + 1);
  size_t n = buf ? fread(buf, 1, PW_MAX_IMAGE_BYTES + 1, f) : 0;
  fclose(f);
  if (!buf || n > PW_MAX_IMAGE_BYTES) {
    free(buf);
    return fprintf(stderr, "%s: %s %s: larger than %u bytes\n", cmd, opt, path, PW_MAX_IMAGE_BYTES), CLI_EXIT_FAILURE;
  }
  dst->present = 1;
  dst->data = buf;
  dst->len = n;
  return 0;
}

/* The output format from the file name unless --format said it (which must then agree). */
static int output_format(const char *cmd, cli_job *c, const char *output) {
  pa_image_format f;
  pw_job *j = &c->job;
  int by_ext = output && strcmp(output, "-") ? pa_image_format_from_path(output, &f) : 0;
  if (by_ext < 0 && !c->format_given)
    return cli_usage_error(cmd, "-o", "%s: unknown image extension (.png, .jpg, .jpeg, .webp; or give --format)", output);
  if (by_ext <= 0) return 0;
  pw_output_format named = f == PA_IMAGE_JPEG ? PW_FORMAT_JPEG : f == PA_IMAGE_WEBP ? PW_FORMAT_WEBP : PW_FORMAT_PNG;
  if (c->format_given && named != j->output_format)
    return cli_usage_error(cmd, "--format", "%s does not match the extension of %s", pw_output_format_name(j->output_format), output);
  j->output_format = named;
  return 0;
}

int cli_job_finish(const char *cmd, cli_job *c, const char *output) {
  pw_job *j = &c->job;
  pw_error err;
  int rc;
  if ((c->mask_path || j->has_outpaint || c->variation) && !c->image_path)
    return cli_usage_error(cmd, NULL, "--mask, --outpaint and --variation need --image");
  if ((c->mask_path != NULL) + j->has_outpaint + c->variation > 1)
    return cli_usage_error(cmd, NULL, "choose one of --mask, --outpaint, --variation");
  j->kind = j->has_outpaint ? PW_KIND_OUTPAINT : c->variation ? PW_KIND_VARIATION : c->mask_path ? PW_KIND_INPAINT
          : c->image_path ? PW_KIND_IMG2IMG : j->has_interpolate ? PW_KIND_INTERPOLATE : PW_KIND_TXT2IMG;
  if (c->strength_given && j->kind == PW_KIND_IMG2IMG) j->t_start = c->strength;
  if ((rc = output_format(cmd, c, output))) return rc;
  if (c->image_path && (rc = attach_image(cmd, &j->image, c->image_path, "--image"))) return rc;
  if (c->mask_path && (rc = attach_image(cmd, &j->mask, c->mask_path, "--mask"))) return rc;
  pw_job_apply_defaults(j);
  if (pw_job_validate(j, &err) == 0) return 0;
  return cli_usage_error(cmd, cli_job_option_of_field(err.field), "%s", err.message);
}
