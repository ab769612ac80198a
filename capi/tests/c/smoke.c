/* Smoke test of Ferrum's C API: starts an in-process server on model_repository/, infers
 * `simple` (sync, with and without a response allocator, and async) and `onnx_mlp` (checked
 * against the MLP's closed-form weights), streams the decoupled `repeat_int32`, loads and
 * unloads a model in explicit mode, checks that misuse returns errors, checks that the process
 * holds no listening socket, and shuts down. Exit status 0 when every check passes.
 *
 * Usage: smoke [MODEL_REPOSITORY [BACKEND_DIRECTORY]]
 * (defaults: $FERRUM_MODEL_REPOSITORY or model_repository, $FERRUM_BACKEND_DIRECTORY or
 * target/debug/backends). Build: gcc smoke.c -I target/include -L target/debug -lferrum. */

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferrum.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                      \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                    \
      fprintf(stderr, __VA_ARGS__);                                                           \
      fprintf(stderr, "\n");                                                                  \
      failures++;                                                                             \
    }                                                                                         \
  } while (0)

/* Fails (and exits) on an error object; frees it. */
#define OK(call)                                                                              \
  do {                                                                                        \
    FERRUM_Error *err__ = (call);                                                             \
    if (err__ != NULL) {                                                                      \
      fprintf(stderr, "FAIL %s:%d: %s: %s: %s\n", __FILE__, __LINE__, #call,                  \
              FERRUM_ErrorCodeString(err__), FERRUM_ErrorMessage(err__));                     \
      FERRUM_ErrorDelete(err__);                                                              \
      exit(1);                                                                                \
    }                                                                                         \
  } while (0)

/* Expects an error of this code; frees it. */
static void expect_error(FERRUM_Error *err, FERRUM_Error_Code code, const char *what) {
  CHECK(err != NULL, "%s: expected an error", what);
  if (err != NULL) {
    CHECK(FERRUM_ErrorCode(err) == code, "%s: expected code %u, got %u (%s)", what, code,
          FERRUM_ErrorCode(err), FERRUM_ErrorMessage(err));
    FERRUM_ErrorDelete(err);
  }
}

/* Number of listening TCP sockets this process holds (0 expected: an embedded core opens
 * none). Matches the socket inodes of /proc/self/fd with LISTEN rows of /proc/self/net/tcp*. */
static int listening_sockets(void) {
  unsigned long inodes[1024];
  int n = 0;
  DIR *dir = opendir("/proc/self/fd");
  if (dir == NULL) return -1;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL && n < 1024) {
    char path[512], link[256];
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t len = readlink(path, link, sizeof link - 1);
    if (len <= 0) continue;
    link[len] = 0;
    unsigned long ino;
    if (sscanf(link, "socket:[%lu]", &ino) == 1) inodes[n++] = ino;
  }
  closedir(dir);
  int listening = 0;
  const char *tables[] = {"/proc/self/net/tcp", "/proc/self/net/tcp6"};
  for (int t = 0; t < 2; t++) {
    FILE *f = fopen(tables[t], "r");
    if (f == NULL) continue;
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) { /* header */
      fclose(f);
      continue;
    }
    while (fgets(line, sizeof line, f) != NULL) {
      char local[128], remote[128];
      unsigned state;
      unsigned long ino;
      /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
      if (sscanf(line, "%*s %127s %127s %x %*s %*s %*s %*s %*s %lu", local, remote, &state,
                 &ino) != 4)
        continue;
      if (state != 0x0A) continue;
      for (int i = 0; i < n; i++)
        if (inodes[i] == ino) listening++;
    }
    fclose(f);
  }
  return listening;
}

static const void *output(FERRUM_InferenceResponse *r, const char *want, const char *dtype,
                          size_t *size) {
  uint32_t count = 0;
  OK(FERRUM_InferenceResponseOutputCount(r, &count));
  for (uint32_t i = 0; i < count; i++) {
    const char *name, *datatype;
    const int64_t *shape;
    uint64_t dims;
    const void *base;
    size_t byte_size;
    FERRUM_MemoryType kind;
    int64_t kind_id;
    void *userp;
    OK(FERRUM_InferenceResponseOutput(r, i, &name, &datatype, &shape, &dims, &base, &byte_size,
                                      &kind, &kind_id, &userp));
    if (strcmp(name, want) == 0) {
      CHECK(strcmp(datatype, dtype) == 0, "%s: datatype %s, expected %s", want, datatype, dtype);
      CHECK(kind == FERRUM_MEMORY_CPU, "%s: memory kind %u", want, kind);
      *size = byte_size;
      return base;
    }
  }
  CHECK(0, "no output %s", want);
  *size = 0;
  return NULL;
}

/* --- a response allocator that counts its buffers */
static int allocated = 0, released = 0;

static FERRUM_Error *alloc_fn(FERRUM_ResponseAllocator *a, const char *name, size_t byte_size,
                              FERRUM_MemoryType type, int64_t type_id, void *userp,
                              void **buffer, void **buffer_userp, FERRUM_MemoryType *actual,
                              int64_t *actual_id) {
  (void)a, (void)name, (void)type, (void)type_id;
  CHECK(userp == (void *)&allocated, "allocator userp");
  *buffer = malloc(byte_size > 0 ? byte_size : 1);
  *buffer_userp = (void *)0x1234;
  *actual = FERRUM_MEMORY_CPU;
  *actual_id = 0;
  __atomic_add_fetch(&allocated, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

static FERRUM_Error *release_fn(FERRUM_ResponseAllocator *a, void *buffer, void *buffer_userp,
                                size_t byte_size, FERRUM_MemoryType type, int64_t type_id) {
  (void)a, (void)byte_size, (void)type, (void)type_id;
  CHECK(buffer_userp == (void *)0x1234, "buffer userp");
  free(buffer);
  __atomic_add_fetch(&released, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

/* --- simple: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 */
static FERRUM_InferenceRequest *simple_request(FERRUM_Server *server) {
  FERRUM_InferenceRequest *req;
  OK(FERRUM_InferenceRequestNew(&req, server, "simple", -1));
  int32_t in0[16], in1[16];
  for (int i = 0; i < 16; i++) {
    in0[i] = i;
    in1[i] = 1;
  }
  int64_t shape[2] = {1, 16};
  OK(FERRUM_InferenceRequestSetId(req, "smoke-1"));
  OK(FERRUM_InferenceRequestAddInput(req, "INPUT0", "INT32", shape, 2));
  OK(FERRUM_InferenceRequestAddInput(req, "INPUT1", "INT32", shape, 2));
  /* Appended in two pieces: the server joins them. */
  OK(FERRUM_InferenceRequestAppendInputData(req, "INPUT0", in0, 8 * 4, FERRUM_MEMORY_CPU, 0));
  OK(FERRUM_InferenceRequestAppendInputData(req, "INPUT0", in0 + 8, 8 * 4, FERRUM_MEMORY_CPU, 0));
  OK(FERRUM_InferenceRequestAppendInputData(req, "INPUT1", in1, sizeof in1, FERRUM_MEMORY_CPU, 0));
  return req;
}

static void check_simple(FERRUM_InferenceResponse *resp) {
  FERRUM_Error *err = NULL;
  OK(FERRUM_InferenceResponseError(resp, &err));
  CHECK(err == NULL, "simple response error: %s", FERRUM_ErrorMessage(err));
  FERRUM_ErrorDelete(err);
  const char *model, *id;
  int64_t version;
  OK(FERRUM_InferenceResponseModel(resp, &model, &version));
  OK(FERRUM_InferenceResponseId(resp, &id));
  CHECK(strcmp(model, "simple") == 0 && version == 1, "model %s version %ld", model,
        (long)version);
  CHECK(strcmp(id, "smoke-1") == 0, "id %s", id);
  size_t s0, s1;
  const int32_t *out0 = output(resp, "OUTPUT0", "INT32", &s0);
  const int32_t *out1 = output(resp, "OUTPUT1", "INT32", &s1);
  CHECK(s0 == 64 && s1 == 64, "sizes %zu %zu", s0, s1);
  if (out0 != NULL && out1 != NULL && s0 == 64 && s1 == 64)
    for (int i = 0; i < 16; i++) {
      CHECK(out0[i] == i + 1, "OUTPUT0[%d] = %d", i, out0[i]);
      CHECK(out1[i] == i - 1, "OUTPUT1[%d] = %d", i, out1[i]);
    }
}

/* --- asynchronous responses, gathered under a lock */
struct gather {
  pthread_mutex_t lock;
  pthread_cond_t done_cond;
  int done;
  int count;
  FERRUM_InferenceResponse *responses[64];
  int released;
};

static void on_release(FERRUM_InferenceRequest *req, uint32_t flags, void *userp) {
  (void)req;
  struct gather *g = userp;
  CHECK(flags & FERRUM_REQUEST_RELEASE_ALL, "release flags %u", flags);
  pthread_mutex_lock(&g->lock);
  g->released++;
  pthread_cond_broadcast(&g->done_cond);
  pthread_mutex_unlock(&g->lock);
}

static void on_response(FERRUM_InferenceResponse *resp, uint32_t flags, void *userp) {
  struct gather *g = userp;
  pthread_mutex_lock(&g->lock);
  if (resp != NULL && g->count < 64) g->responses[g->count++] = resp;
  else if (resp != NULL) FERRUM_InferenceResponseDelete(resp);
  if (flags & FERRUM_RESPONSE_COMPLETE_FINAL) {
    g->done = 1;
    pthread_cond_broadcast(&g->done_cond);
  }
  pthread_mutex_unlock(&g->lock);
}

static void gather_init(struct gather *g) {
  memset(g, 0, sizeof *g);
  pthread_mutex_init(&g->lock, NULL);
  pthread_cond_init(&g->done_cond, NULL);
}

static void gather_wait(struct gather *g) {
  pthread_mutex_lock(&g->lock);
  while (!g->done) pthread_cond_wait(&g->done_cond, &g->lock);
  pthread_mutex_unlock(&g->lock);
}

static void gather_wait_released(struct gather *g, int count) {
  pthread_mutex_lock(&g->lock);
  while (g->released < count) pthread_cond_wait(&g->done_cond, &g->lock);
  pthread_mutex_unlock(&g->lock);
}

static void gather_free(struct gather *g) {
  for (int i = 0; i < g->count; i++) OK(FERRUM_InferenceResponseDelete(g->responses[i]));
  pthread_mutex_destroy(&g->lock);
  pthread_cond_destroy(&g->done_cond);
}

/* --- onnx_mlp reference: relu(x W1 + B1) W2 + B2, weights scale*sin(phase + 0.7r + 1.3c) */
static double weight(double scale, double phase, int r, int c) {
  return (double)(float)(scale * sin(phase + 0.7 * r + 1.3 * c));
}

static void mlp_reference(const float *x, double *out) {
  double h[32];
  for (int c = 0; c < 32; c++) {
    double acc = weight(0.05, 0.2, 0, c);
    for (int r = 0; r < 16; r++) acc += x[r] * weight(0.25, 0.1, r, c);
    h[c] = acc > 0 ? acc : 0;
  }
  for (int c = 0; c < 4; c++) {
    double acc = weight(0.05, 0.4, 0, c);
    for (int r = 0; r < 32; r++) acc += h[r] * weight(0.25, 0.3, r, c);
    out[c] = acc;
  }
}

/* Checks a [2, 4] onnx_mlp output against the reference for the [2, 16] input x. */
static void check_mlp(const float *y, size_t size, const float *x, const char *what) {
  CHECK(y != NULL && size == 2 * 4 * sizeof(float), "%s: output size %zu", what, size);
  if (y == NULL || size != 32) return;
  for (int b = 0; b < 2; b++) {
    double want[4];
    mlp_reference(x + 16 * b, want);
    for (int c = 0; c < 4; c++)
      CHECK(fabs(y[4 * b + c] - want[c]) < 1e-4, "%s[%d][%d] = %f, expected %f", what, b, c,
            y[4 * b + c], want[c]);
  }
}

int main(int argc, char **argv) {
  const char *repo = argc > 1 ? argv[1] : getenv("FERRUM_MODEL_REPOSITORY");
  const char *backends = argc > 2 ? argv[2] : getenv("FERRUM_BACKEND_DIRECTORY");
  if (repo == NULL) repo = "model_repository";
  if (backends == NULL) backends = "target/debug/backends";

  uint32_t major, minor;
  OK(FERRUM_ApiVersion(&major, &minor));
  CHECK(major == FERRUM_API_VERSION_MAJOR, "api version %u.%u", major, minor);

  FERRUM_ServerOptions *options;
  OK(FERRUM_ServerOptionsNew(&options));
  OK(FERRUM_ServerOptionsSetModelRepositoryPath(options, repo));
  OK(FERRUM_ServerOptionsSetBackendDirectory(options, backends));
  OK(FERRUM_ServerOptionsSetModelControlMode(options, FERRUM_MODEL_CONTROL_EXPLICIT));
  OK(FERRUM_ServerOptionsSetStartupModel(options, "simple"));
  OK(FERRUM_ServerOptionsSetStartupModel(options, "onnx_mlp"));
  OK(FERRUM_ServerOptionsSetStartupModel(options, "repeat_int32"));
  OK(FERRUM_ServerOptionsSetThreadCount(options, 2));
  expect_error(FERRUM_ServerOptionsSetModelControlMode(options, 99), FERRUM_ERROR_INVALID_ARG,
               "bad control mode");
  FERRUM_Server *server;
  OK(FERRUM_ServerNew(&server, options));
  OK(FERRUM_ServerOptionsDelete(options));
  expect_error(FERRUM_ServerOptionsDelete(options), FERRUM_ERROR_INVALID_ARG,
               "options deleted twice");

  bool live = false, ready = false;
  OK(FERRUM_ServerIsLive(server, &live));
  OK(FERRUM_ServerIsReady(server, &ready));
  CHECK(live && ready, "live %d ready %d", live, ready);
  CHECK(listening_sockets() == 0, "the process listens on a TCP socket");

  /* Misuse is an error, never a crash. */
  expect_error(FERRUM_ServerIsReady(NULL, &ready), FERRUM_ERROR_INVALID_ARG, "NULL server");
  expect_error(FERRUM_ServerIsReady((FERRUM_Server *)options, &ready), FERRUM_ERROR_INVALID_ARG,
               "deleted object as server");
  expect_error(FERRUM_ServerIsReady(server, NULL), FERRUM_ERROR_INVALID_ARG, "NULL out");
  int not_an_object = 0;
  expect_error(FERRUM_InferenceRequestDelete((FERRUM_InferenceRequest *)&not_an_object),
               FERRUM_ERROR_INVALID_ARG, "stack address as request");

  /* Metadata, config. */
  char *json = NULL;
  OK(FERRUM_ServerModelMetadata(server, "simple", -1, &json));
  CHECK(strstr(json, "\"INPUT0\"") != NULL && strstr(json, "\"INT32\"") != NULL, "metadata %s",
        json);
  OK(FERRUM_StringDelete(json));
  expect_error(FERRUM_StringDelete(json), FERRUM_ERROR_INVALID_ARG, "string deleted twice");
  OK(FERRUM_ServerModelConfig(server, "onnx_mlp", -1, &json));
  CHECK(strstr(json, "max_batch_size") != NULL, "config %s", json);
  OK(FERRUM_StringDelete(json));
  expect_error(FERRUM_ServerModelMetadata(server, "no_such_model", -1, &json),
               FERRUM_ERROR_NOT_FOUND, "metadata of a missing model");

  /* simple, synchronously. */
  FERRUM_InferenceRequest *req = simple_request(server);
  expect_error(FERRUM_InferenceRequestAddInput(req, "INPUT0", "INT32", (int64_t[]){1, 16}, 2),
               FERRUM_ERROR_ALREADY_EXISTS, "input added twice");
  expect_error(FERRUM_InferenceRequestAddInput(req, "X", "NOT_A_TYPE", (int64_t[]){1}, 1),
               FERRUM_ERROR_INVALID_ARG, "bad datatype");
  FERRUM_InferenceResponse *resp = NULL;
  OK(FERRUM_ServerInferSync(server, req, &resp));
  check_simple(resp);
  OK(FERRUM_InferenceResponseDelete(resp));
  expect_error(FERRUM_InferenceResponseDelete(resp), FERRUM_ERROR_INVALID_ARG,
               "response deleted twice");

  /* simple again, the outputs placed by a caller-provided allocator. */
  FERRUM_ResponseAllocator *allocator;
  OK(FERRUM_ResponseAllocatorNew(&allocator, alloc_fn, release_fn));
  OK(FERRUM_InferenceRequestSetResponseCallback(req, allocator, &allocated, NULL, NULL));
  OK(FERRUM_ServerInferSync(server, req, &resp));
  check_simple(resp);
  CHECK(allocated == 2 && released == 0, "allocated %d released %d", allocated, released);
  OK(FERRUM_InferenceResponseDelete(resp));
  CHECK(released == 2, "released %d", released);

  /* simple asynchronously: one response, final. */
  struct gather g;
  gather_init(&g);
  OK(FERRUM_InferenceRequestSetResponseCallback(req, NULL, NULL, on_response, &g));
  OK(FERRUM_InferenceRequestSetReleaseCallback(req, on_release, &g));
  OK(FERRUM_ServerInferAsync(server, req));
  gather_wait(&g);
  CHECK(g.count == 1 && g.released == 1, "async simple: %d responses, %d releases", g.count,
        g.released);
  if (g.count == 1) check_simple(g.responses[0]);
  gather_free(&g);
  OK(FERRUM_InferenceRequestDelete(req));
  expect_error(FERRUM_InferenceRequestDelete(req), FERRUM_ERROR_INVALID_ARG,
               "request deleted twice");
  OK(FERRUM_ResponseAllocatorDelete(allocator));

  /* A missing model fails to start. */
  OK(FERRUM_InferenceRequestNew(&req, server, "no_such_model", -1));
  expect_error(FERRUM_ServerInferSync(server, req, &resp), FERRUM_ERROR_NOT_FOUND,
               "infer of a missing model");
  OK(FERRUM_InferenceRequestDelete(req));

  /* onnx_mlp, batch of 2, against the reference. */
  OK(FERRUM_InferenceRequestNew(&req, server, "onnx_mlp", -1));
  float x[32];
  for (int i = 0; i < 32; i++) x[i] = (float)((i % 16) - 8) / (i < 16 ? 8.0f : -4.0f);
  OK(FERRUM_InferenceRequestAddInput(req, "INPUT0", "FP32", (int64_t[]){2, 16}, 2));
  OK(FERRUM_InferenceRequestAppendInputData(req, "INPUT0", x, sizeof x, FERRUM_MEMORY_CPU, 0));
  OK(FERRUM_InferenceRequestAddRequestedOutput(req, "OUTPUT0"));
  OK(FERRUM_ServerInferSync(server, req, &resp));
  size_t size;
  const float *y = output(resp, "OUTPUT0", "FP32", &size);
  check_mlp(y, size, x, "onnx_mlp");
  OK(FERRUM_InferenceResponseDelete(resp));
  OK(FERRUM_InferenceRequestDelete(req));

  /* onnx_mlp again, its input borrowed (no copy) from a heap buffer that is freed only after
   * the release callback: valgrind would see a late read. Needs a release callback. */
  {
    float *borrowed = malloc(sizeof x);
    memcpy(borrowed, x, sizeof x);
    OK(FERRUM_InferenceRequestNew(&req, server, "onnx_mlp", -1));
    OK(FERRUM_InferenceRequestAddInput(req, "INPUT0", "FP32", (int64_t[]){2, 16}, 2));
    OK(FERRUM_InferenceRequestAppendInputDataBorrowed(req, "INPUT0", borrowed, sizeof x,
                                                      FERRUM_MEMORY_CPU, 0));
    expect_error(FERRUM_ServerInferSync(server, req, &resp), FERRUM_ERROR_INVALID_ARG,
                 "borrowed data without a release callback");
    gather_init(&g);
    OK(FERRUM_InferenceRequestSetReleaseCallback(req, on_release, &g));
    OK(FERRUM_ServerInferSync(server, req, &resp));
    check_mlp(output(resp, "OUTPUT0", "FP32", &size), size, x, "borrowed onnx_mlp");
    OK(FERRUM_InferenceResponseDelete(resp));
    gather_wait_released(&g, 1);
    free(borrowed);
    /* And asynchronously. */
    borrowed = malloc(sizeof x);
    memcpy(borrowed, x, sizeof x);
    OK(FERRUM_InferenceRequestRemoveAllInputs(req));
    OK(FERRUM_InferenceRequestAddInput(req, "INPUT0", "FP32", (int64_t[]){2, 16}, 2));
    OK(FERRUM_InferenceRequestAppendInputDataBorrowed(req, "INPUT0", borrowed, sizeof x,
                                                      FERRUM_MEMORY_CPU, 0));
    OK(FERRUM_InferenceRequestSetResponseCallback(req, NULL, NULL, on_response, &g));
    OK(FERRUM_ServerInferAsync(server, req));
    gather_wait(&g);
    gather_wait_released(&g, 2);
    free(borrowed);
    CHECK(g.count == 1, "borrowed async onnx_mlp: %d responses", g.count);
    for (int i = 0; i < g.count; i++) {
      FERRUM_Error *failed = NULL;
      OK(FERRUM_InferenceResponseError(g.responses[i], &failed));
      CHECK(failed == NULL, "borrowed async onnx_mlp failed: %s", FERRUM_ErrorMessage(failed));
      FERRUM_ErrorDelete(failed);
      const float *y3 = output(g.responses[i], "OUTPUT0", "FP32", &size);
      check_mlp(y3, size, x, "borrowed async onnx_mlp");
    }
    gather_free(&g);
    OK(FERRUM_InferenceRequestDelete(req));
  }

  /* repeat_int32 (decoupled): one response per element, then the final flag. */
  OK(FERRUM_InferenceRequestNew(&req, server, "repeat_int32", -1));
  int32_t in[3] = {10, 20, 30};
  uint32_t delay[3] = {0, 5, 0}, wait[1] = {0};
  OK(FERRUM_InferenceRequestAddInput(req, "IN", "INT32", (int64_t[]){3}, 1));
  OK(FERRUM_InferenceRequestAddInput(req, "DELAY", "UINT32", (int64_t[]){3}, 1));
  OK(FERRUM_InferenceRequestAddInput(req, "WAIT", "UINT32", (int64_t[]){1}, 1));
  OK(FERRUM_InferenceRequestAppendInputData(req, "IN", in, sizeof in, FERRUM_MEMORY_CPU, 0));
  OK(FERRUM_InferenceRequestAppendInputData(req, "DELAY", delay, sizeof delay, FERRUM_MEMORY_CPU, 0));
  OK(FERRUM_InferenceRequestAppendInputData(req, "WAIT", wait, sizeof wait, FERRUM_MEMORY_CPU, 0));
  expect_error(FERRUM_ServerInferSync(server, req, &resp), FERRUM_ERROR_UNSUPPORTED,
               "sync infer of a decoupled model");
  expect_error(FERRUM_ServerInferAsync(server, req), FERRUM_ERROR_INVALID_ARG,
               "async infer without a callback");
  gather_init(&g);
  OK(FERRUM_InferenceRequestSetResponseCallback(req, NULL, NULL, on_response, &g));
  OK(FERRUM_ServerInferAsync(server, req));
  gather_wait(&g);
  CHECK(g.count == 3, "repeat_int32: %d responses", g.count);
  for (int i = 0; i < g.count && i < 3; i++) {
    const int32_t *out = output(g.responses[i], "OUT", "INT32", &size);
    const uint32_t *idx = output(g.responses[i], "IDX", "UINT32", &size);
    CHECK(out != NULL && *out == in[i], "repeat OUT[%d]", i);
    CHECK(idx != NULL && *idx == (uint32_t)i, "repeat IDX[%d]", i);
  }
  gather_free(&g);
  OK(FERRUM_InferenceRequestDelete(req));

  /* Statistics. */
  OK(FERRUM_ServerModelStatistics(server, "simple", -1, &json));
  CHECK(strstr(json, "\"inference_count\":3") != NULL, "statistics %s", json);
  OK(FERRUM_StringDelete(json));

  /* Explicit mode: load, infer, unload. */
  bool model_ready = true;
  OK(FERRUM_ServerModelIsReady(server, "identity_fp32", -1, &model_ready));
  CHECK(!model_ready, "identity_fp32 ready before loading");
  OK(FERRUM_ServerLoadModel(server, "identity_fp32"));
  OK(FERRUM_ServerModelIsReady(server, "identity_fp32", -1, &model_ready));
  CHECK(model_ready, "identity_fp32 not ready after loading");
  OK(FERRUM_InferenceRequestNew(&req, server, "identity_fp32", 1));
  float v[3] = {1.5f, -2.0f, 3.25f};
  OK(FERRUM_InferenceRequestAddInput(req, "INPUT0", "FP32", (int64_t[]){1, 3}, 2));
  OK(FERRUM_InferenceRequestAppendInputData(req, "INPUT0", v, sizeof v, FERRUM_MEMORY_CPU, 0));
  OK(FERRUM_ServerInferSync(server, req, &resp));
  const float *echo = output(resp, "OUTPUT0", "FP32", &size);
  CHECK(echo != NULL && size == sizeof v && memcmp(echo, v, sizeof v) == 0, "identity echo");
  OK(FERRUM_InferenceResponseDelete(resp));
  OK(FERRUM_InferenceRequestDelete(req));
  OK(FERRUM_ServerUnloadModel(server, "identity_fp32"));
  OK(FERRUM_ServerModelIsReady(server, "identity_fp32", -1, &model_ready));
  CHECK(!model_ready, "identity_fp32 ready after unloading");
  expect_error(FERRUM_ServerLoadModel(server, "no_such_model"), FERRUM_ERROR_NOT_FOUND,
               "load of a missing model");

  CHECK(listening_sockets() == 0, "the process listens on a TCP socket");

  OK(FERRUM_ServerStop(server));
  OK(FERRUM_ServerIsReady(server, &ready));
  CHECK(!ready, "ready after stop");
  OK(FERRUM_ServerDelete(server));
  expect_error(FERRUM_ServerDelete(server), FERRUM_ERROR_INVALID_ARG, "server deleted twice");

  if (failures > 0) {
    fprintf(stderr, "smoke: %d check(s) failed\n", failures);
    return 1;
  }
  printf("smoke: all checks passed\n");
  return 0;
}
