// OpenCV's warpAffine / warpPerspective of uint8 images (WARP_INVERSE_MAP; INTER_NEAREST or
// INTER_LINEAR; BORDER_CONSTANT, REFLECT, WRAP or REPLICATE) as a TensorFlow op: the CPU
// kernel's warp in TensorFlow's threads without Python's lock (pipeline/ops/native.py
// builds and loads it). OpenCV's arithmetic, so OpenCV's pixels: sample points in fixed point
// at 1/32 pixel, bilinear weights in 1/32768; tests/test_native_ops.py compares the two bit
// for bit.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__SSE4_1__)
#include <smmintrin.h>
#endif

#include "native_op.h"

namespace augbatch {
namespace {

constexpr int kInterBits = 5;  // sample points at 1/32 pixel
constexpr int kTabSize = 1 << kInterBits;
constexpr int kAbBits = 10;  // warpAffine's sample points before they are cut to 1/32
constexpr int kCoefBits = 15;  // uint8 bilinear weights in 1/32768

enum Border { kConstant, kReflect, kWrap, kReplicate };

// OpenCV's borderInterpolate: the source index read for index p of a row or column of `len`.
inline int BorderIndex(int p, int len, Border border) {
  if (static_cast<unsigned>(p) < static_cast<unsigned>(len)) return p;
  switch (border) {
    case kReplicate:
      return p < 0 ? 0 : len - 1;
    case kReflect:  // fedcba|abcdefgh|hgfedcb
      if (len == 1) return 0;
      do {
        p = p < 0 ? -p - 1 : len - 1 - (p - len);
      } while (static_cast<unsigned>(p) >= static_cast<unsigned>(len));
      return p;
    case kWrap:
      if (p < 0) p -= ((p - len + 1) / len) * len;
      if (p >= len) p %= len;
      return p;
    default:
      return -1;  // constant: read the fill value
  }
}

inline int16_t SaturateShort(int v) {
  return static_cast<int16_t>(v < -32768 ? -32768 : (v > 32767 ? 32767 : v));
}

// cvRound (SSE2's cvtsd2si): to nearest, ties to even; out of range or NaN: INT_MIN.
inline int RoundToInt(double v) {
  const double rounded = std::nearbyint(v);
  if (!(rounded >= std::numeric_limits<int>::min() &&
        rounded <= std::numeric_limits<int>::max())) {
    return std::numeric_limits<int>::min();
  }
  return static_cast<int>(rounded);
}

// One output row's sample points: integer part (x, y) and the 1/32 fraction index
// (fy * 32 + fx), or for nearest the rounded point (fraction unused).
struct RowPoints {
  std::vector<int16_t> x, y;
  std::vector<uint16_t> fraction;
  explicit RowPoints(int width) : x(width), y(width), fraction(width) {}
};

class Sampler {
 public:
  Sampler(const double* m, bool affine, bool bilinear, int width)
      : affine_(affine), bilinear_(bilinear), adelta_(width), bdelta_(width) {
    for (int i = 0; i < 9; ++i) m_[i] = i < 8 ? m[i] : 1.0;
    if (affine_) {
      for (int x = 0; x < width; ++x) {
        adelta_[x] = RoundToInt(m_[0] * x * (1 << kAbBits));
        bdelta_[x] = RoundToInt(m_[3] * x * (1 << kAbBits));
      }
    }
  }

  // warpPerspective computes its points per block of the output; its float arithmetic
  // depends on the block's start column, so the caller passes the blocks OpenCV uses.
  void Row(int y, int x_start, int x_end, RowPoints* points) const {
    if (affine_) {
      AffineRow(y, x_start, x_end, points);
    } else {
      PerspectiveRow(y, x_start, x_end, points);
    }
  }

 private:
  void AffineRow(int y, int x_start, int x_end, RowPoints* points) const {
    const int scale = 1 << kAbBits;
    const int round_delta = bilinear_ ? scale / kTabSize / 2 : scale / 2;
    const int x0 = RoundToInt((m_[1] * y + m_[2]) * scale) + round_delta;
    const int y0 = RoundToInt((m_[4] * y + m_[5]) * scale) + round_delta;
    for (int x = x_start; x < x_end; ++x) {
      if (bilinear_) {
        const int sx = (x0 + adelta_[x]) >> (kAbBits - kInterBits);
        const int sy = (y0 + bdelta_[x]) >> (kAbBits - kInterBits);
        points->x[x] = SaturateShort(sx >> kInterBits);
        points->y[x] = SaturateShort(sy >> kInterBits);
        points->fraction[x] = static_cast<uint16_t>((sy & (kTabSize - 1)) * kTabSize +
                                                    (sx & (kTabSize - 1)));
      } else {
        points->x[x] = SaturateShort((x0 + adelta_[x]) >> kAbBits);
        points->y[x] = SaturateShort((y0 + bdelta_[x]) >> kAbBits);
      }
    }
  }

  void PerspectiveRow(int y, int x_start, int x_end, RowPoints* points) const {
    const double x0 = m_[0] * x_start + m_[1] * y + m_[2];
    const double y0 = m_[3] * x_start + m_[4] * y + m_[5];
    const double w0 = m_[6] * x_start + m_[7] * y + m_[8];
    const double low = std::numeric_limits<int>::min(), high = std::numeric_limits<int>::max();
    for (int x1 = 0; x1 < x_end - x_start; ++x1) {
      const int x = x_start + x1;
      double w = w0 + m_[6] * x1;
      if (bilinear_) {
        w = w ? kTabSize / w : 0;
        const double fx = std::max(low, std::min(high, (x0 + m_[0] * x1) * w));
        const double fy = std::max(low, std::min(high, (y0 + m_[3] * x1) * w));
        const int sx = RoundToInt(fx), sy = RoundToInt(fy);
        points->x[x] = SaturateShort(sx >> kInterBits);
        points->y[x] = SaturateShort(sy >> kInterBits);
        points->fraction[x] = static_cast<uint16_t>((sy & (kTabSize - 1)) * kTabSize +
                                                    (sx & (kTabSize - 1)));
      } else {
        w = w ? 1. / w : 0;
        const double fx = std::max(low, std::min(high, (x0 + m_[0] * x1) * w));
        const double fy = std::max(low, std::min(high, (y0 + m_[3] * x1) * w));
        points->x[x] = SaturateShort(RoundToInt(fx));
        points->y[x] = SaturateShort(RoundToInt(fy));
      }
    }
  }

  double m_[9];
  bool affine_, bilinear_;
  std::vector<int> adelta_, bdelta_;
};

// The four bilinear weights of each 1/32 fraction, as OpenCV tabulates them; and as
// BlendVector takes them: each row's two weights / 32 as 16-bit halves of one int32.
struct Weights {
  int fixed[kTabSize * kTabSize][4];
  int32_t pairs[kTabSize * kTabSize][2];
  Weights() {
    for (int fy = 0; fy < kTabSize; ++fy) {
      for (int fx = 0; fx < kTabSize; ++fx) {
        const float ty[2] = {1.f - fy * (1.f / kTabSize), fy * (1.f / kTabSize)};
        const float tx[2] = {1.f - fx * (1.f / kTabSize), fx * (1.f / kTabSize)};
        const int index = fy * kTabSize + fx;
        for (int k = 0; k < 4; ++k) {
          fixed[index][k] = static_cast<int>(std::nearbyint(ty[k / 2] * tx[k % 2] *
                                                            (1 << kCoefBits)));
        }
        for (int row = 0; row < 2; ++row) {
          pairs[index][row] = (fixed[index][2 * row + 1] >> 5) << 16 |
                              (fixed[index][2 * row] >> 5);
        }
      }
    }
  }
};

const Weights& TheWeights() {
  static const Weights weights;
  return weights;
}

inline uint8_t Blend(const uint8_t* const v[4], int k, const int* w) {
  const int sum = v[0][k] * w[0] + v[1][k] * w[1] + v[2][k] * w[2] + v[3][k] * w[3];
  const int out = (sum + (1 << (kCoefBits - 1))) >> kCoefBits;
  return static_cast<uint8_t>(out < 0 ? 0 : (out > 255 ? 255 : out));
}

// One output pixel sampled the slow way: any point, any border.
inline void SampleAnywhere(const uint8_t* src, uint8_t* out, int sx, int sy, int fraction,
                           int height, int width, int channels, bool bilinear, Border border,
                           const uint8_t* fill) {
  const int64_t row_step = static_cast<int64_t>(width) * channels;
  auto at = [&](int iy, int ix) {
    return (ix >= 0 && iy >= 0) ? src + iy * row_step + ix * channels : fill;
  };
  if (!bilinear) {
    const uint8_t* pixel = at(BorderIndex(sy, height, border), BorderIndex(sx, width, border));
    for (int k = 0; k < channels; ++k) out[k] = pixel[k];
    return;
  }
  if (border == kConstant && (sx >= width || sx + 1 < 0 || sy >= height || sy + 1 < 0)) {
    for (int k = 0; k < channels; ++k) out[k] = fill[k];
    return;
  }
  const int x0 = BorderIndex(sx, width, border), x1 = BorderIndex(sx + 1, width, border);
  const int y0 = BorderIndex(sy, height, border), y1 = BorderIndex(sy + 1, height, border);
  const uint8_t* const v[4] = {at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1)};
  const auto* w = TheWeights().fixed[fraction];
  for (int k = 0; k < channels; ++k) out[k] = Blend(v, k, w);
}

#if defined(__SSE4_1__)
// Blend() for one pixel of 3 or 4 uint8 channels at once: each channel's two horizontal
// neighbours side by side as 16-bit integers, multiplied by their weights and added pairwise.
// The weights are multiples of 32 (products of multiples of 1/32, scaled by 32768), so
// (sum + 16384) >> 15 is (sum / 32 + 512) >> 10 exactly, and w / 32 fits 16 bits. Reads 8
// bytes from each row (the caller checks they are inside the image). `pair`: Weights::pairs.
// Writes 4 bytes where `whole_word` (a 3-channel pixel followed by one written after it).
template <int kChannels>
inline void BlendVector(const uint8_t* p, int64_t row_step, const int32_t* pair, uint8_t* out,
                        bool whole_word) {
  const __m128i pairs = kChannels == 4 ? _mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, -1, -1, -1, -1,
                                                       -1, -1, -1, -1)
                                       : _mm_setr_epi8(0, 3, 1, 4, 2, 5, -1, -1, -1, -1, -1,
                                                       -1, -1, -1, -1, -1);
  const __m128i top = _mm_cvtepu8_epi16(
      _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), pairs));
  const __m128i bottom = _mm_cvtepu8_epi16(_mm_shuffle_epi8(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + row_step)), pairs));
  const __m128i top_weights = _mm_set1_epi32(pair[0]);
  const __m128i bottom_weights = _mm_set1_epi32(pair[1]);
  __m128i sum = _mm_add_epi32(_mm_madd_epi16(top, top_weights),
                              _mm_madd_epi16(bottom, bottom_weights));
  sum = _mm_srai_epi32(_mm_add_epi32(sum, _mm_set1_epi32(512)), 10);
  const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(sum, sum), sum);
  const int value = _mm_cvtsi128_si32(bytes);
  if (kChannels == 4 || whole_word) {
    std::memcpy(out, &value, 4);
  } else {
    std::memcpy(out, &value, 3);
  }
}
#endif

// The pixels of one row whose four neighbours are all inside the image (most of them), with
// the channel count known to the compiler; the others go to SampleAnywhere.
template <int kChannels>
void SampleRow(const uint8_t* src, uint8_t* out, const RowPoints& points, int height,
               int width, int channels, bool bilinear, Border border, const uint8_t* fill) {
  const int cn = kChannels > 0 ? kChannels : channels;
  const int64_t row_step = static_cast<int64_t>(width) * cn;
  const Weights& weights = TheWeights();
  const unsigned inner_width = bilinear ? width - 1 : width;
  const unsigned inner_height = bilinear ? height - 1 : height;
  const uint8_t* const end = src + height * row_step;
  for (int x = 0; x < width; ++x, out += cn) {
    const int sx = points.x[x], sy = points.y[x];
    if (static_cast<unsigned>(sx) >= inner_width || static_cast<unsigned>(sy) >= inner_height) {
      SampleAnywhere(src, out, sx, sy, points.fraction[x], height, width, cn, bilinear, border,
                     fill);
      continue;
    }
    const uint8_t* p = src + sy * row_step + sx * cn;
    if (!bilinear) {
      for (int k = 0; k < cn; ++k) out[k] = p[k];
      continue;
    }
#if defined(__SSE4_1__)
    if ((kChannels == 3 || kChannels == 4) && p + row_step + 8 <= end) {
      BlendVector<kChannels>(p, row_step, weights.pairs[points.fraction[x]], out,
                             x + 1 < width);
      continue;
    }
#endif
    const uint8_t* const v[4] = {p, p + cn, p + row_step, p + row_step + cn};
    const auto* w = weights.fixed[points.fraction[x]];
    for (int k = 0; k < cn; ++k) out[k] = Blend(v, k, w);
  }
}

void WarpImage(const uint8_t* src, uint8_t* dst, int height, int width, int channels,
               const double* m, bool bilinear, Border border, const std::vector<uint8_t>& fill) {
  const bool affine = m[6] == 0.0 && m[7] == 0.0;
  const Sampler sampler(m, affine, bilinear, width);
  const int64_t row_step = static_cast<int64_t>(width) * channels;
  RowPoints points(width);
  // warpPerspective's blocks (OpenCV's WarpPerspectiveInvoker): the column where each starts.
  const int block = 32;
  const int block_rows = std::min(block / 2, height);
  const int block_cols = std::min(block * block / block_rows, width);
  auto row = channels == 3   ? SampleRow<3>
             : channels == 1 ? SampleRow<1>
             : channels == 4 ? SampleRow<4>
                             : SampleRow<0>;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; x += affine ? width : block_cols) {
      sampler.Row(y, x, affine ? width : std::min(width, x + block_cols), &points);
    }
    row(src, dst + y * row_step, points, height, width, channels, bilinear, border,
        fill.data());
  }
}

Border BorderNamed(const std::string& name) {
  if (name == "reflect") return kReflect;
  if (name == "wrap") return kWrap;
  if (name == "nearest") return kReplicate;
  return kConstant;
}

uint8_t FillOf(float value) {  // OpenCV's saturate_cast<uchar>(double)
  const int rounded = static_cast<int>(std::nearbyint(value));
  return static_cast<uint8_t>(rounded < 0 ? 0 : (rounded > 255 ? 255 : rounded));
}

class WarpOp : public OpKernel {
 public:
  explicit WarpOp(OpKernelConstruction* context) : OpKernel(context) {
    std::string interpolation, fill_mode;
    OP_REQUIRES_OK(context, context->GetAttr("interpolation", &interpolation));
    OP_REQUIRES_OK(context, context->GetAttr("fill_mode", &fill_mode));
    OP_REQUIRES_OK(context, context->GetAttr("fill_value", &fill_value_));
    bilinear_ = interpolation == "bilinear";
    border_ = BorderNamed(fill_mode);
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& transforms = context->input(1);
    OP_REQUIRES(context, images.dims() == 4,
                tensorflow::errors::InvalidArgument("images must be [batch, height, width, "
                                                    "channels]"));
    const int64_t batch = images.dim_size(0);
    OP_REQUIRES(context, transforms.dims() == 2 && transforms.dim_size(0) == batch &&
                             transforms.dim_size(1) == 8,
                tensorflow::errors::InvalidArgument("transforms must be [batch, 8]"));
    const int height = static_cast<int>(images.dim_size(1));
    const int width = static_cast<int>(images.dim_size(2));
    const int channels = static_cast<int>(images.dim_size(3));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, images.shape(), &output));
    const std::vector<uint8_t> fill(std::max(channels, 1), FillOf(fill_value_));
    const uint8_t* src = images.flat<uint8_t>().data();
    uint8_t* dst = output->flat<uint8_t>().data();
    const double* matrices = transforms.flat<double>().data();
    const int64_t image_size = static_cast<int64_t>(height) * width * channels;
    if (image_size == 0) return;
    for (int64_t b = 0; b < batch; ++b) {
      WarpImage(src + b * image_size, dst + b * image_size, height, width, channels,
                matrices + b * 8, bilinear_, border_, fill);
    }
  }

 private:
  float fill_value_;
  bool bilinear_;
  Border border_;
};

}  // namespace
}  // namespace augbatch

REGISTER_OP("AugbatchWarp")
    .Input("images: uint8")
    .Input("transforms: double")
    .Output("warped: uint8")
    .Attr("interpolation: {'nearest', 'bilinear'}")
    .Attr("fill_mode: {'constant', 'reflect', 'wrap', 'nearest'}")
    .Attr("fill_value: float = 0")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("AugbatchWarp").Device(tensorflow::DEVICE_CPU),
                        augbatch::WarpOp);
