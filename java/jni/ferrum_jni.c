/* JNI shim between io.ferrum.Server (java/src) and Ferrum's C API (libferrum.so). Every
 * FERRUM_Error becomes an io.ferrum.FerrumException; every C object it creates is deleted
 * before it returns, except the server, which Server.close() deletes.
 * Build: see java/build.sh. */

#include <jni.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ferrum.h"

/* Throws a FerrumException for `err` (and frees it); returns 1 if there was an error. */
static int throw_error(JNIEnv *env, FERRUM_Error *err) {
  if (err == NULL) return 0;
  jclass cls = (*env)->FindClass(env, "io/ferrum/FerrumException");
  jmethodID ctor = cls ? (*env)->GetMethodID(env, cls, "<init>", "(ILjava/lang/String;)V") : NULL;
  jstring message = (*env)->NewStringUTF(env, FERRUM_ErrorMessage(err));
  jint code = (jint)FERRUM_ErrorCode(err);
  FERRUM_ErrorDelete(err);
  if (cls != NULL && ctor != NULL && message != NULL) {
    jobject e = (*env)->NewObject(env, cls, ctor, code, message);
    if (e != NULL) (*env)->Throw(env, (jthrowable)e);
  }
  return 1;
}

static FERRUM_Error *invalid(const char *message) {
  return FERRUM_ErrorNew(FERRUM_ERROR_INVALID_ARG, message);
}

/* A Java string as a malloc'd UTF-8 C string (NULL for null). */
static char *c_string(JNIEnv *env, jstring s) {
  if (s == NULL) return NULL;
  const char *utf = (*env)->GetStringUTFChars(env, s, NULL);
  if (utf == NULL) return NULL;
  char *copy = strdup(utf);
  (*env)->ReleaseStringUTFChars(env, s, utf);
  return copy;
}

JNIEXPORT jlong JNICALL Java_io_ferrum_Server_create(JNIEnv *env, jclass cls, jstring repository,
                                                     jstring backends, jint mode,
                                                     jobjectArray startup) {
  (void)cls;
  FERRUM_ServerOptions *options = NULL;
  FERRUM_Server *server = NULL;
  FERRUM_Error *err = FERRUM_ServerOptionsNew(&options);
  char *repo = c_string(env, repository);
  char *dir = c_string(env, backends);
  if (err == NULL) err = repo ? FERRUM_ServerOptionsSetModelRepositoryPath(options, repo)
                              : invalid("repository is null");
  if (err == NULL && dir != NULL) err = FERRUM_ServerOptionsSetBackendDirectory(options, dir);
  if (err == NULL) err = FERRUM_ServerOptionsSetModelControlMode(options, (FERRUM_ModelControlMode)mode);
  jsize n = startup ? (*env)->GetArrayLength(env, startup) : 0;
  for (jsize i = 0; err == NULL && i < n; i++) {
    char *model = c_string(env, (jstring)(*env)->GetObjectArrayElement(env, startup, i));
    err = model ? FERRUM_ServerOptionsSetStartupModel(options, model) : invalid("null model");
    free(model);
  }
  if (err == NULL) err = FERRUM_ServerNew(&server, options);
  free(repo);
  free(dir);
  if (options != NULL) FERRUM_ErrorDelete(FERRUM_ServerOptionsDelete(options));
  if (throw_error(env, err)) return 0;
  return (jlong)(intptr_t)server;
}

JNIEXPORT void JNICALL Java_io_ferrum_Server_delete(JNIEnv *env, jclass cls, jlong server) {
  (void)cls;
  throw_error(env, FERRUM_ServerDelete((FERRUM_Server *)(intptr_t)server));
}

JNIEXPORT jboolean JNICALL Java_io_ferrum_Server_isReady(JNIEnv *env, jclass cls, jlong server) {
  (void)cls;
  bool ready = false;
  throw_error(env, FERRUM_ServerIsReady((FERRUM_Server *)(intptr_t)server, &ready));
  return ready ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT jboolean JNICALL Java_io_ferrum_Server_modelIsReady(JNIEnv *env, jclass cls,
                                                              jlong server, jstring model,
                                                              jlong version) {
  (void)cls;
  bool ready = false;
  char *name = c_string(env, model);
  FERRUM_Error *err = name ? FERRUM_ServerModelIsReady((FERRUM_Server *)(intptr_t)server, name,
                                                       (int64_t)version, &ready)
                           : invalid("model is null");
  free(name);
  throw_error(env, err);
  return ready ? JNI_TRUE : JNI_FALSE;
}

typedef FERRUM_Error *(*model_call)(FERRUM_Server *, const char *);

static void call_model(JNIEnv *env, jlong server, jstring model, model_call call) {
  char *name = c_string(env, model);
  FERRUM_Error *err = name ? call((FERRUM_Server *)(intptr_t)server, name) : invalid("model is null");
  free(name);
  throw_error(env, err);
}

JNIEXPORT void JNICALL Java_io_ferrum_Server_loadModel(JNIEnv *env, jclass cls, jlong server,
                                                       jstring model) {
  (void)cls;
  call_model(env, server, model, FERRUM_ServerLoadModel);
}

JNIEXPORT void JNICALL Java_io_ferrum_Server_unloadModel(JNIEnv *env, jclass cls, jlong server,
                                                         jstring model) {
  (void)cls;
  call_model(env, server, model, FERRUM_ServerUnloadModel);
}

typedef FERRUM_Error *(*json_call)(FERRUM_Server *, const char *, int64_t, char **);

static jstring call_json(JNIEnv *env, jlong server, jstring model, json_call call) {
  char *name = c_string(env, model);
  char *json = NULL;
  FERRUM_Error *err = name ? call((FERRUM_Server *)(intptr_t)server, name, -1, &json)
                           : invalid("model is null");
  free(name);
  if (throw_error(env, err)) return NULL;
  jstring out = (*env)->NewStringUTF(env, json);
  FERRUM_ErrorDelete(FERRUM_StringDelete(json));
  return out;
}

JNIEXPORT jstring JNICALL Java_io_ferrum_Server_modelMetadata(JNIEnv *env, jclass cls,
                                                              jlong server, jstring model) {
  (void)cls;
  return call_json(env, server, model, FERRUM_ServerModelMetadata);
}

JNIEXPORT jstring JNICALL Java_io_ferrum_Server_modelStatistics(JNIEnv *env, jclass cls,
                                                                jlong server, jstring model) {
  (void)cls;
  return call_json(env, server, model, FERRUM_ServerModelStatistics);
}

/* Responses of an asynchronous inference, gathered under a lock. */
struct gather {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int done;
  int count, capacity;
  FERRUM_InferenceResponse **responses;
};

static void on_response(FERRUM_InferenceResponse *response, uint32_t flags, void *userp) {
  struct gather *g = userp;
  pthread_mutex_lock(&g->lock);
  if (response != NULL) {
    if (g->count == g->capacity) {
      int capacity = g->capacity ? 2 * g->capacity : 8;
      FERRUM_InferenceResponse **grown = realloc(g->responses, capacity * sizeof *grown);
      if (grown != NULL) {
        g->responses = grown;
        g->capacity = capacity;
      }
    }
    if (g->count < g->capacity) g->responses[g->count++] = response;
    else FERRUM_ErrorDelete(FERRUM_InferenceResponseDelete(response));
  }
  if (flags & FERRUM_RESPONSE_COMPLETE_FINAL) {
    g->done = 1;
    pthread_cond_signal(&g->cond);
  }
  pthread_mutex_unlock(&g->lock);
}

/* The outputs of a response as a Tensor[] (NULL with an exception pending on failure). */
static jobjectArray to_java(JNIEnv *env, FERRUM_InferenceResponse *response) {
  FERRUM_Error *failed = NULL;
  FERRUM_Error *err = FERRUM_InferenceResponseError(response, &failed);
  if (throw_error(env, err) || throw_error(env, failed)) return NULL;
  uint32_t count = 0;
  if (throw_error(env, FERRUM_InferenceResponseOutputCount(response, &count))) return NULL;
  jclass tensor = (*env)->FindClass(env, "io/ferrum/Tensor");
  if (tensor == NULL) return NULL;
  jmethodID ctor =
      (*env)->GetMethodID(env, tensor, "<init>", "(Ljava/lang/String;Ljava/lang/String;[J[B)V");
  jobjectArray out = (*env)->NewObjectArray(env, (jsize)count, tensor, NULL);
  for (uint32_t i = 0; out != NULL && i < count; i++) {
    const char *name, *datatype;
    const int64_t *shape;
    uint64_t dims;
    const void *base;
    size_t size;
    if (throw_error(env, FERRUM_InferenceResponseOutput(response, i, &name, &datatype, &shape,
                                                        &dims, &base, &size, NULL, NULL, NULL)))
      return NULL;
    jlongArray jshape = (*env)->NewLongArray(env, (jsize)dims);
    jbyteArray jdata = (*env)->NewByteArray(env, (jsize)size);
    if (jshape == NULL || jdata == NULL) return NULL;
    (*env)->SetLongArrayRegion(env, jshape, 0, (jsize)dims, (const jlong *)shape);
    (*env)->SetByteArrayRegion(env, jdata, 0, (jsize)size, (const jbyte *)base);
    jobject t = (*env)->NewObject(env, tensor, ctor, (*env)->NewStringUTF(env, name),
                                  (*env)->NewStringUTF(env, datatype), jshape, jdata);
    if (t == NULL) return NULL;
    (*env)->SetObjectArrayElement(env, out, (jsize)i, t);
  }
  return out;
}

/* Adds the Java tensors to the request as inputs. */
static FERRUM_Error *add_inputs(JNIEnv *env, FERRUM_InferenceRequest *request, jobjectArray inputs) {
  jclass tensor = (*env)->FindClass(env, "io/ferrum/Tensor");
  if (tensor == NULL) return invalid("no class io.ferrum.Tensor");
  jfieldID f_name = (*env)->GetFieldID(env, tensor, "name", "Ljava/lang/String;");
  jfieldID f_type = (*env)->GetFieldID(env, tensor, "datatype", "Ljava/lang/String;");
  jfieldID f_shape = (*env)->GetFieldID(env, tensor, "shape", "[J");
  jfieldID f_data = (*env)->GetFieldID(env, tensor, "data", "[B");
  jsize n = inputs ? (*env)->GetArrayLength(env, inputs) : 0;
  FERRUM_Error *err = NULL;
  for (jsize i = 0; err == NULL && i < n; i++) {
    jobject t = (*env)->GetObjectArrayElement(env, inputs, i);
    if (t == NULL) return invalid("null input tensor");
    char *name = c_string(env, (jstring)(*env)->GetObjectField(env, t, f_name));
    char *type = c_string(env, (jstring)(*env)->GetObjectField(env, t, f_type));
    jlongArray shape = (jlongArray)(*env)->GetObjectField(env, t, f_shape);
    jbyteArray data = (jbyteArray)(*env)->GetObjectField(env, t, f_data);
    if (name == NULL || type == NULL || shape == NULL || data == NULL) {
      err = invalid("an input tensor has a null field");
    } else {
      jsize dims = (*env)->GetArrayLength(env, shape);
      jlong *s = (*env)->GetLongArrayElements(env, shape, NULL);
      err = FERRUM_InferenceRequestAddInput(request, name, type, (const int64_t *)s, (uint64_t)dims);
      (*env)->ReleaseLongArrayElements(env, shape, s, JNI_ABORT);
      if (err == NULL) {
        jsize size = (*env)->GetArrayLength(env, data);
        jbyte *bytes = (*env)->GetByteArrayElements(env, data, NULL);
        /* The C API copies the bytes before it returns. */
        err = FERRUM_InferenceRequestAppendInputData(request, name, bytes, (size_t)size,
                                                     FERRUM_MEMORY_CPU, 0);
        (*env)->ReleaseByteArrayElements(env, data, bytes, JNI_ABORT);
      }
    }
    free(name);
    free(type);
  }
  return err;
}

JNIEXPORT jobjectArray JNICALL Java_io_ferrum_Server_infer(JNIEnv *env, jclass cls, jlong handle,
                                                           jstring model, jobjectArray inputs,
                                                           jboolean stream) {
  (void)cls;
  FERRUM_Server *server = (FERRUM_Server *)(intptr_t)handle;
  FERRUM_InferenceRequest *request = NULL;
  char *name = c_string(env, model);
  FERRUM_Error *err = name ? FERRUM_InferenceRequestNew(&request, server, name, -1)
                           : invalid("model is null");
  free(name);
  if (err == NULL) err = add_inputs(env, request, inputs);
  jclass array_class = (*env)->FindClass(env, "[Lio/ferrum/Tensor;");
  jobjectArray result = NULL;
  if (err == NULL && !stream) {
    FERRUM_InferenceResponse *response = NULL;
    err = FERRUM_ServerInferSync(server, request, &response);
    if (err == NULL) {
      jobjectArray outputs = to_java(env, response);
      FERRUM_ErrorDelete(FERRUM_InferenceResponseDelete(response));
      if (outputs != NULL) {
        result = (*env)->NewObjectArray(env, 1, array_class, NULL);
        if (result != NULL) (*env)->SetObjectArrayElement(env, result, 0, outputs);
      }
    }
  } else if (err == NULL) {
    struct gather g;
    memset(&g, 0, sizeof g);
    pthread_mutex_init(&g.lock, NULL);
    pthread_cond_init(&g.cond, NULL);
    err = FERRUM_InferenceRequestSetResponseCallback(request, NULL, NULL, on_response, &g);
    if (err == NULL) err = FERRUM_ServerInferAsync(server, request);
    if (err == NULL) {
      pthread_mutex_lock(&g.lock);
      while (!g.done) pthread_cond_wait(&g.cond, &g.lock);
      pthread_mutex_unlock(&g.lock);
      result = (*env)->NewObjectArray(env, g.count, array_class, NULL);
      for (int i = 0; result != NULL && i < g.count; i++) {
        jobjectArray outputs = to_java(env, g.responses[i]);
        if (outputs == NULL) {
          result = NULL;
          break;
        }
        (*env)->SetObjectArrayElement(env, result, i, outputs);
      }
    }
    for (int i = 0; i < g.count; i++)
      FERRUM_ErrorDelete(FERRUM_InferenceResponseDelete(g.responses[i]));
    free(g.responses);
    pthread_mutex_destroy(&g.lock);
    pthread_cond_destroy(&g.cond);
  }
  if (request != NULL) FERRUM_ErrorDelete(FERRUM_InferenceRequestDelete(request));
  throw_error(env, err);
  return result;
}
