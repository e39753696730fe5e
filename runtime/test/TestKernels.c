/*===- TestKernels.c - kernels of the tests' tiny model ----------*- C -*-===*\
|*                                                                            *|
|* A "model" for 1x4x4 images and 3 classes, in the kernel ABI of            *|
|* docs/artifact.md (void k(void **args, int64_t begin, int64_t end)):       *|
|*   logits[i][k] = sum(image i) * scale[k] + bias[k]                        *|
|* moec_k0 (fixed, 3 tiles)   copies bias (param) into the arena;            *|
|* moec_k1 (images)           sums each image's pixels;                      *|
|* moec_k2 (images)           computes the logits.                           *|
|*                                                                            *|
|* And a trainable one ("tinytrain", TestUtil.h), batch 4, 1x4x4 images, a   *|
|* score per image s = b + sum(x * w) (+ 0.1 * the two noise values of the   *|
|* image in train_step), regressed onto the label:                           *|
|*   ce_loss = mean (s - y)^2, aux_loss = 0.001 * sum w^2,                   *|
|*   correct = #(|s - y| < 0.5), SGD with momentum 0.9,                      *|
|*   lr_used = lr (t+1)/W for t < W, else lr (1 - 0.5 t / T).                *|
|* A batch holding label 9 gets a NaN gradient for b (to test the runtime's  *|
|* non-finite checks).                                                        *|
|*   moec_t0 (images) scores with noise, moec_t1 (fixed, 1) loss, gradients  *|
|*   and update; moec_e0 (images) scores, moec_e1 (fixed, 1) eval sums;     *|
|*   moec_i0 (images) logits[i][k] = -(s_i - k)^2.                           *|
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

/* The trainable model. */
#define TRAIN_BATCH 4
#define TRAIN_CLASSES 10

/* sqrt by Newton's method (no libm). */
static float squareRoot(float x) {
  if (!(x > 0))
    return x == 0 ? 0 : x - x + __builtin_nanf("");
  double r = x > 1 ? x : 1;
  for (int i = 0; i < 64; ++i)
    r = 0.5 * (r + x / r);
  return (float)r;
}

static float score(const float *image, const float *w, const float *b) {
  float s = b[0];
  for (int p = 0; p < PIXELS; ++p)
    s += image[p] * w[p];
  return s;
}

/* args: images, w, b, noise [B,1,2], scores. */
void moec_t0(void **args, int64_t begin, int64_t end) {
  const float *images = (const float *)args[0];
  const float *w = (const float *)args[1], *b = (const float *)args[2];
  const float *noise = (const float *)args[3];
  float *scores = (float *)args[4];
  for (int64_t i = begin; i < end; ++i)
    scores[i] = score(images + i * PIXELS, w, b) +
                0.1f * (noise[i * 2] + noise[i * 2 + 1]);
}

/* args: scores, labels (i32), images, step, total_steps, warmup_steps, lr,
   w, b, momentum w, momentum b, loss, ce_loss, aux_loss, correct,
   grad_norm, lr_used, grad w, grad b. */
void moec_t1(void **args, int64_t begin, int64_t end) {
  if (begin >= end)
    return;
  const float *scores = (const float *)args[0];
  const int32_t *labels = (const int32_t *)args[1];
  const float *images = (const float *)args[2];
  const float t = *(const float *)args[3], T = *(const float *)args[4];
  const float W = *(const float *)args[5], lr = *(const float *)args[6];
  float *w = (float *)args[7], *b = (float *)args[8];
  float *mw = (float *)args[9], *mb = (float *)args[10];
  float gw[PIXELS], gb = 0, ce = 0, aux = 0, correct = 0, norm = 0;
  int poisoned = 0;
  for (int p = 0; p < PIXELS; ++p) {
    gw[p] = 0.002f * w[p];
    aux += 0.001f * w[p] * w[p];
  }
  for (int i = 0; i < TRAIN_BATCH; ++i) {
    float r = scores[i] - (float)labels[i];
    ce += r * r / TRAIN_BATCH;
    correct += (r < 0.5f && r > -0.5f) ? 1.0f : 0.0f;
    gb += 2.0f * r / TRAIN_BATCH;
    for (int p = 0; p < PIXELS; ++p)
      gw[p] += 2.0f * r * images[i * PIXELS + p] / TRAIN_BATCH;
    poisoned |= labels[i] == 9;
  }
  if (poisoned)
    gb = __builtin_nanf("");
  for (int p = 0; p < PIXELS; ++p)
    norm += gw[p] * gw[p];
  norm = squareRoot(norm + gb * gb);
  float lrUsed = t < W ? lr * (t + 1) / W : lr * (1.0f - 0.5f * t / T);
  for (int p = 0; p < PIXELS; ++p) {
    mw[p] = 0.9f * mw[p] + gw[p];
    w[p] -= lrUsed * mw[p];
    ((float *)args[17])[p] = gw[p];
  }
  mb[0] = 0.9f * mb[0] + gb;
  b[0] -= lrUsed * mb[0];
  *(float *)args[18] = gb;
  *(float *)args[11] = ce + aux;
  *(float *)args[12] = ce;
  *(float *)args[13] = aux;
  *(float *)args[14] = correct;
  *(float *)args[15] = norm;
  *(float *)args[16] = lrUsed;
}

/* args: images, w, b, scores. */
void moec_e0(void **args, int64_t begin, int64_t end) {
  const float *images = (const float *)args[0];
  const float *w = (const float *)args[1], *b = (const float *)args[2];
  float *scores = (float *)args[3];
  for (int64_t i = begin; i < end; ++i)
    scores[i] = score(images + i * PIXELS, w, b);
}

/* args: scores, labels (i32), mask, loss_sum, correct, routing [2]. */
void moec_e1(void **args, int64_t begin, int64_t end) {
  if (begin >= end)
    return;
  const float *scores = (const float *)args[0];
  const int32_t *labels = (const int32_t *)args[1];
  const float *mask = (const float *)args[2];
  float loss = 0, correct = 0, low = 0, high = 0;
  for (int i = 0; i < TRAIN_BATCH; ++i) {
    float r = scores[i] - (float)labels[i];
    loss += mask[i] * r * r;
    correct += mask[i] * ((r < 0.5f && r > -0.5f) ? 1.0f : 0.0f);
    low += mask[i] * (scores[i] < 4.5f ? 1.0f : 0.0f);
    high += mask[i] * (scores[i] < 4.5f ? 0.0f : 1.0f);
  }
  *(float *)args[3] = loss;
  *(float *)args[4] = correct;
  ((float *)args[5])[0] = low;
  ((float *)args[5])[1] = high;
}

/* args: images, w, b, logits [B, 10]. */
void moec_i0(void **args, int64_t begin, int64_t end) {
  const float *images = (const float *)args[0];
  const float *w = (const float *)args[1], *b = (const float *)args[2];
  float *logits = (float *)args[3];
  for (int64_t i = begin; i < end; ++i) {
    float s = score(images + i * PIXELS, w, b);
    for (int k = 0; k < TRAIN_CLASSES; ++k)
      logits[i * TRAIN_CLASSES + k] = -(s - (float)k) * (s - (float)k);
  }
}
