// TensorFlow's stateless uniform draws for a batch of seeds in one op. draw.uniform and
// draw.fold_in call tf.random.stateless_uniform (stateless_fold_in draws with it too) once per
// example (a seed is one [2] tensor):
// in the chain's loop over its copies, each draw is 6-10 small ops (the key and counter, the
// draw, its range, the seed's slicing), ~1 us each. These ops give each row of `seeds` what
// StatelessRandomGetKeyCounter + StatelessRandomUniform(Int|FullInt)V2 give for that seed
// (Philox, as TensorFlow picks on a CPU), with TensorFlow's own Philox and distributions; a
// float draw's range is applied as tf.random.stateless_uniform does: rnd * (max - min) + min.
#include <cstdint>
#include <vector>

#include "native_op.h"
#include "tensorflow/core/lib/random/philox_random.h"
#include "tensorflow/core/lib/random/random_distributions.h"

namespace augbatch {
namespace {

using tensorflow::TensorShape;
using tensorflow::random::PhiloxRandom;

// The generator StatelessRandomGetKeyCounter makes of an int32 seed pair (TensorFlow's
// GenerateKey: the seeds, widened to 64 bits as signed values, scrambled by one Philox call).
PhiloxRandom GeneratorOf(int32_t seed0, int32_t seed1) {
  const uint64_t wide0 = static_cast<uint64_t>(static_cast<int64_t>(seed0));
  const uint64_t wide1 = static_cast<uint64_t>(static_cast<int64_t>(seed1));
  PhiloxRandom::Key key;
  key[0] = 0x3ec8f720;
  key[1] = 0x02461e29;
  PhiloxRandom::ResultType counter;
  counter[0] = static_cast<uint32_t>(wide0);
  counter[1] = static_cast<uint32_t>(wide0 >> 32);
  counter[2] = static_cast<uint32_t>(wide1);
  counter[3] = static_cast<uint32_t>(wide1 >> 32);
  const PhiloxRandom::ResultType mix = PhiloxRandom(counter, key)();
  key[0] = mix[0];
  key[1] = mix[1];
  counter[0] = counter[1] = 0;
  counter[2] = mix[2];
  counter[3] = mix[3];
  return PhiloxRandom(counter, key);
}

// Why `seeds` is not a batch of int32 seed pairs [B, 2], if it is not.
absl::Status CheckSeeds(const Tensor& seeds) {
  if (seeds.dims() == 2 && seeds.dim_size(1) == 2) return absl::OkStatus();
  return errors::InvalidArgument("seeds must be [B, 2]");
}

// `per_seed` values of each seed's draw, one seed after another into `out`: a group of the
// distribution's results at a time, in order, as TensorFlow fills a tensor; `finish` maps
// each result to its value.
template <class Distribution, typename T, class Finish>
void FillRows(const Tensor& seeds, Distribution distribution, T* out, int64_t per_seed,
              Finish finish) {
  const auto seed = seeds.matrix<int32_t>();
  for (int64_t b = 0; b < seeds.dim_size(0); ++b, out += per_seed) {
    PhiloxRandom generator = GeneratorOf(seed(b, 0), seed(b, 1));
    for (int64_t i = 0; i < per_seed; i += Distribution::kResultElementCount) {
      const auto group = distribution(&generator);
      for (int k = 0; k < Distribution::kResultElementCount && i + k < per_seed; ++k) {
        out[i + k] = finish(group[k]);
      }
    }
  }
}

class DrawOp : public OpKernel {
 public:
  explicit DrawOp(OpKernelConstruction* context) : OpKernel(context) {
    std::vector<int64_t> shape;
    OP_REQUIRES_OK(context, context->GetAttr("shape", &shape));
    OP_REQUIRES_OK(context, context->GetAttr("T", &dtype_));
    per_seed_ = 1;
    for (int64_t size : shape) {
      OP_REQUIRES(context, size >= 0, errors::InvalidArgument("negative size in shape"));
      per_seed_ *= size;
      shape_.AddDim(size);
    }
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& seeds = context->input(0);
    OP_REQUIRES_OK(context, CheckSeeds(seeds));
    OP_REQUIRES(context, tensorflow::TensorShapeUtils::IsScalar(context->input(1).shape()) &&
                tensorflow::TensorShapeUtils::IsScalar(context->input(2).shape()),
                errors::InvalidArgument("minval and maxval must be scalars"));
    TensorShape out_shape({seeds.dim_size(0)});
    out_shape.AppendShape(shape_);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, out_shape, &out));
    if (dtype_ == tensorflow::DT_FLOAT) {
      const float low = context->input(1).scalar<float>()();
      const float range = context->input(2).scalar<float>()() - low;  // (a float32 op, too)
      FillRows(seeds, tensorflow::random::UniformDistribution<PhiloxRandom, float>(),
               out->flat<float>().data(), per_seed_,
               [low, range](float unit) { return unit * range + low; });
      return;
    }
    const int32_t low = context->input(1).scalar<int32_t>()();
    const int32_t high = context->input(2).scalar<int32_t>()();
    OP_REQUIRES(context, low < high,
                errors::InvalidArgument("Need minval < maxval: ", low, " >= ", high));
    FillRows(seeds, tensorflow::random::UniformDistribution<PhiloxRandom, int32_t>(low, high),
             out->flat<int32_t>().data(), per_seed_, [](int32_t value) { return value; });
  }

 private:
  TensorShape shape_;
  int64_t per_seed_;
  tensorflow::DataType dtype_;
};

// tf.random.experimental.stateless_fold_in(seeds[b], data) for each row: [its full-range
// int32 draw, data].
class FoldInOp : public OpKernel {
 public:
  explicit FoldInOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("data", &data_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& seeds = context->input(0);
    OP_REQUIRES_OK(context, CheckSeeds(seeds));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, seeds.shape(), &out));
    std::vector<int32_t> drawn(seeds.dim_size(0));
    FillRows(seeds, tensorflow::random::UniformFullIntDistribution<PhiloxRandom, int32_t>(),
             drawn.data(), 1, [](int32_t value) { return value; });
    auto folded = out->matrix<int32_t>();
    for (int64_t b = 0; b < seeds.dim_size(0); ++b) {
      folded(b, 0) = drawn[b];
      folded(b, 1) = data_;
    }
  }

 private:
  int32_t data_;
};

}  // namespace
}  // namespace augbatch

REGISTER_OP("AugbatchDraw")
    .Input("seeds: int32")
    .Input("minval: T")
    .Input("maxval: T")
    .Output("values: T")
    .Attr("T: {float, int32}")
    .Attr("shape: list(int) >= 0")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      std::vector<int64_t> shape;
      TF_RETURN_IF_ERROR(c->GetAttr("shape", &shape));
      std::vector<::tensorflow::shape_inference::DimensionHandle> dims = {c->Dim(c->input(0), 0)};
      for (int64_t size : shape) dims.push_back(c->MakeDim(size));
      c->set_output(0, c->MakeShape(dims));
      return absl::OkStatus();
    });

REGISTER_OP("AugbatchFoldIn")
    .Input("seeds: int32")
    .Output("folded: int32")
    .Attr("data: int")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("AugbatchDraw").Device(tensorflow::DEVICE_CPU), augbatch::DrawOp);
REGISTER_KERNEL_BUILDER(Name("AugbatchFoldIn").Device(tensorflow::DEVICE_CPU),
                        augbatch::FoldInOp);
