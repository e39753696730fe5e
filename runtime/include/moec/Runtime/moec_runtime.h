/*===- moec_runtime.h - the moec runtime C API -------------------*- C -*-===*\
|*                                                                            *|
|* Load a compiled .moec model, create a session on a device, give it        *|
|* weights and run inference. Every call returning moec_status sets a        *|
|* thread-local message on failure, read with moec_last_error().             *|
|*                                                                            *|
|*   moec_model *model; moec_session *session;                               *|
|*   if (moec_model_load("model.moec", &model) != MOEC_OK)                   *|
|*     fprintf(stderr, "%s\n", moec_last_error());                           *|
|*   moec_session_create(model, "cpu", 0, &session);                         *|
|*   moec_session_load_weights(session, "weights.safetensors");              *|
|*   moec_session_infer(session, images, n, logits);                         *|
|*   moec_session_release(session);                                          *|
|*   moec_model_release(model);                                              *|
|*                                                                            *|
|* Models compiled with the train_step and eval entry points train through   *|
|* a trainer on a session (docs/runtime.md, "C API"):                         *|
|*                                                                            *|
|*   moec_train_options options;                                             *|
|*   moec_train_options_init(&options);                                      *|
|*   options.epochs = 3;                                                     *|
|*   options.checkpoint_dir = "ckpt";                                        *|
|*   moec_trainer *trainer;                                                  *|
|*   moec_trainer_create(session, &options, &trainer);                       *|
|*   moec_eval_result result;                                                *|
|*   moec_trainer_run(trainer, &result);    (or moec_trainer_step, ...)      *|
|*   moec_session_save_weights(session, "final.safetensors");                *|
|*   moec_trainer_release(trainer);                                          *|
|*                                                                            *|
\*===----------------------------------------------------------------------===*/

#ifndef MOEC_RUNTIME_MOEC_RUNTIME_H
#define MOEC_RUNTIME_MOEC_RUNTIME_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moec_status {
  MOEC_OK = 0,
  MOEC_ERROR_IO = 1,       /* a file cannot be opened, read or written */
  MOEC_ERROR_FORMAT = 2,   /* malformed artifact */
  MOEC_ERROR_VERSION = 3,  /* artifact major version not supported */
  MOEC_ERROR_CHECKSUM = 4, /* artifact checksum mismatch */
  MOEC_ERROR_WEIGHTS = 5,  /* malformed or non-matching weights */
  MOEC_ERROR_DATA = 6,     /* malformed or unsuitable dataset */
  MOEC_ERROR_ARGUMENT = 7, /* bad argument (null pointer, unknown device) */
  MOEC_ERROR_DEVICE = 8,   /* device failure (memory, threads, no GPU) */
  MOEC_ERROR_INTERNAL = 9  /* a runtime bug */
} moec_status;

/* A loaded artifact; immutable, may be shared by sessions and threads. */
typedef struct moec_model moec_model;
/* A model bound to a device with its parameters and working memory; one
 * call at a time per session. */
typedef struct moec_session moec_session;

/* The message of the calling thread's last failed call ("" if none). Valid
 * until that thread's next failing call. */
const char *moec_last_error(void);
/* "ok", "io", "format", ... */
const char *moec_status_name(moec_status status);

moec_status moec_model_load(const char *path, moec_model **model);
/* Releasing a model is allowed while sessions created from it live; they
 * keep what they need. NULL is ignored. */
void moec_model_release(moec_model *model);

/* The model's name (valid while the model lives). */
const char *moec_model_name(const moec_model *model);
/* Most images one kernel call takes (infer accepts any n; it splits). */
int64_t moec_model_batch(const moec_model *model);
/* Image geometry: each image is channels x height x width floats (NCHW). */
void moec_model_input_shape(const moec_model *model, int64_t *channels,
                            int64_t *height, int64_t *width);
int64_t moec_model_classes(const moec_model *model);

/* device: "cpu" (threads: 0 = every core) or "cuda" (the first visible GPU;
 * threads unused); the model must be compiled for that target. The
 * parameters start unset: call moec_session_load_weights or
 * moec_session_init_weights before inference. */
moec_status moec_session_create(moec_model *model, const char *device,
                                int threads, moec_session **session);
void moec_session_release(moec_session *session);

/* Binds a safetensors file: every parameter with its exact shape, nothing
 * else; or the parameters of a training checkpoint (a checkpoint file, or a
 * checkpoint directory: the checkpoint its `latest` names), without its
 * optimizer state. On failure the parameters are unchanged. */
moec_status moec_session_load_weights(moec_session *session, const char *path);
/* Deterministic random initial parameters (docs/runtime.md). */
moec_status moec_session_init_weights(moec_session *session, uint64_t seed);
/* Writes the parameters as safetensors (atomically). */
moec_status moec_session_save_weights(moec_session *session, const char *path);

/* images: n x channels x height x width floats, normalized as the dataset
 * (docs/runtime.md); logits: n x classes floats. Any n >= 0. */
moec_status moec_session_infer(moec_session *session, const float *images,
                               int64_t n, float *logits);

/*===----------------------------------------------------------------------===*\
|* Training                                                                   *|
\*===----------------------------------------------------------------------===*/

/* A training run on a session (moec::rt::Trainer): it trains the session's
 * parameters and optimizer state in place. The trainer keeps its session
 * alive (the session may be released first), but the two serve one call at
 * a time between them. A trainer prints nothing. */
typedef struct moec_trainer moec_trainer;

/* What to train; moec_train_options_init sets the defaults below. Strings
 * are copied by moec_trainer_create. */
typedef struct moec_train_options {
  const char *data_dir;       /* NULL: the manifest's dataset path; image
                                 folders read DIR/train and DIR/test */
  int64_t epochs;             /* 0: the manifest's train.epochs */
  double lr;                  /* 0: the manifest's optimizer.lr (peak) */
  int has_seed;               /* 0: the manifest's train.seed */
  uint64_t seed;              /* the seed when has_seed */
  const char *checkpoint_dir; /* NULL: resume_dir, else no checkpoints;
                                 one is written after every epoch */
  const char *resume_dir;     /* NULL: a new run; else continue the run
                                 whose newest checkpoint DIR/latest names,
                                 with its seed, epochs and lr */
  int64_t keep_checkpoints;   /* 3; 0 keeps all */
  const char *weights;        /* NULL: the seed's initial weights; else the
                                 safetensors file a new run starts from */
  int use_session_weights;    /* 1: a new run starts from the session's
                                 current weights (not with weights or
                                 resume_dir) */
  const char *log_path;       /* NULL: checkpoint_dir/metrics.jsonl (none
                                 without a checkpoint_dir); "": none */
  const char *plot_path;      /* NULL: checkpoint_dir/metrics.svg; "": none */
  int64_t log_every;          /* 10: a metrics record every N steps */
  int64_t max_steps;          /* 0: no limit; moec_trainer_run stops after
                                 N steps (resumed ones included) with a
                                 checkpoint */
  int eval_every_epoch;       /* 1; 0 evaluates only at the end */
  double time_budget;         /* 0: none; else seconds from create that the
                                 run should fit: chooses the epochs (not
                                 with epochs or resume_dir) */
} moec_train_options;

/* One train_step's outputs. */
typedef struct moec_train_step_result {
  int64_t step;  /* steps done, this one included */
  int64_t epoch; /* the 1-based epoch of the step */
  double loss, ce_loss, aux_loss, grad_norm;
  double lr;       /* the learning rate the step used */
  double accuracy; /* the batch's images classified right, as a fraction */
} moec_train_step_result;

/* An evaluation on the test split. */
typedef struct moec_eval_result {
  double loss; /* mean over the images */
  double top1; /* fraction right */
  int64_t correct;
  int64_t images;
} moec_eval_result;

/* The defaults (NULL is ignored). */
void moec_train_options_init(moec_train_options *options);

/* Checks the model (train_step and eval entry points) and the options,
 * loads both splits of the dataset, sets up the weights (options.weights,
 * the session's, the seed's initial ones, or the resumed checkpoint's) and
 * zeroes the optimizer state of a new run. options NULL: the defaults.
 * MOEC_ERROR_ARGUMENT for options that contradict each other, the model or
 * the resumed run ("--epochs 3 differs from the run being resumed (2); ...",
 * "D already holds a training run ..."), the errors of the files read. */
moec_status moec_trainer_create(moec_session *session,
                                const moec_train_options *options,
                                moec_trainer **trainer);
void moec_trainer_release(moec_trainer *trainer);

/* One train_step on the next batch (result may be NULL); the step that
 * ends an epoch also evaluates (eval_every_epoch), writes the metrics, the
 * checkpoint and the plot. A NaN or infinity in the loss or a gradient is
 * MOEC_ERROR_DATA ("step 5: non-finite value nan at grad.b[0]"); the
 * parameters are then those of the failed step, and nothing was written.
 * MOEC_ERROR_ARGUMENT once the run is done (moec_trainer_done). */
moec_status moec_trainer_step(moec_trainer *trainer,
                              moec_train_step_result *result);
/* Steps to the end of the current epoch, or to max_steps (then writes a
 * stop checkpoint). */
moec_status moec_trainer_run_epoch(moec_trainer *trainer);
/* Trains to the end (or max_steps) and evaluates the final weights
 * (result may be NULL). */
moec_status moec_trainer_run(moec_trainer *trainer, moec_eval_result *result);
/* Evaluates the current weights on the test split. */
moec_status moec_trainer_evaluate(moec_trainer *trainer,
                                  moec_eval_result *result);

/* Writes a checkpoint of the current position (parameters, optimizer
 * state, step, data order and noise, settings) to path, atomically. */
moec_status moec_trainer_save_checkpoint(moec_trainer *trainer,
                                         const char *path);
/* Continues from a checkpoint of this run (same model, seed, epochs, lr,
 * batch and train split): training on from it gives bitwise what training
 * on from where it was saved gave. A checkpoint that cannot be read or is
 * not of this run changes nothing. */
moec_status moec_trainer_load_checkpoint(moec_trainer *trainer,
                                         const char *path);

/* Steps done, and epochs x steps per epoch (0 for NULL). */
int64_t moec_trainer_steps_done(const moec_trainer *trainer);
int64_t moec_trainer_total_steps(const moec_trainer *trainer);
/* 1 once every epoch is done or max_steps steps are (1 for NULL). */
int moec_trainer_done(const moec_trainer *trainer);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOEC_RUNTIME_MOEC_RUNTIME_H */
