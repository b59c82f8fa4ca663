// The chain's conversions between stored uint8 pixels and float32 ones (augment.to_float,
// augment.to_uint8) as one pass each, with TensorFlow's arithmetic: TensorFlow's ops take two
// passes (cast, multiply) and three (clip, multiply, cast) over float32 images, which do not
// stay in a core's cache.
#include <cstdint>

#if defined(__SSE4_1__)
#include <smmintrin.h>
#endif

#include "native_op.h"

namespace augbatch {
namespace {

// convert_image_dtype(uint8 -> float32): float(x) * scale, scale = float32(1 / 255).
class ToFloatOp : public OpKernel {
 public:
  explicit ToFloatOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, images.shape(), &output));
    const uint8_t* src = images.flat<uint8_t>().data();
    float* dst = output->flat<float>().data();
    const int64_t size = images.NumElements();
    for (int64_t i = 0; i < size; ++i) dst[i] = static_cast<float>(src[i]) * scale_;
  }

 private:
  float scale_;
};

// augment.to_uint8: clip to [0, 1] (ClipByValue: min with 1, then max with 0), times 255.5,
// cast (truncating; after the clip the product is within [0, 255.5]).
class ToUint8Op : public OpKernel {
 public:
  explicit ToUint8Op(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, images.shape(), &output));
    const float* src = images.flat<float>().data();
    uint8_t* dst = output->flat<uint8_t>().data();
    const int64_t size = images.NumElements();
    int64_t i = 0;
#if defined(__SSE4_1__)
    // 16 at a time. (_mm_min_ps(a, b) gives b where either is NaN: a NaN stays NaN through
    // both, and its cast gives 0, as TensorFlow's does.)
    const __m128 one = _mm_set1_ps(1.0f), zero = _mm_setzero_ps(), scale = _mm_set1_ps(255.5f);
    for (; i + 16 <= size; i += 16) {
      __m128i quarters[4];
      for (int k = 0; k < 4; ++k) {
        const __m128 x = _mm_max_ps(zero, _mm_min_ps(one, _mm_loadu_ps(src + i + 4 * k)));
        quarters[k] = _mm_cvttps_epi32(_mm_mul_ps(x, scale));
      }
      const __m128i low = _mm_packs_epi32(quarters[0], quarters[1]);
      const __m128i high = _mm_packs_epi32(quarters[2], quarters[3]);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_packus_epi16(low, high));
    }
#endif
    for (; i < size; ++i) {
      float x = src[i];
      x = x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f;  // (NaN: 0)
      dst[i] = static_cast<uint8_t>(static_cast<int>(x * 255.5f));
    }
  }
};

}  // namespace
}  // namespace augbatch

REGISTER_OP("AugbatchToFloat")
    .Input("images: uint8")
    .Output("converted: float")
    .Attr("scale: float")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_OP("AugbatchToUint8")
    .Input("images: float")
    .Output("converted: uint8")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("AugbatchToFloat").Device(tensorflow::DEVICE_CPU),
                        augbatch::ToFloatOp);
REGISTER_KERNEL_BUILDER(Name("AugbatchToUint8").Device(tensorflow::DEVICE_CPU),
                        augbatch::ToUint8Op);
