// Ops on the 256 levels of uint8 pixels. A colour op whose pixels depend only on their own
// value and channel (and on statistics of the image) is computed once per image on the 256
// levels with TensorFlow's ops, then applied here: the same bytes as computing every pixel.
// - AugbatchLookup: out[b, ..., c] = tables[b, images[b, ..., c], c] (one table per image,
//   or per image and channel). TensorFlow's own gather costs ~1 ms per 256x256 RGB image;
//   this ~0.05 ms (~0.08 with a table per channel).
// - AugbatchLevelMean: each channel's mean of levels[b, images[b, ..., c], c] with the order
//   of summation of TensorFlow's CPU AdjustContrastv2 (tf.image.adjust_contrast), so the mean
//   is its mean bit for bit: the sums of the plane folded in halves, then times 1 / (H * W).
#include <cstdint>
#include <memory>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace augbatch {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
namespace errors = tensorflow::errors;

class LookupOp : public OpKernel {
 public:
  explicit LookupOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& tables = context->input(1);
    OP_REQUIRES(context, images.dims() >= 2,
                errors::InvalidArgument("images must be [batch, ..., channels]"));
    const int64_t batch = images.dim_size(0);
    const int64_t channels = images.dim_size(images.dims() - 1);
    OP_REQUIRES(context, tables.dims() == 3 && tables.dim_size(0) == batch &&
                             tables.dim_size(1) == 256 &&
                             (tables.dim_size(2) == 1 || tables.dim_size(2) == channels),
                errors::InvalidArgument("tables must be [batch, 256, 1 or channels]"));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, images.shape(), &output));
    if (images.NumElements() == 0) return;
    const int64_t size = images.NumElements() / batch;
    const uint8_t* src = images.flat<uint8_t>().data();
    const uint8_t* table = tables.flat<uint8_t>().data();
    uint8_t* dst = output->flat<uint8_t>().data();
    for (int64_t b = 0; b < batch; ++b) {
      if (tables.dim_size(2) == 1) {
        for (int64_t i = 0; i < size; ++i) *dst++ = table[*src++];
      } else if (channels == 3) {  // (the common case, without a division per pixel)
        for (int64_t i = 0; i < size; i += 3, src += 3, dst += 3) {
          dst[0] = table[src[0] * 3];
          dst[1] = table[src[1] * 3 + 1];
          dst[2] = table[src[2] * 3 + 2];
        }
      } else {
        for (int64_t i = 0; i < size; ++i) {
          *dst++ = table[*src++ * channels + i % channels];
        }
      }
      table += 256 * tables.dim_size(2);
    }
  }
};

// The first fold of LevelMeanOp for `pairs` pairs of rows of `channels` values (C, when it is
// not 0, is `channels` as a constant: the loop over the channels unrolled).
template <int C>
void FirstFold(const uint8_t* x, const uint8_t* x_right, const float* value, int64_t pairs,
               int64_t channels, float* sum) {
  if (C) channels = C;
  for (int64_t p = 0; p < pairs * channels; p += channels) {
    for (int64_t c = 0; c < channels; ++c) {
      sum[p + c] = value[x_right[p + c] * channels + c] + value[x[p + c] * channels + c];
    }
  }
}

class LevelMeanOp : public OpKernel {
 public:
  explicit LevelMeanOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& levels = context->input(1);
    OP_REQUIRES(context, images.dims() == 4,
                errors::InvalidArgument("images must be [batch, height, width, channels]"));
    const int64_t batch = images.dim_size(0);
    const int64_t channels = images.dim_size(3);
    const int64_t size = images.dim_size(1) * images.dim_size(2);
    OP_REQUIRES(context, levels.dims() == 3 && levels.dim_size(0) == batch &&
                             levels.dim_size(1) == 256 && levels.dim_size(2) == channels,
                errors::InvalidArgument("levels must be [batch, 256, channels]"));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, {batch, channels}, &output));
    float* means = output->flat<float>().data();
    if (size == 0) {  // (TensorFlow's op computes nothing for an empty image)
      for (int64_t i = 0; i < batch * channels; ++i) means[i] = 0.0f;
      return;
    }
    const uint8_t* pixels = images.flat<uint8_t>().data();
    const float* level = levels.flat<float>().data();
    std::unique_ptr<float[]> sums(new float[(size - size / 2) * channels]);
    for (int64_t b = 0; b < batch; ++b) {
      const uint8_t* x = pixels + b * size * channels;
      const float* value = level + b * 256 * channels;
      float* sum = sums.get();
      // The first fold: the right half of the plane's rows added to the left half (the
      // middle row of an odd count copied).
      int64_t right = size / 2, left = size - right;
      const uint8_t* x_right = x + left * channels;
      switch (channels) {
        case 1: FirstFold<1>(x, x_right, value, right, channels, sum); break;
        case 3: FirstFold<3>(x, x_right, value, right, channels, sum); break;
        case 4: FirstFold<4>(x, x_right, value, right, channels, sum); break;
        default: FirstFold<0>(x, x_right, value, right, channels, sum);
      }
      for (int64_t c = 0; left > right && c < channels; ++c) {
        const int64_t i = right * channels + c;
        sum[i] = value[x[i] * channels + c];
      }
      // Then in halves until one row is left: its channels hold the sums.
      for (int64_t remaining = left; remaining > 1; remaining = left) {
        right = remaining / 2;
        left = remaining - right;
        float* __restrict to = sum;
        const float* __restrict from = sum + left * channels;
        for (int64_t i = 0; i < right * channels; ++i) to[i] += from[i];
      }
      const float scaling = 1.0f / size;
      for (int64_t c = 0; c < channels; ++c) means[b * channels + c] = sum[c] * scaling;
    }
  }
};

}  // namespace
}  // namespace augbatch

REGISTER_OP("AugbatchLookup")
    .Input("images: uint8")
    .Input("tables: uint8")
    .Output("looked_up: uint8")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("AugbatchLookup").Device(tensorflow::DEVICE_CPU),
                        augbatch::LookupOp);

REGISTER_OP("AugbatchLevelMean")
    .Input("images: uint8")
    .Input("levels: float")
    .Output("means: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle images;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &images));
      c->set_output(0, c->Matrix(c->Dim(images, 0), c->Dim(images, 3)));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("AugbatchLevelMean").Device(tensorflow::DEVICE_CPU),
                        augbatch::LevelMeanOp);
