//===- CApi.cpp - the C API over the C++ runtime --------------------------===//
//
// Each entry point converts an Error into a moec_status plus the
// thread-local message, and catches every exception (out of memory
// included) so none crosses into C.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/moec_runtime.h"

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Session.h"
#include "moec/Runtime/Trainer.h"

#include <new>

using namespace moec::rt;

struct moec_model {
  std::shared_ptr<const Artifact> artifact;
};

struct moec_session {
  std::shared_ptr<Session> session;
};

struct moec_trainer {
  /// Kept alive for the trainer, which refers to it (and is destroyed
  /// first: members go in reverse order).
  std::shared_ptr<Session> session;
  std::unique_ptr<Trainer> trainer;
};

static thread_local std::string lastError;

static moec_status fail(const Error &error) {
  lastError = error.message();
  return static_cast<moec_status>(error.code());
}

static moec_status fail(moec_status status, std::string message) {
  lastError = std::move(message);
  return status;
}

/// Runs `body` (returning Error), mapping exceptions to statuses.
template <typename Body> static moec_status guard(Body &&body) {
  try {
    Error error = body();
    if (error)
      return fail(error);
    return MOEC_OK;
  } catch (const std::bad_alloc &) {
    return fail(MOEC_ERROR_DEVICE, "out of memory");
  } catch (const std::exception &e) {
    return fail(MOEC_ERROR_INTERNAL,
                std::string("internal error: ") + e.what());
  } catch (...) {
    return fail(MOEC_ERROR_INTERNAL, "internal error: unknown exception");
  }
}

extern "C" {

const char *moec_last_error(void) { return lastError.c_str(); }

const char *moec_status_name(moec_status status) {
  if (status == MOEC_OK)
    return "ok";
  return errorCodeName(static_cast<ErrorCode>(status));
}

moec_status moec_model_load(const char *path, moec_model **model) {
  return guard([&]() -> Error {
    if (!path || !model)
      return makeError(ErrorCode::Argument,
                       "moec_model_load: null path or model");
    *model = nullptr;
    Expected<std::shared_ptr<const Artifact>> artifact = Artifact::load(path);
    if (!artifact)
      return artifact.takeError();
    *model = new moec_model{std::move(*artifact)};
    return Error::success();
  });
}

void moec_model_release(moec_model *model) { delete model; }

const char *moec_model_name(const moec_model *model) {
  return model ? model->artifact->manifest().model.c_str() : "";
}

int64_t moec_model_batch(const moec_model *model) {
  return model ? model->artifact->manifest().batch : 0;
}

void moec_model_input_shape(const moec_model *model, int64_t *channels,
                            int64_t *height, int64_t *width) {
  const Manifest *m = model ? &model->artifact->manifest() : nullptr;
  if (channels)
    *channels = m ? m->channels : 0;
  if (height)
    *height = m ? m->height : 0;
  if (width)
    *width = m ? m->width : 0;
}

int64_t moec_model_classes(const moec_model *model) {
  return model ? model->artifact->manifest().classes : 0;
}

moec_status moec_session_create(moec_model *model, const char *device,
                                int threads, moec_session **session) {
  return guard([&]() -> Error {
    if (!model || !device || !session)
      return makeError(ErrorCode::Argument,
                       "moec_session_create: null model, device or session");
    *session = nullptr;
    Expected<std::unique_ptr<Session>> created =
        Session::create(model->artifact, device, threads);
    if (!created)
      return created.takeError();
    *session = new moec_session{std::shared_ptr<Session>(std::move(*created))};
    return Error::success();
  });
}

void moec_session_release(moec_session *session) { delete session; }

moec_status moec_session_load_weights(moec_session *session, const char *path) {
  return guard([&]() -> Error {
    if (!session || !path)
      return makeError(ErrorCode::Argument,
                       "moec_session_load_weights: null session or path");
    return session->session->loadWeights(path);
  });
}

moec_status moec_session_init_weights(moec_session *session, uint64_t seed) {
  return guard([&]() -> Error {
    if (!session)
      return makeError(ErrorCode::Argument,
                       "moec_session_init_weights: null session");
    session->session->initWeights(seed);
    return Error::success();
  });
}

moec_status moec_session_save_weights(moec_session *session, const char *path) {
  return guard([&]() -> Error {
    if (!session || !path)
      return makeError(ErrorCode::Argument,
                       "moec_session_save_weights: null session or path");
    return session->session->saveWeights(path);
  });
}

moec_status moec_session_infer(moec_session *session, const float *images,
                               int64_t n, float *logits) {
  return guard([&]() -> Error {
    if (!session)
      return makeError(ErrorCode::Argument, "moec_session_infer: null session");
    return session->session->infer(images, n, logits);
  });
}

//===----------------------------------------------------------------------===//
// Training
//===----------------------------------------------------------------------===//

void moec_train_options_init(moec_train_options *options) {
  if (!options)
    return;
  *options = moec_train_options{};
  TrainerOptions defaults;
  options->keep_checkpoints = defaults.keepCheckpoints;
  options->log_every = defaults.logEvery;
  options->eval_every_epoch = defaults.evalEveryEpoch ? 1 : 0;
}

/// The TrainerOptions of C options.
static TrainerOptions trainerOptions(const moec_train_options &in) {
  auto text = [](const char *s) -> std::optional<std::string> {
    if (!s)
      return std::nullopt;
    return std::string(s);
  };
  TrainerOptions out;
  out.dataDir = text(in.data_dir);
  if (in.epochs != 0)
    out.epochs = in.epochs;
  if (in.lr != 0)
    out.lr = in.lr;
  if (in.has_seed)
    out.seed = in.seed;
  out.checkpointDir = text(in.checkpoint_dir);
  out.resumeDir = text(in.resume_dir);
  out.keepCheckpoints = in.keep_checkpoints;
  out.weights = text(in.weights);
  out.useSessionWeights = in.use_session_weights != 0;
  out.logPath = text(in.log_path);
  out.plotPath = text(in.plot_path);
  out.logEvery = in.log_every;
  out.maxSteps = in.max_steps;
  out.evalEveryEpoch = in.eval_every_epoch != 0;
  out.timeBudget = in.time_budget;
  return out;
}

static void copyEval(const EvalResult &in, moec_eval_result *out) {
  if (!out)
    return;
  out->loss = in.loss();
  out->top1 = in.top1();
  out->correct = static_cast<int64_t>(in.correct);
  out->images = in.images;
}

moec_status moec_trainer_create(moec_session *session,
                                const moec_train_options *options,
                                moec_trainer **trainer) {
  return guard([&]() -> Error {
    if (!session || !trainer)
      return makeError(ErrorCode::Argument,
                       "moec_trainer_create: null session or trainer");
    *trainer = nullptr;
    moec_train_options defaults;
    moec_train_options_init(&defaults);
    Expected<std::unique_ptr<Trainer>> created = Trainer::create(
        *session->session, trainerOptions(options ? *options : defaults));
    if (!created)
      return created.takeError();
    *trainer = new moec_trainer{session->session, std::move(*created)};
    return Error::success();
  });
}

void moec_trainer_release(moec_trainer *trainer) { delete trainer; }

moec_status moec_trainer_step(moec_trainer *trainer,
                              moec_train_step_result *result) {
  return guard([&]() -> Error {
    if (!trainer)
      return makeError(ErrorCode::Argument, "moec_trainer_step: null trainer");
    Expected<StepResult> step = trainer->trainer->step();
    if (!step)
      return step.takeError();
    if (result) {
      result->step = step->step;
      result->epoch = step->epoch;
      result->loss = step->loss;
      result->ce_loss = step->ceLoss;
      result->aux_loss = step->auxLoss;
      result->grad_norm = step->gradNorm;
      result->lr = step->lr;
      result->accuracy =
          step->correct / double(trainer->trainer->settings().batch);
    }
    return Error::success();
  });
}

moec_status moec_trainer_run_epoch(moec_trainer *trainer) {
  return guard([&]() -> Error {
    if (!trainer)
      return makeError(ErrorCode::Argument,
                       "moec_trainer_run_epoch: null trainer");
    return trainer->trainer->runEpoch();
  });
}

moec_status moec_trainer_run(moec_trainer *trainer, moec_eval_result *result) {
  return guard([&]() -> Error {
    if (!trainer)
      return makeError(ErrorCode::Argument, "moec_trainer_run: null trainer");
    Expected<EvalResult> eval = trainer->trainer->run();
    if (!eval)
      return eval.takeError();
    copyEval(*eval, result);
    return Error::success();
  });
}

moec_status moec_trainer_evaluate(moec_trainer *trainer,
                                  moec_eval_result *result) {
  return guard([&]() -> Error {
    if (!trainer || !result)
      return makeError(ErrorCode::Argument,
                       "moec_trainer_evaluate: null trainer or result");
    Expected<EvalResult> eval = trainer->trainer->evaluate();
    if (!eval)
      return eval.takeError();
    copyEval(*eval, result);
    return Error::success();
  });
}

moec_status moec_trainer_save_checkpoint(moec_trainer *trainer,
                                         const char *path) {
  return guard([&]() -> Error {
    if (!trainer || !path)
      return makeError(ErrorCode::Argument,
                       "moec_trainer_save_checkpoint: null trainer or path");
    return trainer->trainer->saveCheckpoint(path);
  });
}

moec_status moec_trainer_load_checkpoint(moec_trainer *trainer,
                                         const char *path) {
  return guard([&]() -> Error {
    if (!trainer || !path)
      return makeError(ErrorCode::Argument,
                       "moec_trainer_load_checkpoint: null trainer or path");
    return trainer->trainer->loadCheckpoint(path);
  });
}

int64_t moec_trainer_steps_done(const moec_trainer *trainer) {
  return trainer ? trainer->trainer->stepsDone() : 0;
}

int64_t moec_trainer_total_steps(const moec_trainer *trainer) {
  return trainer ? trainer->trainer->totalSteps() : 0;
}

int moec_trainer_done(const moec_trainer *trainer) {
  return trainer ? trainer->trainer->done() : 1;
}

} // extern "C"
