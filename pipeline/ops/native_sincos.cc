// The sine and cosine of each angle (a rotation's matrix) as TensorFlow's Sin and Cos compute
// a tensor of one value: the C library's sinf and cosf. For 8 values or more TensorFlow's
// ops take Eigen's vectorised polynomials instead, whose last bit can differ: a copy's matrix
// would depend on how many copies share its batch. This op gives every value what it gets
// alone, so a chain with a rotation may take several copies at a time (augment.py's chunks).
#include <cmath>

#include "native_op.h"

namespace augbatch {
namespace {

class SinCosOp : public OpKernel {
 public:
  explicit SinCosOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& angles = context->input(0);
    Tensor* sines = nullptr;
    Tensor* cosines = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, angles.shape(), &sines));
    OP_REQUIRES_OK(context, context->allocate_output(1, angles.shape(), &cosines));
    const float* x = angles.flat<float>().data();
    float* sin_out = sines->flat<float>().data();
    float* cos_out = cosines->flat<float>().data();
    for (int64_t i = 0; i < angles.NumElements(); ++i) {
      sin_out[i] = std::sin(x[i]);  // (float overloads: sinf, cosf)
      cos_out[i] = std::cos(x[i]);
    }
  }
};

}  // namespace
}  // namespace augbatch

REGISTER_OP("AugbatchSinCos")
    .Input("angles: float")
    .Output("sines: float")
    .Output("cosines: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(0));
      context->set_output(1, context->input(0));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("AugbatchSinCos").Device(tensorflow::DEVICE_CPU),
                        augbatch::SinCosOp);
