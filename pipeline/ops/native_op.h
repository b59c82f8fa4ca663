// What every native op's source takes from TensorFlow (native.py builds them all into one
// library): the framework's headers and the names the kernels use.
#ifndef AUGBATCH_NATIVE_OP_H_
#define AUGBATCH_NATIVE_OP_H_

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace augbatch {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
namespace errors = tensorflow::errors;

}  // namespace augbatch

#endif  // AUGBATCH_NATIVE_OP_H_
