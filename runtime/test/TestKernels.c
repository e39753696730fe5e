/*===- TestKernels.c - kernels of the tests' tiny model ----------*- C -*-===*\
|*                                                                            *|
|* A "model" for 1x4x4 images and 3 classes, in the kernel ABI of            *|
|* docs/artifact.md (void k(void **args, int64_t begin, int64_t end)):       *|
|*   logits[i][k] = sum(image i) * scale[k] + bias[k]                        *|
|* moec_k0 (fixed, 3 tiles)   copies bias (param) into the arena;            *|
|* moec_k1 (images)           sums each image's pixels;                      *|
|* moec_k2 (images)           computes the logits.                           *|
|*                                                                            *|
\*===----------------------------------------------------------------------===*/

#include <stdint.h>

#define PIXELS 16
#define CLASSES 3

/* args: bias (param), bias copy (arena). */
void moec_k0(void **args, int64_t begin, int64_t end) {
  const float *bias = (const float *)args[0];
  float *copy = (float *)args[1];
  for (int64_t t = begin; t < end; ++t)
    copy[t] = bias[t];
}

/* args: images (arena), sums (arena). */
void moec_k1(void **args, int64_t begin, int64_t end) {
  const float *images = (const float *)args[0];
  float *sums = (float *)args[1];
  for (int64_t i = begin; i < end; ++i) {
    float sum = 0;
    for (int p = 0; p < PIXELS; ++p)
      sum += images[i * PIXELS + p];
    sums[i] = sum;
  }
}

/* args: sums (arena), scale (param), bias copy (arena), logits (arena). */
void moec_k2(void **args, int64_t begin, int64_t end) {
  const float *sums = (const float *)args[0];
  const float *scale = (const float *)args[1];
  const float *bias = (const float *)args[2];
  float *logits = (float *)args[3];
  for (int64_t i = begin; i < end; ++i)
    for (int k = 0; k < CLASSES; ++k)
      logits[i * CLASSES + k] = sums[i] * scale[k] + bias[k];
}
