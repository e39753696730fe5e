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

#include <new>

using namespace moec::rt;

struct moec_model {
  std::shared_ptr<const Artifact> artifact;
};

struct moec_session {
  std::unique_ptr<Session> session;
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
    *session = new moec_session{std::move(*created)};
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

} // extern "C"
