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
// workers, runs part 0 itself on its own thread's scratch, and waits until the last worker
// reports its part done. One split Run holds the workers at a time; a concurrent caller that
// finds them taken does not wait for them but runs its whole batch.
//
// A batch too small to cut (fewer than 2 * kMinSequencesPerPart sequences, batch 1 above all)
// is instead run as a two-stage pipeline over the layers when the model has two or more: the
// caller runs layer 0 and the first half of the rows of layer 1's input projection, chunk after
// chunk of kPipelineSteps steps, and one worker, a chunk behind, runs the other rows of that
// projection, layer 1's recurrence, any further layers and the head. The two recurrences cost
// about the same, so halving the projection balances the stages. They hand chunks over through
// two counters (release stores, acquire loads), each on its own cache line, and share no line
// that both write: the second stage copies the first stage's projection rows into its own
// buffer rather than adding to them in place, which would make the recurrence wait for each line
// to leave the other core.
// Splitting rows changes no arithmetic (each row's dot product is the same), so the pipeline
// gives the same bits too. Its chunks take a few microseconds, less than waking a sleeping
// thread, so workers and the waiting caller spin for a while (kSpinFor) before they block, as
// OpenMP runtimes do between parallel regions. bench/forecast.sh times batch 1 on one thread and
// on two.
#include "forecast/lstm_engine.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
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
  // Layer 1 of a pipelined engine: W_ih's rows [0, split_rows) and [split_rows, 4H) packed
  // separately, for the pipeline's two stages.
  int split_rows = 0;
  kernels::PackedF32 w_ih_part[2];
  kernels::PackedI8 q_ih_part[2];
};

// One packed matrix of a layer's input projection: the whole W_ih or one part of it, whose
// first row is W_ih's row `row0`.
struct Projection {
  const kernels::PackedF32* fp32;
  const kernels::PackedI8* int8;
  int row0;
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
  // Pipelined runs: whole-window buffers, (window + 1) * batch columns of H (slot 0: zeros) for
  // a layer's outputs, window * batch columns of split_rows for the first stage's rows of layer
  // 1's input projection.
  std::vector<float> pipe_h0, pipe_h, pipe_first;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// How long an idle worker, or a caller waiting for its workers, spins before it blocks.
constexpr auto kSpinFor = std::chrono::microseconds(200);

// Spins on `done` with pause instructions until it returns true or kSpinFor has passed; returns
// its last answer.
template <typename Done>
bool SpinUntil(Done done) {
  const auto until = std::chrono::steady_clock::now() + kSpinFor;
  for (int i = 0;; ++i) {
    if (done()) return true;
    _mm_pause();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return done();
  }
}

// Room for n floats in *v starting at a cache-line boundary, which it returns: buffers that both
// pipeline stages write then share no line at their chunks' edges.
float* CacheAligned(std::vector<float>* v, std::size_t n) {
  constexpr std::size_t kLine = 64 / sizeof(float);
  v->resize(n + kLine);
  const auto address = reinterpret_cast<std::uintptr_t>(v->data());
  return v->data() + (kLine - address / sizeof(float) % kLine) % kLine;
}

// Asks for the cache lines of n floats from p, which the other core wrote: the loads then overlap
// instead of each one stalling the code that needs it.
void Prefetch(const float* p, std::size_t n) {
  const char* begin = reinterpret_cast<const char*>(p);
  for (std::size_t i = 0; i < n * sizeof(float); i += 64) _mm_prefetch(begin + i, _MM_HINT_T0);
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
      stop_.store(true, std::memory_order_relaxed);
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
      pending_.store(parts - 1, std::memory_order_relaxed);
      generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(context, 0);
    if (SpinUntil([this] { return pending_.load(std::memory_order_acquire) == 0; })) return true;
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    return true;
  }

 private:
  void Loop(int part) {
    uint64_t seen = 0;
    for (;;) {
      // A job published while this worker spins is taken without the mutex's hand-off.
      SpinUntil([&] {
        return generation_.load(std::memory_order_acquire) != seen ||
               stop_.load(std::memory_order_relaxed);
      });
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] {
        return stop_.load(std::memory_order_relaxed) ||
               generation_.load(std::memory_order_relaxed) != seen;
      });
      if (stop_.load(std::memory_order_relaxed)) return;
      seen = generation_.load(std::memory_order_relaxed);
      if (part >= parts_) continue;  // this job has fewer parts than there are workers
      const PartFn fn = fn_;
      const void* context = context_;
      lock.unlock();
      fn(context, part);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // Under the mutex, so a caller between its check and its wait cannot miss this.
        std::lock_guard<std::mutex> done_lock(mu_);
        done_.notify_one();
      }
    }
  }

  std::mutex busy_;  // held by the one Split using the workers
  std::mutex mu_;    // guards the job's fields and the condition variables' waits
  std::condition_variable wake_, done_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> generation_{0};  // one more per job
  PartFn fn_ = nullptr;
  const void* context_ = nullptr;
  int parts_ = 0;
  std::atomic<int> pending_{0};  // the job's worker parts not yet finished
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
      if (l == 1 && threads > 1) SplitInputProjection(w.layers[l].w_ih, int8, &layer);
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
    } else if (threads_ > 1 && layers_.size() >= 2) {
      const int t_len = shape_.window, h = shape_.hidden_size;
      Scratch& s = ThreadScratch();
      float* h0 = CacheAligned(&s.pipe_h0, static_cast<std::size_t>(t_len + 1) * batch * h);
      std::fill_n(h0, static_cast<std::size_t>(batch) * h, 0.0f);
      float* first = CacheAligned(&s.pipe_first,
                                  static_cast<std::size_t>(t_len) * batch * layers_[1].split_rows);
      const PipelineJob job{this, inputs.data(), outputs.data(), batch, h0, first};
      if (workers_->Split(2, &PipelineJob::RunPart, &job)) return;
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
      bytes += (l.w_ih.data.size() + l.w_hh.data.size() + l.w_ih_part[0].data.size() +
                l.w_ih_part[1].data.size() + l.bias.size()) *
               sizeof(float);
      for (const auto* q : {&l.q_ih, &l.q_hh, &l.q_ih_part[0], &l.q_ih_part[1]}) {
        bytes += q->w8.size() + q->comp.size() * sizeof(int32_t) + q->scale.size() * sizeof(float);
      }
    }
    return bytes;
  }

 private:
  // Columns per chunk: the gates of one chunk (1 KiB per column at H = 64) then stay in L2.
  static constexpr int kChunkColumns = 128;
  // Steps per chunk of a pipelined run: short, so the second stage starts soon after the first.
  static constexpr int kPipelineSteps = 4;

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

  // One Run of a small batch as the two-stage pipeline over the layers (see the top of the
  // file): part 0 is the first stage, part 1 the second.
  struct PipelineJob {
    const Engine* engine;
    const float* inputs;
    float* outputs;
    int batch;
    float* h0;     // in the caller's Scratch::pipe_h0
    float* first;  // in the caller's Scratch::pipe_first
    // Chunks whose layer-0 outputs, and whose layer-1 projection rows of the first stage, are
    // written.
    // Each on its own cache line: the second stage polls them while the first stage works.
    alignas(64) mutable std::atomic<int> layer0_done{0};
    alignas(64) mutable std::atomic<int> projected{0};

    static void RunPart(const void* context, int part) {
      const auto& job = *static_cast<const PipelineJob*>(context);
      if (part == 0) {
        job.engine->FirstStage(job);
      } else {
        job.engine->SecondStage(job);
      }
    }
  };

  // Packs layer 1's W_ih as two parts, rows [0, split) and [split, 4H), split half the rows
  // rounded down to a multiple of 16 (see the top of the file).
  void SplitInputProjection(const std::vector<float>& w_ih, const Int8Matrices* int8,
                            Layer* layer) const {
    const int g = 4 * shape_.hidden_size, in = layer->in;
    layer->split_rows = g / 2 / 16 * 16;
    for (int part = 0; part < 2; ++part) {
      const int r0 = part == 0 ? 0 : layer->split_rows;
      const int r1 = part == 0 ? layer->split_rows : g;
      if (precision_ == Precision::kFp32) {
        const std::vector<float> rows(w_ih.begin() + static_cast<std::ptrdiff_t>(r0) * in,
                                      w_ih.begin() + static_cast<std::ptrdiff_t>(r1) * in);
        layer->w_ih_part[part] = kernels::PackF32(rows, r1 - r0, in);
      } else {
        const QuantizedMatrix& q = int8->w_ih[1];
        QuantizedMatrix rows;
        rows.rows = r1 - r0;
        rows.cols = in;
        rows.q.assign(q.q.begin() + static_cast<std::ptrdiff_t>(r0) * in,
                      q.q.begin() + static_cast<std::ptrdiff_t>(r1) * in);
        rows.scale.assign(q.scale.begin() + r0, q.scale.begin() + r1);
        layer->q_ih_part[part] = kernels::PackI8(kernel_, rows);
      }
    }
  }

  static Projection Whole(const Layer& layer) { return {&layer.w_ih, &layer.q_ih, 0}; }
  static Projection Part(const Layer& layer, int part) {
    return {&layer.w_ih_part[part], &layer.q_ih_part[part], part == 0 ? 0 : layer.split_rows};
  }

  // Copies steps [t0, t0 + steps) of every sequence into s.x, step-major.
  void GatherInputs(const float* inputs, int batch, int t0, int steps, Scratch& s) const {
    const int t_len = shape_.window, in = shape_.input_size;
    s.x.resize(static_cast<std::size_t>(steps) * batch * in);
    for (int t = 0; t < steps; ++t) {
      for (int b = 0; b < batch; ++b) {
        std::memcpy(&s.x[(static_cast<std::size_t>(t) * batch + b) * in],
                    &inputs[(static_cast<std::size_t>(b) * t_len + t0 + t) * in],
                    sizeof(float) * in);
      }
    }
  }

  // Runs `batch` sequences on the calling thread, in its scratch space.
  void RunBatch(const float* inputs, int batch, float* outputs) const {
    const int t_len = shape_.window, in = shape_.input_size, h = shape_.hidden_size;
    const int gp = kernels::PaddedRows(4 * h);
    const int chunk = std::clamp(kChunkColumns / batch, 1, t_len);
    const std::size_t chunk_cols = static_cast<std::size_t>(chunk) * batch;
    const std::size_t layers = layers_.size();
    Scratch& s = ThreadScratch();
    s.gates.resize(chunk_cols * gp);
    s.hs.resize(std::max(s.hs.size(), layers));
    s.c.resize(std::max(s.c.size(), layers));
    for (std::size_t l = 0; l < layers; ++l) {
      s.hs[l].resize((chunk_cols + batch) * h);
      std::fill_n(s.hs[l].begin(), static_cast<std::size_t>(batch) * h, 0.0f);
      s.c[l].assign(static_cast<std::size_t>(batch) * h, 0.0f);
    }
    for (int t0 = 0; t0 < t_len; t0 += chunk) {
      const int steps = std::min(chunk, t_len - t0);
      const int cols = steps * batch;
      GatherInputs(inputs, batch, t0, steps, s);
      for (std::size_t l = 0; l < layers; ++l) {
        const float* x = l == 0 ? s.x.data() : &s.hs[l - 1][static_cast<std::size_t>(batch) * h];
        Project(layers_[l], Whole(layers_[l]), x, l == 0 ? in : h, cols, s.gates.data(), gp, s);
        Recur(layers_[l], t0, steps, batch, s.gates.data(), s.c[l].data(), s.hs[l].data(), s);
      }
      if (t0 + steps < t_len) {  // this chunk's last step becomes the next chunk's h_{t-1}
        for (std::size_t l = 0; l < layers; ++l) {
          std::copy_n(&s.hs[l][static_cast<std::size_t>(cols) * h],
                      static_cast<std::size_t>(batch) * h, s.hs[l].begin());
        }
      }
    }
    const int last_cols = (t_len - 1) % chunk * batch + batch;  // the last chunk's column count
    Head(&s.hs[layers - 1][static_cast<std::size_t>(last_cols) * h], batch, outputs, s);
  }

  // The pipeline's first stage: layer 0 and layer 1's projection rows [0, split_rows), chunk by
  // chunk, publishing each chunk's progress to the second stage.
  void FirstStage(const PipelineJob& job) const {
    const int t_len = shape_.window, in = shape_.input_size, h = shape_.hidden_size;
    const int gp = kernels::PaddedRows(4 * h), batch = job.batch;
    Scratch& s = ThreadScratch();
    s.gates.resize(static_cast<std::size_t>(kPipelineSteps) * batch * gp);
    s.c.resize(std::max<std::size_t>(s.c.size(), 1));
    s.c[0].assign(static_cast<std::size_t>(batch) * h, 0.0f);
    for (int t0 = 0, chunk = 1; t0 < t_len; t0 += kPipelineSteps, ++chunk) {
      const int steps = std::min(kPipelineSteps, t_len - t0), cols = steps * batch;
      GatherInputs(job.inputs, batch, t0, steps, s);
      Project(layers_[0], Whole(layers_[0]), s.x.data(), in, cols, s.gates.data(), gp, s);
      float* h0 = job.h0 + static_cast<std::size_t>(t0) * batch * h;
      Recur(layers_[0], t0, steps, batch, s.gates.data(), s.c[0].data(), h0, s);
      job.layer0_done.store(chunk, std::memory_order_release);
      const int split = layers_[1].split_rows;
      if (split > 0) {
        Project(layers_[1], Part(layers_[1], 0), h0 + static_cast<std::size_t>(batch) * h, h, cols,
                job.first + static_cast<std::size_t>(t0) * batch * split, split, s);
      }
      job.projected.store(chunk, std::memory_order_release);
    }
  }

  // The pipeline's second stage: the rest of layer 1's projection, its recurrence, the layers
  // after it (each chunk right after layer 1's) and the head.
  void SecondStage(const PipelineJob& job) const {
    const int t_len = shape_.window, h = shape_.hidden_size, batch = job.batch;
    const int gp = kernels::PaddedRows(4 * h);
    const std::size_t layers = layers_.size();
    const std::size_t window_cols = static_cast<std::size_t>(t_len + 1) * batch * h;
    Scratch& s = ThreadScratch();
    s.gates.resize(static_cast<std::size_t>(kPipelineSteps) * batch * gp);
    s.c.resize(std::max(s.c.size(), layers));
    s.pipe_h.resize((layers - 1) * window_cols);
    for (std::size_t l = 1; l < layers; ++l) {
      s.c[l].assign(static_cast<std::size_t>(batch) * h, 0.0f);
      std::fill_n(s.pipe_h.begin() + static_cast<std::ptrdiff_t>((l - 1) * window_cols),
                  static_cast<std::size_t>(batch) * h, 0.0f);
    }
    auto outputs_of = [&](std::size_t l) {  // layer l's whole-window buffer (slot 0: zeros)
      return l == 0 ? job.h0 : &s.pipe_h[(l - 1) * window_cols];
    };
    auto wait_for = [](const std::atomic<int>& counter, int chunk) {
      while (!SpinUntil([&] { return counter.load(std::memory_order_acquire) >= chunk; })) {
        std::this_thread::yield();
      }
    };
    for (int t0 = 0, chunk = 1; t0 < t_len; t0 += kPipelineSteps, ++chunk) {
      const int steps = std::min(kPipelineSteps, t_len - t0), cols = steps * batch;
      const std::size_t step0 = static_cast<std::size_t>(t0) * batch;
      const int split = layers_[1].split_rows;
      wait_for(job.layer0_done, chunk);
      Prefetch(job.h0 + (step0 + batch) * h, static_cast<std::size_t>(cols) * h);
      Project(layers_[1], Part(layers_[1], 1), job.h0 + (step0 + batch) * h, h, cols,
              s.gates.data(), gp, s);
      wait_for(job.projected, chunk);
      // Copied, not used in place: the recurrence writes the gates, and a line the other core
      // wrote would first have to be taken from it, on the critical path.
      for (int n = 0; n < cols; ++n) {
        std::memcpy(&s.gates[static_cast<std::size_t>(n) * gp], job.first + (step0 + n) * split,
                    sizeof(float) * split);
      }
      Recur(layers_[1], t0, steps, batch, s.gates.data(), s.c[1].data(), outputs_of(1) + step0 * h,
            s);
      for (std::size_t l = 2; l < layers; ++l) {
        Project(layers_[l], Whole(layers_[l]), outputs_of(l - 1) + (step0 + batch) * h, h, cols,
                s.gates.data(), gp, s);
        Recur(layers_[l], t0, steps, batch, s.gates.data(), s.c[l].data(),
              outputs_of(l) + step0 * h, s);
      }
    }
    Head(outputs_of(layers - 1) + static_cast<std::size_t>(t_len) * batch * h, batch, job.outputs,
         s);
  }

  // gates (cols columns, ldg apart) rows [p.row0, p.row0 + its rows) = bias + W x for the
  // columns x (ldx apart).
  void Project(const Layer& layer, const Projection& p, const float* x, int ldx, int cols,
               float* gates, int ldg, Scratch& s) const {
    const bool fp32 = precision_ == Precision::kFp32;
    const int rows = kernels::PaddedRows(fp32 ? p.fp32->rows : p.int8->rows);
    for (int n = 0; n < cols; ++n) {
      std::memcpy(&gates[static_cast<std::size_t>(n) * ldg + p.row0], &layer.bias[p.row0],
                  sizeof(float) * rows);
    }
    if (fp32) {
      kernels::GemmF32(fp32_kernel_, *p.fp32, x, ldx, cols, gates + p.row0, ldg);
    } else {
      kernels::QuantizeCols(kernel_, x, ldx, cols, layer.in, p.int8->kpad, &s.xq);
      kernels::GemmI8(*p.int8, s.xq, cols, gates + p.row0, ldg);
    }
  }

  // A layer's recurrence over `steps` steps starting at t0, on gates that hold the input
  // projection: adds W_hh h_{t-1} and runs the cell. hs holds h_{t0-1} in its first batch columns
  // and receives the steps' outputs after them.
  void Recur(const Layer& layer, int t0, int steps, int batch, float* gates, float* c, float* hs,
             Scratch& s) const {
    const int h = shape_.hidden_size, gp = kernels::PaddedRows(4 * h);
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
      kernels::LstmCell(
          kernel_, g, gp, batch, h, c, &hs[static_cast<std::size_t>(t + 1) * batch * h], h,
          precision_ == Precision::kInt8 ? kernels::CellMath::kFast : kernels::CellMath::kPrecise);
    }
  }

  // outputs = the head on the last layer's final hidden states (batch columns of H).
  void Head(const float* h_last, int batch, float* outputs, Scratch& s) const {
    const int h = shape_.hidden_size, op = kernels::PaddedRows(shape_.outputs());
    s.head.resize(static_cast<std::size_t>(batch) * op);
    for (int b = 0; b < batch; ++b) {
      std::memcpy(&s.head[static_cast<std::size_t>(b) * op], head_b_.data(), sizeof(float) * op);
    }
    kernels::GemmF32(fp32_kernel_, head_, h_last, h, batch, s.head.data(), op);
    const int o = shape_.outputs();
    for (int b = 0; b < batch; ++b) {
      std::memcpy(&outputs[static_cast<std::size_t>(b) * o],
                  &s.head[static_cast<std::size_t>(b) * op], sizeof(float) * o);
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
