// What edgemfm's ONNX Runtime custom-op libraries share (matmul_int4.cpp, attention.cpp): the API table, errors as
// statuses, tensor shapes, and an OrtCustomOp whose callbacks come from a plain description. Each library is its
// own shared object with its own copy of these (inline, header-only).

#pragma once

#include <cstdint>
#include <vector>

#include "onnxruntime/onnxruntime_c_api.h"

namespace edgemfm_ort {

inline const OrtApi* api = nullptr;  // set by the library's RegisterCustomOps

inline OrtStatusPtr fail(const char* message) { return api->CreateStatus(ORT_INVALID_ARGUMENT, message); }

#define EDGEMFM_TRY(call)                            \
  do {                                               \
    if (OrtStatusPtr status = (call)) return status; \
  } while (0)

// A tensor's dims and element count.
inline OrtStatusPtr shape_of(const OrtValue* value, std::vector<int64_t>& dims, int64_t& count) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  EDGEMFM_TRY(api->GetTensorTypeAndShape(value, &info));
  size_t rank = 0;
  OrtStatusPtr status = api->GetDimensionsCount(info, &rank);
  if (!status) {
    dims.resize(rank);
    status = api->GetDimensions(info, dims.data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  count = 1;
  for (int64_t d : dims) count *= d;
  return status;
}

// An input's data, or null where an optional input is absent.
template <class T>
OrtStatusPtr input(OrtKernelContext* context, size_t index, const OrtValue** value, const T** data) {
  size_t count = 0;
  *value = nullptr;
  *data = nullptr;
  EDGEMFM_TRY(api->KernelContext_GetInputCount(context, &count));
  if (index >= count) return nullptr;
  EDGEMFM_TRY(api->KernelContext_GetInput(context, index, value));
  if (*value == nullptr) return nullptr;
  return api->GetTensorData(*value, reinterpret_cast<const void**>(data));
}

// An output of `dims`, and its data.
template <class T>
OrtStatusPtr output(OrtKernelContext* context, size_t index, const std::vector<int64_t>& dims, T** data) {
  OrtValue* value = nullptr;
  EDGEMFM_TRY(api->KernelContext_GetOutput(context, index, dims.data(), dims.size(), &value));
  return api->GetTensorMutableData(value, reinterpret_cast<void**>(data));
}

// An op's description: its name, its inputs' and outputs' element types (optional inputs marked), and how its
// kernel is made from the node (attributes read once) and run.
struct Description {
  const char* name;
  std::vector<ONNXTensorElementDataType> inputs, outputs;
  std::vector<bool> optional;  // per input
  void* (*create)(const OrtKernelInfo* info, OrtStatusPtr* status);
  OrtStatusPtr (*compute)(void* kernel, OrtKernelContext* context);
  void (*destroy)(void* kernel);
};

// A kernel made from a description: its own state and the description that runs it.
struct Kernel {
  const Description* description;
  void* state;
};

// The OrtCustomOp of a description (every callback set, as ONNX Runtime reads them by version).
struct Op : OrtCustomOp {
  const Description* description;
  explicit Op(const Description* d) : OrtCustomOp{}, description(d) {
    version = ORT_API_VERSION;
    GetName = [](const OrtCustomOp* op) { return of(op).name; };
    GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CPUExecutionProvider"; };
    GetInputTypeCount = [](const OrtCustomOp* op) { return of(op).inputs.size(); };
    GetInputType = [](const OrtCustomOp* op, size_t i) { return of(op).inputs[i]; };
    GetOutputTypeCount = [](const OrtCustomOp* op) { return of(op).outputs.size(); };
    GetOutputType = [](const OrtCustomOp* op, size_t i) { return of(op).outputs[i]; };
    GetInputCharacteristic = [](const OrtCustomOp* op, size_t i) {
      return of(op).optional[i] ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** out) {
      OrtStatusPtr status = nullptr;
      void* state = of(op).create(info, &status);
      *out = status ? nullptr : new Kernel{&of(op), state};
      return status;
    };
    KernelComputeV2 = [](void* kernel, OrtKernelContext* context) {
      const Kernel& k = *static_cast<Kernel*>(kernel);
      return k.description->compute(k.state, context);
    };
    KernelDestroy = [](void* kernel) {
      const Kernel* k = static_cast<Kernel*>(kernel);
      k->description->destroy(k->state);
      delete k;
    };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 1 << 30; };
  }
  static const Description& of(const OrtCustomOp* op) { return *static_cast<const Op*>(op)->description; }
};

// Register `ops` in `domain` of a session's options: a domain of each library's own (ONNX Runtime refuses a
// session whose libraries add one domain twice).
inline OrtStatusPtr register_ops(OrtSessionOptions* options, const OrtApiBase* base, const char* name,
                                 const std::vector<Op*>& ops) {
  api = base->GetApi(ORT_API_VERSION);
  if (!api) return nullptr;  // an onnxruntime older than these headers: the graph's ops then go unregistered
  OrtCustomOpDomain* domain = nullptr;
  EDGEMFM_TRY(api->CreateCustomOpDomain(name, &domain));
  for (Op* op : ops) EDGEMFM_TRY(api->CustomOpDomain_Add(domain, op));
  return api->AddCustomOpDomain(options, domain);
}

}  // namespace edgemfm_ort
