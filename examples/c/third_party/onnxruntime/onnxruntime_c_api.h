/* REDUCED copy of ONNX Runtime's C API header (onnxruntime_c_api.h, ORT_API_VERSION 29), written by
 * examples/c/reduce_ort_header.py: only what examples/c/recipe.c uses, OrtApi's member order kept up to the
 * last member it calls. Build against the full official header instead with ORT_INCLUDE=DIR examples/c/build.sh.
 *
 * Copyright (c) Microsoft Corporation. All rights reserved.
 * Licensed under the MIT License (see LICENSE-onnxruntime beside this file).
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#define ORT_API_VERSION 29
#define ORT_API_CALL
#define ORTCHAR_T char

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX128,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FN,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FNUZ,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E5M2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E5M2FNUZ,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT4,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT4,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT4E2M1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E8M0,
} ONNXTensorElementDataType;

typedef enum OrtLoggingLevel {
  ORT_LOGGING_LEVEL_VERBOSE,
  ORT_LOGGING_LEVEL_INFO,
  ORT_LOGGING_LEVEL_WARNING,
  ORT_LOGGING_LEVEL_ERROR,
  ORT_LOGGING_LEVEL_FATAL,
} OrtLoggingLevel;

typedef enum OrtErrorCode {
  ORT_OK,
  ORT_FAIL,
  ORT_INVALID_ARGUMENT,
  ORT_NO_SUCHFILE,
  ORT_NO_MODEL,
  ORT_ENGINE_ERROR,
  ORT_RUNTIME_EXCEPTION,
  ORT_INVALID_PROTOBUF,
  ORT_MODEL_LOADED,
  ORT_NOT_IMPLEMENTED,
  ORT_INVALID_GRAPH,
  ORT_EP_FAIL,
  ORT_MODEL_LOAD_CANCELED,
  ORT_MODEL_REQUIRES_COMPILATION,
  ORT_NOT_FOUND,
  ORT_DEVICE_RESET,
} OrtErrorCode;

typedef enum OrtAllocatorType {
  OrtInvalidAllocator = -1,
  OrtDeviceAllocator = 0,
  OrtArenaAllocator = 1,
  OrtReadOnlyAllocator = 2,
} OrtAllocatorType;

typedef enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeCPU = OrtMemTypeCPUOutput,
  OrtMemTypeDefault = 0,
} OrtMemType;

typedef struct OrtEnv OrtEnv;
typedef struct OrtStatus OrtStatus;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtSession OrtSession;
typedef struct OrtValue OrtValue;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtSessionOptions OrtSessionOptions;

typedef struct OrtAllocator {
  uint32_t version;
  void* (*Alloc)(struct OrtAllocator* this_, size_t size);
  void (*Free)(struct OrtAllocator* this_, void* p);
  const struct OrtMemoryInfo* (*Info)(const struct OrtAllocator* this_);
} OrtAllocator;

struct OrtApi;
typedef struct OrtApi OrtApi;

typedef struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} OrtApiBase;

const OrtApiBase* OrtGetApiBase(void);

struct OrtApi {
  void (*CreateStatus)(void); /* [0] unused here */
  void (*GetErrorCode)(void); /* [1] unused here */
  const char* (*GetErrorMessage)(const OrtStatus* status);
  OrtStatus* (*CreateEnv)(OrtLoggingLevel log_severity_level, const char* logid, OrtEnv** out);
  void (*CreateEnvWithCustomLogger)(void); /* [4] unused here */
  void (*EnableTelemetryEvents)(void); /* [5] unused here */
  void (*DisableTelemetryEvents)(void); /* [6] unused here */
  OrtStatus* (*CreateSession)(const OrtEnv* env, const ORTCHAR_T* model_path, const OrtSessionOptions* options, OrtSession** out);
  void (*CreateSessionFromArray)(void); /* [8] unused here */
  OrtStatus* (*Run)(OrtSession* session, const OrtRunOptions* run_options, const char* const* input_names, const OrtValue* const* inputs, size_t input_len, const char* const* output_names, size_t output_names_len, OrtValue** outputs);
  OrtStatus* (*CreateSessionOptions)(OrtSessionOptions** options);
  void (*SetOptimizedModelFilePath)(void); /* [11] unused here */
  void (*CloneSessionOptions)(void); /* [12] unused here */
  void (*SetSessionExecutionMode)(void); /* [13] unused here */
  void (*EnableProfiling)(void); /* [14] unused here */
  void (*DisableProfiling)(void); /* [15] unused here */
  void (*EnableMemPattern)(void); /* [16] unused here */
  void (*DisableMemPattern)(void); /* [17] unused here */
  void (*EnableCpuMemArena)(void); /* [18] unused here */
  void (*DisableCpuMemArena)(void); /* [19] unused here */
  void (*SetSessionLogId)(void); /* [20] unused here */
  void (*SetSessionLogVerbosityLevel)(void); /* [21] unused here */
  void (*SetSessionLogSeverityLevel)(void); /* [22] unused here */
  void (*SetSessionGraphOptimizationLevel)(void); /* [23] unused here */
  OrtStatus* (*SetIntraOpNumThreads)(OrtSessionOptions* options, int intra_op_num_threads);
  OrtStatus* (*SetInterOpNumThreads)(OrtSessionOptions* options, int inter_op_num_threads);
  void (*CreateCustomOpDomain)(void); /* [26] unused here */
  void (*CustomOpDomain_Add)(void); /* [27] unused here */
  void (*AddCustomOpDomain)(void); /* [28] unused here */
  void (*RegisterCustomOpsLibrary)(void); /* [29] unused here */
  OrtStatus* (*SessionGetInputCount)(const OrtSession* session, size_t* out);
  OrtStatus* (*SessionGetOutputCount)(const OrtSession* session, size_t* out);
  void (*SessionGetOverridableInitializerCount)(void); /* [32] unused here */
  void (*SessionGetInputTypeInfo)(void); /* [33] unused here */
  void (*SessionGetOutputTypeInfo)(void); /* [34] unused here */
  void (*SessionGetOverridableInitializerTypeInfo)(void); /* [35] unused here */
  OrtStatus* (*SessionGetInputName)(const OrtSession* session, size_t index, OrtAllocator* allocator, char** value);
  OrtStatus* (*SessionGetOutputName)(const OrtSession* session, size_t index, OrtAllocator* allocator, char** value);
  void (*SessionGetOverridableInitializerName)(void); /* [38] unused here */
  void (*CreateRunOptions)(void); /* [39] unused here */
  void (*RunOptionsSetRunLogVerbosityLevel)(void); /* [40] unused here */
  void (*RunOptionsSetRunLogSeverityLevel)(void); /* [41] unused here */
  void (*RunOptionsSetRunTag)(void); /* [42] unused here */
  void (*RunOptionsGetRunLogVerbosityLevel)(void); /* [43] unused here */
  void (*RunOptionsGetRunLogSeverityLevel)(void); /* [44] unused here */
  void (*RunOptionsGetRunTag)(void); /* [45] unused here */
  void (*RunOptionsSetTerminate)(void); /* [46] unused here */
  void (*RunOptionsUnsetTerminate)(void); /* [47] unused here */
  void (*CreateTensorAsOrtValue)(void); /* [48] unused here */
  OrtStatus* (*CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo* info, void* p_data, size_t p_data_len, const int64_t* shape, size_t shape_len, ONNXTensorElementDataType type, OrtValue** out);
  void (*IsTensor)(void); /* [50] unused here */
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out);
  void (*FillStringTensor)(void); /* [52] unused here */
  void (*GetStringTensorDataLength)(void); /* [53] unused here */
  void (*GetStringTensorContent)(void); /* [54] unused here */
  void (*CastTypeInfoToTensorInfo)(void); /* [55] unused here */
  void (*GetOnnxTypeFromTypeInfo)(void); /* [56] unused here */
  void (*CreateTensorTypeAndShapeInfo)(void); /* [57] unused here */
  void (*SetTensorElementType)(void); /* [58] unused here */
  void (*SetDimensions)(void); /* [59] unused here */
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, enum ONNXTensorElementDataType* out);
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dim_values, size_t dim_values_length);
  void (*GetSymbolicDimensions)(void); /* [63] unused here */
  OrtStatus* (*GetTensorShapeElementCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
  void (*GetTypeInfo)(void); /* [66] unused here */
  void (*GetValueType)(void); /* [67] unused here */
  void (*CreateMemoryInfo)(void); /* [68] unused here */
  OrtStatus* (*CreateCpuMemoryInfo)(enum OrtAllocatorType type, enum OrtMemType mem_type, OrtMemoryInfo** out);
  void (*CompareMemoryInfo)(void); /* [70] unused here */
  void (*MemoryInfoGetName)(void); /* [71] unused here */
  void (*MemoryInfoGetId)(void); /* [72] unused here */
  void (*MemoryInfoGetMemType)(void); /* [73] unused here */
  void (*MemoryInfoGetType)(void); /* [74] unused here */
  void (*AllocatorAlloc)(void); /* [75] unused here */
  OrtStatus* (*AllocatorFree)(OrtAllocator* ort_allocator, void* p);
  void (*AllocatorGetInfo)(void); /* [77] unused here */
  OrtStatus* (*GetAllocatorWithDefaultOptions)(OrtAllocator** out);
  void (*AddFreeDimensionOverride)(void); /* [79] unused here */
  void (*GetValue)(void); /* [80] unused here */
  void (*GetValueCount)(void); /* [81] unused here */
  void (*CreateValue)(void); /* [82] unused here */
  void (*CreateOpaqueValue)(void); /* [83] unused here */
  void (*GetOpaqueValue)(void); /* [84] unused here */
  void (*KernelInfoGetAttribute_float)(void); /* [85] unused here */
  void (*KernelInfoGetAttribute_int64)(void); /* [86] unused here */
  void (*KernelInfoGetAttribute_string)(void); /* [87] unused here */
  void (*KernelContext_GetInputCount)(void); /* [88] unused here */
  void (*KernelContext_GetOutputCount)(void); /* [89] unused here */
  void (*KernelContext_GetInput)(void); /* [90] unused here */
  void (*KernelContext_GetOutput)(void); /* [91] unused here */
  void (*ReleaseEnv)(OrtEnv* input);
  void (*ReleaseStatus)(OrtStatus* input);
  void (*ReleaseMemoryInfo)(OrtMemoryInfo* input);
  void (*ReleaseSession)(OrtSession* input);
  void (*ReleaseValue)(OrtValue* input);
  void (*ReleaseRunOptions)(void); /* [97] unused here */
  void (*ReleaseTypeInfo)(void); /* [98] unused here */
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* input);
  void (*ReleaseSessionOptions)(OrtSessionOptions* input);
  /* ... later members left out */
};

#ifdef __cplusplus
}
#endif
