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
  MOEC_ERROR_DEVICE = 8,   /* device failure (memory, threads) */
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

/* device: "cpu". threads: 0 = every core. The parameters start unset: call
 * moec_session_load_weights or moec_session_init_weights before inference. */
moec_status moec_session_create(moec_model *model, const char *device,
                                int threads, moec_session **session);
void moec_session_release(moec_session *session);

/* Binds a safetensors file: every parameter with its exact shape, nothing
 * else. On failure the parameters are unchanged. */
moec_status moec_session_load_weights(moec_session *session, const char *path);
/* Deterministic random initial parameters (docs/runtime.md). */
moec_status moec_session_init_weights(moec_session *session, uint64_t seed);
/* Writes the parameters as safetensors (atomically). */
moec_status moec_session_save_weights(moec_session *session, const char *path);

/* images: n x channels x height x width floats, normalized as the dataset
 * (docs/runtime.md); logits: n x classes floats. Any n >= 0. */
moec_status moec_session_infer(moec_session *session, const float *images,
                               int64_t n, float *logits);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOEC_RUNTIME_MOEC_RUNTIME_H */
