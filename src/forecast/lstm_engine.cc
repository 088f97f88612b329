// The native LSTM engine (see lstm_engine.h for the contract, lstm_model.h for the network).
//
// Order of work. A layer's input projection W_ih x + b for every step of every sequence does not
// depend on the recurrence, so it is computed as one large blocked product over many columns,
// as cuDNN does for stacked LSTMs (Appleyard et al., "Optimizing Performance of Recurrent Neural
// Networks on GPUs", 2016); only W_hh h_{t-1} remains inside the step loop, as a product over the
// batch's columns. Columns are ordered step-major (n = t * batch + b), so one step's gates and
// hidden states are contiguous. The window is cut into chunks of about kChunkColumns columns
// (whole steps), and each chunk runs through every layer before the next one starts (a wavefront
// over layers): one chunk's gates (1 KiB per column at H = 64) and hidden states stay in the L2
// cache between the input projection that writes them, the recurrent product that adds to them and
// the cell that reads them, where a whole window's gates at batch 32 (2 MiB) would not. Chunking
// changes no arithmetic: every column's sums run in the same order.
//
// INT8 runs every LSTM weight matrix in int8 (lstm_kernels.h); the head (outputs x H, a few
// thousand multiply-adds) runs in FP32 on the dequantized weights, so the last rounding step is
// not added to the outputs.
//
// Scratch space is one thread_local set of buffers that only grows, so steady-state calls of any
// engine on a thread allocate nothing, and concurrent calls on different threads share nothing.
//
// Threads. Every sequence's arithmetic is independent of the others in its batch (each column of
// every product is its own dot product; quantization scales are per column), so a batch cut into
// contiguous parts and run as separate smaller batches gives the same bits. With threads > 1 the
// engine owns threads - 1 persistent workers (a fork-join pool, as OpenMP's parallel regions
// keep): a split Run publishes the job under a mutex with a new generation number, wakes the
// workers through a condition variable, runs part 0 itself on its own thread's scratch, and
// waits until the last worker reports its part done. One split Run holds the workers at a time;
// a concurrent caller that finds them taken does not wait for them but runs its whole batch.
#include "forecast/lstm_engine.h"

#include <algorithm>
#include <cassert>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "fmt/format.h"
#include "forecast/lstm_kernels.h"

namespace megaserve::forecast {
namespace {

using kernels::Kernel;

struct Layer {
  int in = 0;
  kernels::PackedF32 w_ih, w_hh;  // kFp32
  kernels::PackedI8 q_ih, q_hh;   // kInt8
  std::vector<float> bias;        // b_ih + b_hh, PaddedRows(4H) values
};

struct Scratch {
  std::vector<float> x;      // one chunk of layer 0's input, step-major columns of input_size
  std::vector<float> gates;  // one chunk's columns of PaddedRows(4H)
  // Per layer, (chunk steps + 1) * batch columns of H: slot 0 holds the last step of the
  // previous chunk (h_{t-1} for the chunk's first step), slots 1.. this chunk's outputs.
  std::vector<std::vector<float>> hs;
  std::vector<std::vector<float>> c;  // per layer, batch x H cell states
  std::vector<float> head;            // batch columns of PaddedRows(outputs)
  kernels::QuantizedCols xq, hq;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Persistent worker threads that run the parts of one job at a time (see the top of the file).
class Workers {
 public:
  // What a part runs: fn(context, part).
  using PartFn = void (*)(const void* context, int part);

  // Starts `count` workers (parts 1..count of a job).
  explicit Workers(int count) {
    threads_.reserve(count);
    for (int i = 1; i <= count; ++i) threads_.emplace_back([this, i] { Loop(i); });
  }

  // Wakes the workers, which finish the part they run, and joins them.
  ~Workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  // Runs fn(context, p) for p in [0, parts) (parts <= count + 1), part 0 on the calling thread,
  // and returns true once all are done; returns false at once, running nothing, when another
  // caller holds the workers.
  bool Split(int parts, PartFn fn, const void* context) {
    std::unique_lock<std::mutex> held(busy_, std::try_to_lock);
    if (!held.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = fn;
      context_ = context;
      parts_ = parts;
      pending_ = parts - 1;
      ++generation_;
    }
    wake_.notify_all();
    fn(context, 0);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_ == 0; });
    return true;
  }

 private:
  void Loop(int part) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (part >= parts_) continue;  // this job has fewer parts than there are workers
      const PartFn fn = fn_;
      const void* context = context_;
      lock.unlock();
      fn(context, part);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_;  // held by the one Split using the workers
  std::mutex mu_;    // guards everything below
  std::condition_variable wake_, done_;
  bool stop_ = false;
  uint64_t generation_ = 0;  // one more per job
  PartFn fn_ = nullptr;
  const void* context_ = nullptr;
  int parts_ = 0;
  int pending_ = 0;  // the job's worker parts not yet finished
  std::vector<std::thread> threads_;
};

class Engine final : public LstmEngine {
 public:
  Engine(const LstmWeights& w, Precision precision, Kernel kernel, const Int8Matrices* int8,
         int threads)
      : shape_(w.shape), precision_(precision), kernel_(kernel), threads_(threads) {
    const Kernel fk = kernel == Kernel::kGeneric ? Kernel::kGeneric : Kernel::kAvx2;
    fp32_kernel_ = fk;
    const int h = shape_.hidden_size, g = 4 * h;
    for (int l = 0; l < shape_.num_layers; ++l) {
      Layer layer;
      layer.in = l == 0 ? shape_.input_size : h;
      if (precision == Precision::kFp32) {
        layer.w_ih = kernels::PackF32(w.layers[l].w_ih, g, layer.in);
        layer.w_hh = kernels::PackF32(w.layers[l].w_hh, g, h);
      } else {
        layer.q_ih = kernels::PackI8(kernel, int8->w_ih[l]);
        layer.q_hh = kernels::PackI8(kernel, int8->w_hh[l]);
      }
      layer.bias.assign(kernels::PaddedRows(g), 0.0f);
      for (int r = 0; r < g; ++r) layer.bias[r] = w.layers[l].b_ih[r] + w.layers[l].b_hh[r];
      layers_.push_back(std::move(layer));
    }
    if (precision == Precision::kFp32) {
      head_ = kernels::PackF32(w.head_w, shape_.outputs(), h);
    } else {
      std::vector<float> dequantized(int8->head_w.q.size());
      for (std::size_t i = 0; i < dequantized.size(); ++i) {
        dequantized[i] = static_cast<float>(int8->head_w.q[i]) * int8->head_w.scale[i / h];
      }
      head_ = kernels::PackF32(dequantized, shape_.outputs(), h);
    }
    head_b_.assign(kernels::PaddedRows(shape_.outputs()), 0.0f);
    std::copy(w.head_b.begin(), w.head_b.end(), head_b_.begin());
    if (threads_ > 1) workers_ = std::make_unique<Workers>(threads_ - 1);
  }

  void Run(std::span<const float> inputs, int batch, std::span<float> outputs) const override {
    assert(inputs.size() >= static_cast<std::size_t>(batch) * shape_.window * shape_.input_size);
    assert(outputs.size() >= static_cast<std::size_t>(batch) * shape_.outputs());
    if (batch <= 0) return;
    const int parts = std::min(threads_, batch / EngineOptions::kMinSequencesPerPart);
    if (parts > 1) {
      const SplitJob job{this, inputs.data(), outputs.data(), batch, parts};
      if (workers_->Split(parts, &SplitJob::RunPart, &job)) return;
    }
    RunBatch(inputs.data(), batch, outputs.data());
  }

  const LstmShape& shape() const override { return shape_; }
  Precision precision() const override { return precision_; }
  std::string_view kernel() const override { return kernels::Name(kernel_); }
  int threads() const override { return threads_; }

  std::size_t memory_bytes() const override {
    std::size_t bytes = (head_.data.size() + head_b_.size()) * sizeof(float);
    for (const Layer& l : layers_) {
      bytes += (l.w_ih.data.size() + l.w_hh.data.size() + l.bias.size()) * sizeof(float);
      for (const auto* q : {&l.q_ih, &l.q_hh}) {
        bytes += q->w8.size() + q->comp.size() * sizeof(int32_t) + q->scale.size() * sizeof(float);
      }
    }
    return bytes;
  }

 private:
  // Columns per chunk: the gates of one chunk (1 KiB per column at H = 64) then stay in L2.
  static constexpr int kChunkColumns = 128;

  // One Run's batch cut into `parts` contiguous ranges of sequences, part p being
  // [batch * p / parts, batch * (p + 1) / parts).
  struct SplitJob {
    const Engine* engine;
    const float* inputs;
    float* outputs;
    int batch;
    int parts;

    static void RunPart(const void* context, int part) {
      const auto& job = *static_cast<const SplitJob*>(context);
      const Engine& e = *job.engine;
      const int b0 = static_cast<int>(static_cast<int64_t>(job.batch) * part / job.parts);
      const int b1 = static_cast<int>(static_cast<int64_t>(job.batch) * (part + 1) / job.parts);
      e.RunBatch(job.inputs + static_cast<std::size_t>(b0) * e.shape_.window * e.shape_.input_size,
                 b1 - b0, job.outputs + static_cast<std::size_t>(b0) * e.shape_.outputs());
    }
  };

  // Runs `batch` sequences on the calling thread, in its scratch space.
  void RunBatch(const float* inputs, int batch, float* outputs) const {
    const int t_len = shape_.window, in = shape_.input_size, h = shape_.hidden_size;
    const int gp = kernels::PaddedRows(4 * h), op = kernels::PaddedRows(shape_.outputs());
    const int chunk = std::clamp(kChunkColumns / batch, 1, t_len);
    const std::size_t chunk_cols = static_cast<std::size_t>(chunk) * batch;
    const std::size_t layers = layers_.size();
    Scratch& s = ThreadScratch();
    s.x.resize(chunk_cols * in);
    s.gates.resize(chunk_cols * gp);
    s.hs.resize(std::max(s.hs.size(), layers));
    s.c.resize(std::max(s.c.size(), layers));
    for (std::size_t l = 0; l < layers; ++l) {
      s.hs[l].resize((chunk_cols + batch) * h);
      std::fill_n(s.hs[l].begin(), static_cast<std::size_t>(batch) * h, 0.0f);
      s.c[l].assign(static_cast<std::size_t>(batch) * h, 0.0f);
    }
    s.head.resize(static_cast<std::size_t>(batch) * op);
    for (int t0 = 0; t0 < t_len; t0 += chunk) {
      const int steps = std::min(chunk, t_len - t0);
      const int cols = steps * batch;
      for (int t = 0; t < steps; ++t) {
        for (int b = 0; b < batch; ++b) {
          std::memcpy(&s.x[(static_cast<std::size_t>(t) * batch + b) * in],
                      &inputs[(static_cast<std::size_t>(b) * t_len + t0 + t) * in],
                      sizeof(float) * in);
        }
      }
      for (std::size_t l = 0; l < layers; ++l) {
        const float* x = l == 0 ? s.x.data() : &s.hs[l - 1][static_cast<std::size_t>(batch) * h];
        RunChunk(layers_[l], x, l == 0 ? in : h, t0, steps, batch, s.gates.data(), s.c[l].data(),
                 s.hs[l].data(), s);
      }
      if (t0 + steps < t_len) {  // this chunk's last step becomes the next chunk's h_{t-1}
        for (std::size_t l = 0; l < layers; ++l) {
          std::copy_n(&s.hs[l][static_cast<std::size_t>(cols) * h],
                      static_cast<std::size_t>(batch) * h, s.hs[l].begin());
        }
      }
    }
    const int last_cols = (t_len - 1) % chunk * batch + batch;  // the last chunk's column count
    for (int b = 0; b < batch; ++b) {
      std::memcpy(&s.head[static_cast<std::size_t>(b) * op], head_b_.data(), sizeof(float) * op);
    }
    kernels::GemmF32(fp32_kernel_, head_,
                     &s.hs[layers - 1][static_cast<std::size_t>(last_cols) * h], h, batch,
                     s.head.data(), op);
    const int o = shape_.outputs();
    for (int b = 0; b < batch; ++b) {
      std::memcpy(&outputs[static_cast<std::size_t>(b) * o],
                  &s.head[static_cast<std::size_t>(b) * op], sizeof(float) * o);
    }
  }

  // One layer over `steps` steps starting at t0: the input projection of all the chunk's columns
  // (x: steps * batch columns of ldx), then the recurrence. hs holds h_{t0-1} in its first batch
  // columns and receives the chunk's outputs after them.
  void RunChunk(const Layer& layer, const float* x, int ldx, int t0, int steps, int batch,
                float* gates, float* c, float* hs, Scratch& s) const {
    const int h = shape_.hidden_size, gp = kernels::PaddedRows(4 * h);
    const int cols = steps * batch;
    for (int n = 0; n < cols; ++n) {
      std::memcpy(&gates[static_cast<std::size_t>(n) * gp], layer.bias.data(), sizeof(float) * gp);
    }
    if (precision_ == Precision::kFp32) {
      kernels::GemmF32(fp32_kernel_, layer.w_ih, x, ldx, cols, gates, gp);
    } else {
      kernels::QuantizeCols(kernel_, x, ldx, cols, layer.in, layer.q_ih.kpad, &s.xq);
      kernels::GemmI8(layer.q_ih, s.xq, cols, gates, gp);
    }
    for (int t = 0; t < steps; ++t) {
      float* g = &gates[static_cast<std::size_t>(t) * batch * gp];
      const float* hp = &hs[static_cast<std::size_t>(t) * batch * h];
      if (t0 + t > 0) {  // h_{-1} = 0 contributes nothing
        if (precision_ == Precision::kFp32) {
          kernels::GemmF32(fp32_kernel_, layer.w_hh, hp, h, batch, g, gp);
        } else {
          kernels::QuantizeCols(kernel_, hp, h, batch, h, layer.q_hh.kpad, &s.hq);
          kernels::GemmI8(layer.q_hh, s.hq, batch, g, gp);
        }
      }
      kernels::LstmCell(kernel_, g, gp, batch, h, c,
                        &hs[static_cast<std::size_t>(t + 1) * batch * h], h);
    }
  }

  LstmShape shape_;
  Precision precision_;
  Kernel kernel_;
  Kernel fp32_kernel_ = Kernel::kGeneric;
  std::vector<Layer> layers_;
  kernels::PackedF32 head_;
  std::vector<float> head_b_;
  int threads_;
  std::unique_ptr<Workers> workers_;  // threads_ - 1 of them, when threads_ > 1
};

core::Status CheckInt8(const LstmShape& s, const Int8Matrices& q) {
  auto check = [](const char* name, const QuantizedMatrix& m, int rows, int cols) {
    if (m.rows != rows || m.cols != cols || m.q.size() != static_cast<std::size_t>(rows) * cols ||
        m.scale.size() != static_cast<std::size_t>(rows)) {
      return core::InvalidArgument(
          fmt::format("int8 {} is {}x{}, expected {}x{}", name, m.rows, m.cols, rows, cols));
    }
    // The kernels negate weights (lstm_kernels.cc), which -128 would overflow.
    if (std::find(m.q.begin(), m.q.end(), int8_t{-128}) != m.q.end()) {
      return core::InvalidArgument(fmt::format("int8 {} holds -128 (outside [-127, 127])", name));
    }
    return core::Status::Ok();
  };
  if (q.w_ih.size() != static_cast<std::size_t>(s.num_layers) ||
      q.w_hh.size() != static_cast<std::size_t>(s.num_layers)) {
    return core::InvalidArgument("int8 weights have the wrong number of layers");
  }
  for (int l = 0; l < s.num_layers; ++l) {
    const int in = l == 0 ? s.input_size : s.hidden_size;
    if (auto st = check("weight_ih", q.w_ih[l], 4 * s.hidden_size, in); !st.ok()) return st;
    if (auto st = check("weight_hh", q.w_hh[l], 4 * s.hidden_size, s.hidden_size); !st.ok()) {
      return st;
    }
  }
  return check("head.weight", q.head_w, s.outputs(), s.hidden_size);
}

}  // namespace

std::string_view PrecisionName(Precision precision) {
  return precision == Precision::kInt8 ? "int8" : "fp32";
}

core::Result<Precision> ParsePrecision(std::string_view name) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "int8") return Precision::kInt8;
  return core::InvalidArgument(fmt::format("unknown precision \"{}\" (allowed: fp32, int8)", name));
}

std::string_view KernelName() {
  auto requested = kernels::Requested();
  return kernels::Name(requested.ok() ? *requested : kernels::Best());
}

core::Result<std::unique_ptr<LstmEngine>> LstmEngine::Create(const LstmWeights& weights,
                                                             Precision precision) {
  return Create(weights, precision, EngineOptions{});
}

core::Result<std::unique_ptr<LstmEngine>> LstmEngine::Create(const LstmWeights& weights,
                                                             Precision precision,
                                                             const EngineOptions& options) {
  if (auto st = ValidateWeights(weights); !st.ok()) return st;
  if (options.threads < 0) {
    return core::InvalidArgument(fmt::format("threads must be >= 0, got {}", options.threads));
  }
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  Kernel kernel;
  if (options.kernel.empty()) {
    auto requested = kernels::Requested();
    if (!requested.ok()) return requested.status();
    kernel = *requested;
  } else {
    auto parsed = kernels::Parse(options.kernel);
    if (!parsed.ok()) return parsed.status();
    if (!kernels::CpuSupports(*parsed)) {
      return core::Status(core::StatusCode::kFailedPrecondition,
                          fmt::format("kernel {} is not supported by this CPU", options.kernel));
    }
    kernel = *parsed;
  }
  if (precision == Precision::kFp32) {
    return std::unique_ptr<LstmEngine>(new Engine(weights, precision, kernel, nullptr, threads));
  }
  if (options.int8 != nullptr) {
    if (auto st = CheckInt8(weights.shape, *options.int8); !st.ok()) return st;
    return std::unique_ptr<LstmEngine>(
        new Engine(weights, precision, kernel, options.int8, threads));
  }
  const Int8Matrices q = QuantizeWeights(weights);
  return std::unique_ptr<LstmEngine>(new Engine(weights, precision, kernel, &q, threads));
}

}  // namespace megaserve::forecast
