// Ops on the 256 levels of uint8 pixels. A colour op whose pixels depend only on their own
// value and channel (and on statistics of the image) is computed once per image on the 256
// levels with TensorFlow's ops, then applied here: the same bytes as computing every pixel.
// - AugbatchLookup: out[b, ..., c] = tables[b, images[b, ..., c], c] (one table per image,
//   or per image and channel). TensorFlow's own gather costs ~1 ms per 256x256 RGB image;
//   this ~0.06 ms one byte at a time (~0.08 with a table per channel), ~0.011 (~0.016) with
//   AVX-512's byte permutes, where the CPU has them.
// - AugbatchLevelMean: each channel's mean of levels[b, images[b, ..., c], c] with the order
//   of summation of TensorFlow's CPU AdjustContrastv2 (tf.image.adjust_contrast), so the mean
//   is its mean bit for bit: the sums of the plane folded in halves, then times 1 / (H * W).
#include <cstdint>
#include <cstring>
#include <memory>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "native_op.h"

namespace augbatch {
namespace {

// What this CPU has of AVX-512 (GCC's checks ask the OS too, whether it saves the registers):
// 16 floats at a time (F); byte permutes (VBMI) and byte masks (BW), which look up 64 bytes in
// a 256-byte table in a few instructions.
bool HasFloatVectors() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

bool HasBytePermutes() {
#if defined(__x86_64__)
  static const bool has = HasFloatVectors() && __builtin_cpu_supports("avx512vbmi") &&
                          __builtin_cpu_supports("avx512bw");
  return has;
#else
  return false;
#endif
}

// Each channel's bytes in a vector of 64 are a fixed pattern (an image starts at channel 0):
// lanes[phase][c], the lanes of channel c in a vector starting at channel `phase`.
struct ChannelLanes {
  explicit ChannelLanes(int channels) {
    for (int phase = 0; phase < channels; ++phase) {
      for (int c = 0; c < channels; ++c) {
        lanes[phase][c] = 0;
        for (int i = 0; i < 64; ++i) {
          if ((phase + i) % channels == c) lanes[phase][c] |= uint64_t{1} << i;
        }
      }
    }
  }
  uint64_t lanes[4][4];
};

// One image's `size` bytes looked up, 64 at a time: table[v * channels + c] for the value v
// of channel c (channels 1 to 4: the tables stay in registers). A 256-entry table is four
// registers; the low seven bits of a value pick one of 128 entries in two of them, its top
// bit which two.
#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void LookupVectors(
    const uint8_t* src, uint8_t* dst, int64_t size, const uint8_t* table, int channels,
    const ChannelLanes& lanes) {
  __m512i quarters[4][4];
  alignas(64) uint8_t plane[256];
  for (int c = 0; c < channels; ++c) {
    for (int v = 0; v < 256; ++v) plane[v] = table[v * channels + c];
    for (int q = 0; q < 4; ++q) quarters[c][q] = _mm512_load_si512(plane + 64 * q);
  }
  int64_t i = 0;
  for (; i + 64 <= size; i += 64) {
    const __m512i values = _mm512_loadu_si512(src + i);
    const __mmask64 high = _mm512_movepi8_mask(values);
    const int phase = static_cast<int>(i % channels);
    __m512i out = _mm512_setzero_si512();
    for (int c = 0; c < channels; ++c) {
      const __m512i low = _mm512_permutex2var_epi8(quarters[c][0], values, quarters[c][1]);
      const __m512i top = _mm512_permutex2var_epi8(quarters[c][2], values, quarters[c][3]);
      out = _mm512_mask_mov_epi8(out, lanes.lanes[phase][c],
                                 _mm512_mask_blend_epi8(high, low, top));
    }
    _mm512_storeu_si512(dst + i, out);
  }
  for (; i < size; ++i) dst[i] = table[src[i] * channels + i % channels];
}
#endif

class LookupOp : public OpKernel {
 public:
  explicit LookupOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("vectors", &vectors_));
    vectors_ = vectors_ && HasBytePermutes();
  }

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
    const int table_channels = static_cast<int>(tables.dim_size(2));
    const bool vectors = vectors_ && table_channels <= 4;
    const ChannelLanes lanes(vectors ? table_channels : 0);
    for (int64_t b = 0; b < batch; ++b) {
#if defined(__x86_64__)
      if (vectors) {
        LookupVectors(src, dst, size, table, table_channels, lanes);
        src += size, dst += size, table += 256 * table_channels;
        continue;
      }
#endif
      if (table_channels == 1) {
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
      table += 256 * table_channels;
    }
  }

 private:
  bool vectors_;  // false: the scalar loop (tests compare the two)
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

// convert_image_dtype's factor from uint8 to float32 (native_convert.cc's scale).
constexpr float kToFloat = 1.0f / 255;

// Whether each level's value is its converted value plus one shift for every channel
// (tf.image's brightness right after the conversion: the colour chains' common case), bit for
// bit; then the first fold computes the values from the pixels, 16 at a time, instead of
// loading each from the table: the same floats.
bool ShiftedLevels(const float* value, int64_t channels, float* shift) {
  for (int v = 0; v < 256; ++v) {
    const float expected = static_cast<float>(v) * kToFloat + value[0];
    for (int64_t c = 0; c < channels; ++c) {
      if (std::memcmp(&value[v * channels + c], &expected, sizeof(float)) != 0) return false;
    }
  }
  *shift = value[0];
  return true;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) inline __m512 ShiftedValues(const uint8_t* x,
                                                                __m512 shift) {
  const __m512i levels =
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  return _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(levels), _mm512_set1_ps(kToFloat)),
                       shift);
}

// FirstFold of shifted levels (`count` values on each side).
__attribute__((target("avx512f"))) void FirstFoldShifted(const uint8_t* x,
                                                         const uint8_t* x_right, int64_t count,
                                                         float shift, float* sum) {
  const __m512 shifts = _mm512_set1_ps(shift);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm512_storeu_ps(sum + i, _mm512_add_ps(ShiftedValues(x_right + i, shifts),
                                            ShiftedValues(x + i, shifts)));
  }
  for (; i < count; ++i) {
    sum[i] = (static_cast<float>(x_right[i]) * kToFloat + shift) +
             (static_cast<float>(x[i]) * kToFloat + shift);
  }
}

// The first three folds of shifted levels at once, where the plane's rows halve exactly
// three times (their count a multiple of 8): `count` values in each eighth, the sums of the
// three folds' adds, in their order, from the pixels (~a third less time than the first fold
// alone and then two passes over its floats).
__attribute__((target("avx512f"))) void ThreeFoldsShifted(const uint8_t* x, int64_t count,
                                                          float shift, float* sum) {
  const __m512 shifts = _mm512_set1_ps(shift);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m512 eighth[8];
    for (int t = 0; t < 8; ++t) eighth[t] = ShiftedValues(x + t * count + i, shifts);
    const __m512 first[4] = {_mm512_add_ps(eighth[4], eighth[0]),
                             _mm512_add_ps(eighth[5], eighth[1]),
                             _mm512_add_ps(eighth[6], eighth[2]),
                             _mm512_add_ps(eighth[7], eighth[3])};
    _mm512_storeu_ps(sum + i, _mm512_add_ps(_mm512_add_ps(first[0], first[2]),
                                            _mm512_add_ps(first[1], first[3])));
  }
  for (; i < count; ++i) {
    float eighth[8];
    for (int t = 0; t < 8; ++t) {
      eighth[t] = static_cast<float>(x[t * count + i]) * kToFloat + shift;
    }
    sum[i] = ((eighth[4] + eighth[0]) + (eighth[6] + eighth[2])) +
             ((eighth[5] + eighth[1]) + (eighth[7] + eighth[3]));
  }
}

// to[i] += from[i], 16 at a time.
__attribute__((target("avx512f"))) void AddVectors(float* __restrict to,
                                                   const float* __restrict from, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm512_storeu_ps(to + i, _mm512_add_ps(_mm512_loadu_ps(to + i), _mm512_loadu_ps(from + i)));
  }
  for (; i < count; ++i) to[i] += from[i];
}
#endif

class LevelMeanOp : public OpKernel {
 public:
  explicit LevelMeanOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("vectors", &vectors_));
    vectors_ = vectors_ && HasFloatVectors();
  }

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
#if defined(__x86_64__)
      float shift;
      if (vectors_ && ShiftedLevels(value, channels, &shift)) {
        if (size % 8 == 0) {
          ThreeFoldsShifted(x, size / 8 * channels, shift, sum);
          left = right = size / 8;  // (what the halvings below start from)
        } else {
          FirstFoldShifted(x, x_right, right * channels, shift, sum);
        }
      } else
#endif
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
#if defined(__x86_64__)
        if (vectors_) {
          AddVectors(to, from, right * channels);
          continue;
        }
#endif
        for (int64_t i = 0; i < right * channels; ++i) to[i] += from[i];
      }
      const float scaling = 1.0f / size;
      for (int64_t c = 0; c < channels; ++c) means[b * channels + c] = sum[c] * scaling;
    }
  }

 private:
  bool vectors_;  // false: the scalar loops (tests compare the two)
};

}  // namespace
}  // namespace augbatch

REGISTER_OP("AugbatchLookup")
    .Input("images: uint8")
    .Input("tables: uint8")
    .Output("looked_up: uint8")
    .Attr("vectors: bool = true")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("AugbatchLookup").Device(tensorflow::DEVICE_CPU),
                        augbatch::LookupOp);

REGISTER_OP("AugbatchLevelMean")
    .Input("images: uint8")
    .Input("levels: float")
    .Output("means: float")
    .Attr("vectors: bool = true")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle images;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &images));
      c->set_output(0, c->Matrix(c->Dim(images, 0), c->Dim(images, 3)));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("AugbatchLevelMean").Device(tensorflow::DEVICE_CPU),
                        augbatch::LevelMeanOp);
