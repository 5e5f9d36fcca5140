/*
 * JNI glue between ONNX Runtime's Java classes (classes.jar of the Android AAR, ORT 1.29.0) and
 * ONNX Runtime's C library for Linux x86-64 (the same release, from onnxruntime-node), so the
 * app's Java decode loop runs on a plain JVM in the host test.
 *
 * Why it exists: on a phone the AAR's own libonnxruntime4j_jni.so does this job, but ORT publishes
 * its Linux Java build only to Maven, which CI cannot reach, and the AAR's x86_64 glue is linked
 * against Android's libc. This file implements just the native methods the decode loop reaches
 * (environment, session options, sessions by path, tensors from direct buffers, run, close);
 * every other native method of classes.jar stays unresolved and fails loudly if called
 * (UnsatisfiedLinkError), so nothing can silently take a different path than on the phone.
 *
 * Each function mirrors the Java declaration noted above it (javap -p on classes.jar).
 */
#include <jni.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

#define API(h) ((const OrtApi*)(intptr_t)(h))

/* ---- errors ---------------------------------------------------------------------------- */

static void throw_ort(JNIEnv* env, int code, const char* message) {
  jclass cls = (*env)->FindClass(env, "ai/onnxruntime/OrtException");
  jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "(ILjava/lang/String;)V");
  jstring msg = (*env)->NewStringUTF(env, message);
  (*env)->Throw(env, (jthrowable)(*env)->NewObject(env, cls, ctor, (jint)code, msg));
}

/* Turns a failed OrtStatus into a pending OrtException; returns 1 when it failed. */
static int failed(JNIEnv* env, const OrtApi* api, OrtStatus* status) {
  if (status == NULL) return 0;
  throw_ort(env, (int)api->GetErrorCode(status), api->GetErrorMessage(status));
  api->ReleaseStatus(status);
  return 1;
}

/* ---- element types: the C enum and Java's TensorInfo.OnnxTensorType number them differently */

static const int kCToJava[] = {
    /* UNDEFINED */ 0, /* FLOAT */ 10, /* UINT8 */ 1, /* INT8 */ 2, /* UINT16 */ 3, /* INT16 */ 4,
    /* INT32 */ 6, /* INT64 */ 8, /* STRING */ 12, /* BOOL */ 13, /* FLOAT16 */ 9, /* DOUBLE */ 11,
    /* UINT32 */ 5, /* UINT64 */ 7, /* COMPLEX64 */ 14, /* COMPLEX128 */ 15, /* BFLOAT16 */ 16,
    /* FLOAT8E4M3FN */ 17, /* FLOAT8E4M3FNUZ */ 18, /* FLOAT8E5M2 */ 19, /* FLOAT8E5M2FNUZ */ 20};
#define N_TYPES ((int)(sizeof(kCToJava) / sizeof(kCToJava[0])))

static int c_to_java_type(ONNXTensorElementDataType t) {
  return (int)t < N_TYPES ? kCToJava[t] : 0;
}

static ONNXTensorElementDataType java_to_c_type(int j) {
  for (int c = 0; c < N_TYPES; c++) {
    if (kCToJava[c] == j) return (ONNXTensorElementDataType)c;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

/* ---- ai.onnxruntime.OnnxRuntime -------------------------------------------------------- */

/* private static native long initialiseAPIBase(int apiVersion) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OnnxRuntime_initialiseAPIBase(JNIEnv* env, jclass c, jint version) {
  (void)env; (void)c;
  return (jlong)(intptr_t)OrtGetApiBase()->GetApi((uint32_t)version);
}

/* private static native long initialiseTrainingAPIBase(long api, int version): 0 = no training */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OnnxRuntime_initialiseTrainingAPIBase(JNIEnv* env, jclass c, jlong api, jint v) {
  (void)env; (void)c; (void)api; (void)v;
  return 0;
}

/* private static native long initialiseCompileAPIBase(long api) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OnnxRuntime_initialiseCompileAPIBase(JNIEnv* env, jclass c, jlong api) {
  (void)env; (void)c;
  return (jlong)(intptr_t)API(api)->GetCompileApi();
}

/* private static native String[] getAvailableProviders(long api) */
JNIEXPORT jobjectArray JNICALL Java_ai_onnxruntime_OnnxRuntime_getAvailableProviders(JNIEnv* env, jclass c, jlong h) {
  (void)c;
  const OrtApi* api = API(h);
  char** names = NULL;
  int n = 0;
  if (failed(env, api, api->GetAvailableProviders(&names, &n))) return NULL;
  jobjectArray out = (*env)->NewObjectArray(env, n, (*env)->FindClass(env, "java/lang/String"), NULL);
  for (int i = 0; i < n; i++) {
    (*env)->SetObjectArrayElement(env, out, i, (*env)->NewStringUTF(env, names[i]));
  }
  failed(env, api, api->ReleaseAvailableProviders(names, n));
  return out;
}

/* private static native String initialiseVersion() */
JNIEXPORT jstring JNICALL Java_ai_onnxruntime_OnnxRuntime_initialiseVersion(JNIEnv* env, jclass c) {
  (void)c;
  return (*env)->NewStringUTF(env, OrtGetApiBase()->GetVersionString());
}

/* ---- ai.onnxruntime.OrtEnvironment ------------------------------------------------------ */

/* private static native long createHandle(long api, int loggingLevel, String name) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OrtEnvironment_createHandle__JILjava_lang_String_2(
    JNIEnv* env, jclass c, jlong h, jint level, jstring name) {
  (void)c;
  const OrtApi* api = API(h);
  const char* cname = (*env)->GetStringUTFChars(env, name, NULL);
  OrtEnv* ortEnv = NULL;
  OrtStatus* s = api->CreateEnv((OrtLoggingLevel)level, cname, &ortEnv);
  (*env)->ReleaseStringUTFChars(env, name, cname);
  return failed(env, api, s) ? 0 : (jlong)(intptr_t)ortEnv;
}

/* private static native long getDefaultAllocator(long api) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OrtEnvironment_getDefaultAllocator(JNIEnv* env, jclass c, jlong h) {
  (void)c;
  OrtAllocator* a = NULL;
  return failed(env, API(h), API(h)->GetAllocatorWithDefaultOptions(&a)) ? 0 : (jlong)(intptr_t)a;
}

/* private static native void close(long api, long envHandle) */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtEnvironment_close(JNIEnv* env, jclass c, jlong h, jlong e) {
  (void)env; (void)c;
  API(h)->ReleaseEnv((OrtEnv*)(intptr_t)e);
}

/* private static native void setTelemetry(long api, long envHandle, boolean on) */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtEnvironment_setTelemetry(JNIEnv* env, jclass c, jlong h, jlong e, jboolean on) {
  (void)c;
  const OrtApi* api = API(h);
  OrtEnv* ortEnv = (OrtEnv*)(intptr_t)e;
  failed(env, api, on ? api->EnableTelemetryEvents(ortEnv) : api->DisableTelemetryEvents(ortEnv));
}

/* ---- ai.onnxruntime.OrtAllocator --------------------------------------------------------- */

/* private native void closeAllocator(long api, long handle): never the default allocator */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtAllocator_closeAllocator(JNIEnv* env, jobject o, jlong h, jlong a) {
  (void)env; (void)o;
  API(h)->ReleaseAllocator((OrtAllocator*)(intptr_t)a);
}

/* ---- ai.onnxruntime.OrtSession.SessionOptions ------------------------------------------- */

/* private native long createOptions(long api) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OrtSession_00024SessionOptions_createOptions(JNIEnv* env, jobject o, jlong h) {
  (void)o;
  OrtSessionOptions* opts = NULL;
  return failed(env, API(h), API(h)->CreateSessionOptions(&opts)) ? 0 : (jlong)(intptr_t)opts;
}

/* private native void closeOptions(long api, long handle) */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtSession_00024SessionOptions_closeOptions(JNIEnv* env, jobject o, jlong h, jlong opts) {
  (void)env; (void)o;
  API(h)->ReleaseSessionOptions((OrtSessionOptions*)(intptr_t)opts);
}

/* private native void closeCustomLibraries(long[] handles): none are registered here */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtSession_00024SessionOptions_closeCustomLibraries(JNIEnv* env, jobject o, jlongArray libs) {
  (void)o;
  if (libs != NULL && (*env)->GetArrayLength(env, libs) > 0) {
    throw_ort(env, 1, "custom op libraries are not supported by the host JNI glue");
  }
}

/* private native void setIntraOpNumThreads(long api, long handle, int n) */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtSession_00024SessionOptions_setIntraOpNumThreads(JNIEnv* env, jobject o, jlong h, jlong opts, jint n) {
  (void)o;
  failed(env, API(h), API(h)->SetIntraOpNumThreads((OrtSessionOptions*)(intptr_t)opts, n));
}

/* private native void setInterOpNumThreads(long api, long handle, int n) */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtSession_00024SessionOptions_setInterOpNumThreads(JNIEnv* env, jobject o, jlong h, jlong opts, jint n) {
  (void)o;
  failed(env, API(h), API(h)->SetInterOpNumThreads((OrtSessionOptions*)(intptr_t)opts, n));
}

/* private native void setOptimizationLevel(long api, long handle, int level): same numbers as C */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtSession_00024SessionOptions_setOptimizationLevel(JNIEnv* env, jobject o, jlong h, jlong opts, jint level) {
  (void)o;
  failed(env, API(h), API(h)->SetSessionGraphOptimizationLevel((OrtSessionOptions*)(intptr_t)opts, (GraphOptimizationLevel)level));
}

/* ---- ai.onnxruntime.OrtSession ----------------------------------------------------------- */

/* private static native long createSession(long api, long env, String path, long options) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OrtSession_createSession__JJLjava_lang_String_2J(
    JNIEnv* env, jclass c, jlong h, jlong e, jstring path, jlong opts) {
  (void)c;
  const OrtApi* api = API(h);
  const char* cpath = (*env)->GetStringUTFChars(env, path, NULL);
  OrtSession* session = NULL;
  OrtStatus* s = api->CreateSession((OrtEnv*)(intptr_t)e, cpath, (OrtSessionOptions*)(intptr_t)opts, &session);
  (*env)->ReleaseStringUTFChars(env, path, cpath);
  return failed(env, api, s) ? 0 : (jlong)(intptr_t)session;
}

/* private static native long createSession(long api, long env, byte[] model, long options) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OrtSession_createSession__JJ_3BJ(
    JNIEnv* env, jclass c, jlong h, jlong e, jbyteArray model, jlong opts) {
  (void)c;
  const OrtApi* api = API(h);
  jsize n = (*env)->GetArrayLength(env, model);
  jbyte* bytes = (*env)->GetByteArrayElements(env, model, NULL);
  OrtSession* session = NULL;
  OrtStatus* s = api->CreateSessionFromArray((OrtEnv*)(intptr_t)e, bytes, (size_t)n, (OrtSessionOptions*)(intptr_t)opts, &session);
  (*env)->ReleaseByteArrayElements(env, model, bytes, JNI_ABORT);
  return failed(env, api, s) ? 0 : (jlong)(intptr_t)session;
}

/* private native long getNumInputs(long api, long session) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OrtSession_getNumInputs(JNIEnv* env, jobject o, jlong h, jlong s) {
  (void)o;
  size_t n = 0;
  failed(env, API(h), API(h)->SessionGetInputCount((OrtSession*)(intptr_t)s, &n));
  return (jlong)n;
}

/* private native long getNumOutputs(long api, long session) */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OrtSession_getNumOutputs(JNIEnv* env, jobject o, jlong h, jlong s) {
  (void)o;
  size_t n = 0;
  failed(env, API(h), API(h)->SessionGetOutputCount((OrtSession*)(intptr_t)s, &n));
  return (jlong)n;
}

typedef OrtStatus*(ORT_API_CALL* NameFn)(const OrtSession*, size_t, OrtAllocator*, char**);
typedef OrtStatus*(ORT_API_CALL* CountFn)(const OrtSession*, size_t*);

static jobjectArray names(JNIEnv* env, const OrtApi* api, OrtSession* s, OrtAllocator* a, CountFn count, NameFn name) {
  size_t n = 0;
  if (failed(env, api, count(s, &n))) return NULL;
  jobjectArray out = (*env)->NewObjectArray(env, (jsize)n, (*env)->FindClass(env, "java/lang/String"), NULL);
  for (size_t i = 0; i < n; i++) {
    char* str = NULL;
    if (failed(env, api, name(s, i, a, &str))) return NULL;
    (*env)->SetObjectArrayElement(env, out, (jsize)i, (*env)->NewStringUTF(env, str));
    failed(env, api, api->AllocatorFree(a, str));
  }
  return out;
}

/* private native String[] getInputNames(long api, long session, long allocator) */
JNIEXPORT jobjectArray JNICALL Java_ai_onnxruntime_OrtSession_getInputNames(JNIEnv* env, jobject o, jlong h, jlong s, jlong a) {
  (void)o;
  const OrtApi* api = API(h);
  return names(env, api, (OrtSession*)(intptr_t)s, (OrtAllocator*)(intptr_t)a, api->SessionGetInputCount, api->SessionGetInputName);
}

/* private native String[] getOutputNames(long api, long session, long allocator) */
JNIEXPORT jobjectArray JNICALL Java_ai_onnxruntime_OrtSession_getOutputNames(JNIEnv* env, jobject o, jlong h, jlong s, jlong a) {
  (void)o;
  const OrtApi* api = API(h);
  return names(env, api, (OrtSession*)(intptr_t)s, (OrtAllocator*)(intptr_t)a, api->SessionGetOutputCount, api->SessionGetOutputName);
}

/* A Java TensorInfo(long[] shape, String[] dimensionNames, int type) from an ORT shape description. */
static jobject tensor_info(JNIEnv* env, const OrtApi* api, const OrtTensorTypeAndShapeInfo* info) {
  ONNXTensorElementDataType type;
  size_t rank = 0;
  if (failed(env, api, api->GetTensorElementType(info, &type))) return NULL;
  if (failed(env, api, api->GetDimensionsCount(info, &rank))) return NULL;
  int64_t* dims = calloc(rank + 1, sizeof(int64_t));
  const char** symbolic = calloc(rank + 1, sizeof(char*));
  jobject result = NULL;
  if (!failed(env, api, api->GetDimensions(info, dims, rank)) &&
      !failed(env, api, api->GetSymbolicDimensions(info, symbolic, rank))) {
    jlongArray shape = (*env)->NewLongArray(env, (jsize)rank);
    (*env)->SetLongArrayRegion(env, shape, 0, (jsize)rank, (const jlong*)dims);
    jobjectArray dimNames = (*env)->NewObjectArray(env, (jsize)rank, (*env)->FindClass(env, "java/lang/String"), NULL);
    for (size_t i = 0; i < rank; i++) {
      (*env)->SetObjectArrayElement(env, dimNames, (jsize)i, (*env)->NewStringUTF(env, symbolic[i] ? symbolic[i] : ""));
    }
    jclass cls = (*env)->FindClass(env, "ai/onnxruntime/TensorInfo");
    jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "([J[Ljava/lang/String;I)V");
    result = (*env)->NewObject(env, cls, ctor, shape, dimNames, (jint)c_to_java_type(type));
  }
  free(dims);
  free((void*)symbolic);
  return result;
}

/* An OnnxTensor(long handle, long allocator, TensorInfo info) owning `value`; tensors only. */
static jobject java_tensor(JNIEnv* env, const OrtApi* api, OrtAllocator* a, OrtValue* value) {
  enum ONNXType kind;
  if (failed(env, api, api->GetValueType(value, &kind))) return NULL;
  if (kind != ONNX_TYPE_TENSOR) {
    throw_ort(env, 9, "the host JNI glue returns tensors only (got a map, sequence or sparse tensor)");
    return NULL;
  }
  OrtTensorTypeAndShapeInfo* info = NULL;
  if (failed(env, api, api->GetTensorTypeAndShape(value, &info))) return NULL;
  jobject jinfo = tensor_info(env, api, info);
  api->ReleaseTensorTypeAndShapeInfo(info);
  if (jinfo == NULL) return NULL;
  jclass cls = (*env)->FindClass(env, "ai/onnxruntime/OnnxTensor");
  jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "(JJLai/onnxruntime/TensorInfo;)V");
  return (*env)->NewObject(env, cls, ctor, (jlong)(intptr_t)value, (jlong)(intptr_t)a, jinfo);
}

/*
 * private native boolean[] run(long api, long session, long allocator, String[] inputNames,
 *     long[] inputHandles, long numInputs, String[] outputNames, long numOutputs,
 *     OnnxValue[] outputValues, long[] outputHandles, long runOptions)
 * outputValues[i] already set (a pinned output) is left alone; the others receive new tensors and
 * the returned flag says the Java side owns them.
 */
JNIEXPORT jbooleanArray JNICALL Java_ai_onnxruntime_OrtSession_run(
    JNIEnv* env, jobject o, jlong h, jlong s, jlong a, jobjectArray inNames, jlongArray inHandles, jlong nIn,
    jobjectArray outNames, jlong nOut, jobjectArray outValues, jlongArray outHandles, jlong runOptions) {
  (void)o;
  const OrtApi* api = API(h);
  const char** inC = calloc((size_t)nIn + 1, sizeof(char*));
  const char** outC = calloc((size_t)nOut + 1, sizeof(char*));
  const OrtValue** inV = calloc((size_t)nIn + 1, sizeof(OrtValue*));
  OrtValue** outV = calloc((size_t)nOut + 1, sizeof(OrtValue*));
  jlong* inH = (*env)->GetLongArrayElements(env, inHandles, NULL);
  jlong* outH = (*env)->GetLongArrayElements(env, outHandles, NULL);
  for (jlong i = 0; i < nIn; i++) {
    inC[i] = (*env)->GetStringUTFChars(env, (jstring)(*env)->GetObjectArrayElement(env, inNames, (jsize)i), NULL);
    inV[i] = (const OrtValue*)(intptr_t)inH[i];
  }
  for (jlong i = 0; i < nOut; i++) {
    outC[i] = (*env)->GetStringUTFChars(env, (jstring)(*env)->GetObjectArrayElement(env, outNames, (jsize)i), NULL);
    outV[i] = (OrtValue*)(intptr_t)outH[i];
  }
  (*env)->ReleaseLongArrayElements(env, inHandles, inH, JNI_ABORT);
  (*env)->ReleaseLongArrayElements(env, outHandles, outH, JNI_ABORT);

  jbooleanArray owned = NULL;
  OrtStatus* st = api->Run((OrtSession*)(intptr_t)s, (OrtRunOptions*)(intptr_t)runOptions, inC, inV, (size_t)nIn,
                           outC, (size_t)nOut, outV);
  if (!failed(env, api, st)) {
    owned = (*env)->NewBooleanArray(env, (jsize)nOut);
    for (jlong i = 0; i < nOut; i++) {
      if (outV[i] == NULL || (*env)->GetObjectArrayElement(env, outValues, (jsize)i) != NULL) continue;
      jobject t = java_tensor(env, api, (OrtAllocator*)(intptr_t)a, outV[i]);
      if (t == NULL) {
        owned = NULL;
        break;
      }
      jboolean yes = JNI_TRUE;
      (*env)->SetBooleanArrayRegion(env, owned, (jsize)i, 1, &yes);
      (*env)->SetObjectArrayElement(env, outValues, (jsize)i, t);
    }
  }
  for (jlong i = 0; i < nIn; i++) {
    (*env)->ReleaseStringUTFChars(env, (jstring)(*env)->GetObjectArrayElement(env, inNames, (jsize)i), inC[i]);
  }
  for (jlong i = 0; i < nOut; i++) {
    (*env)->ReleaseStringUTFChars(env, (jstring)(*env)->GetObjectArrayElement(env, outNames, (jsize)i), outC[i]);
  }
  free((void*)inC);
  free((void*)outC);
  free((void*)inV);
  free(outV);
  return owned;
}

/* private native void closeSession(long api, long session) */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OrtSession_closeSession(JNIEnv* env, jobject o, jlong h, jlong s) {
  (void)env; (void)o;
  API(h)->ReleaseSession((OrtSession*)(intptr_t)s);
}

/* ---- ai.onnxruntime.OnnxTensor ------------------------------------------------------------ */

/*
 * private static native long createTensorFromBuffer(long api, long allocator, Buffer data,
 *     int bytePosition, long byteSize, long[] shape, int javaType)
 * The tensor borrows the direct buffer's memory; the Java OnnxTensor keeps the buffer alive.
 */
JNIEXPORT jlong JNICALL Java_ai_onnxruntime_OnnxTensor_createTensorFromBuffer(
    JNIEnv* env, jclass c, jlong h, jlong a, jobject buffer, jint pos, jlong byteSize, jlongArray shape, jint javaType) {
  (void)c; (void)a;
  const OrtApi* api = API(h);
  char* base = (char*)(*env)->GetDirectBufferAddress(env, buffer);
  OrtMemoryInfo* mem = NULL;
  if (failed(env, api, api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem))) return 0;
  jsize rank = (*env)->GetArrayLength(env, shape);
  jlong* dims = (*env)->GetLongArrayElements(env, shape, NULL);
  OrtValue* value = NULL;
  OrtStatus* st = api->CreateTensorWithDataAsOrtValue(mem, base == NULL ? NULL : base + pos, (size_t)byteSize,
                                                      (const int64_t*)dims, (size_t)rank, java_to_c_type(javaType), &value);
  (*env)->ReleaseLongArrayElements(env, shape, dims, JNI_ABORT);
  api->ReleaseMemoryInfo(mem);
  return failed(env, api, st) ? 0 : (jlong)(intptr_t)value;
}

/* private native ByteBuffer getBuffer(long api, long handle): a view of the tensor's memory */
JNIEXPORT jobject JNICALL Java_ai_onnxruntime_OnnxTensor_getBuffer(JNIEnv* env, jobject o, jlong h, jlong v) {
  (void)o;
  const OrtApi* api = API(h);
  OrtValue* value = (OrtValue*)(intptr_t)v;
  OrtTensorTypeAndShapeInfo* info = NULL;
  if (failed(env, api, api->GetTensorTypeAndShape(value, &info))) return NULL;
  size_t count = 0;
  ONNXTensorElementDataType type;
  OrtStatus* st = api->GetTensorShapeElementCount(info, &count);
  if (st == NULL) st = api->GetTensorElementType(info, &type);
  api->ReleaseTensorTypeAndShapeInfo(info);
  if (failed(env, api, st)) return NULL;
  size_t elem;
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: elem = 1; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: elem = 2; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: elem = 4; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: elem = 8; break;
    default:
      throw_ort(env, 9, "the host JNI glue reads numeric tensors only");
      return NULL;
  }
  void* data = NULL;
  if (failed(env, api, api->GetTensorMutableData(value, &data))) return NULL;
  return (*env)->NewDirectByteBuffer(env, data, (jlong)(count * elem));
}

/* private native void close(long api, long handle) */
JNIEXPORT void JNICALL Java_ai_onnxruntime_OnnxTensor_close(JNIEnv* env, jobject o, jlong h, jlong v) {
  (void)env; (void)o;
  API(h)->ReleaseValue((OrtValue*)(intptr_t)v);
}
