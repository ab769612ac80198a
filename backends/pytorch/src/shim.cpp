// C entry points into libtorch for what tch does not expose: the inference-mode and
// graph-optimizer guards around an execution, the JIT executor mode and the thread pools.
// Every entry point catches C++ exceptions; none lets one cross into Rust.

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <cstdio>
#include <exception>
#include <optional>

namespace {

// The guards one execution runs under; destroyed in reverse order on the same thread.
struct ExecutionGuard {
  std::optional<c10::InferenceMode> inference;
  std::optional<c10::NoGradGuard> no_grad;
  torch::jit::GraphOptimizerEnabledGuard optimizer;

  ExecutionGuard(bool inference_mode, bool optimize) : optimizer(optimize) {
    if (inference_mode) {
      inference.emplace(true);
    } else {
      no_grad.emplace();
    }
  }
};

void write_error(const char* what, char* buffer, size_t length) {
  if (buffer != nullptr && length > 0) {
    std::snprintf(buffer, length, "%s", what);
  }
}

}  // namespace

extern "C" {

// Enters inference mode (or no-grad mode) and sets the graph optimizer for this thread.
// Returns null and writes the reason into `error` on failure.
void* ferrum_torch_guard_enter(int inference_mode, int optimize, char* error,
                               size_t error_length) noexcept {
  try {
    return new ExecutionGuard(inference_mode != 0, optimize != 0);
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_length);
  } catch (...) {
    write_error("unknown C++ exception", error, error_length);
  }
  return nullptr;
}

// Leaves the guards entered by ferrum_torch_guard_enter.
void ferrum_torch_guard_exit(void* guard) noexcept {
  try {
    delete static_cast<ExecutionGuard*>(guard);
  } catch (...) {
  }
}

// Chooses the profiling (true) or the simple (false) JIT executor, process-wide.
void ferrum_torch_set_jit_executor(int enabled) noexcept {
  torch::jit::getExecutorMode() = enabled != 0;
}

// Sets the intra-op thread pool size; returns 0, or -1 with the reason in `error`.
int ferrum_torch_set_intra_op_threads(int threads, char* error, size_t error_length) noexcept {
  try {
    at::set_num_threads(threads);
    return 0;
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_length);
  } catch (...) {
    write_error("unknown C++ exception", error, error_length);
  }
  return -1;
}

// Sets the inter-op thread pool size; libtorch refuses once inter-op work has started.
// Returns 0, or -1 with the reason in `error`.
int ferrum_torch_set_inter_op_threads(int threads, char* error, size_t error_length) noexcept {
  try {
    at::set_num_interop_threads(threads);
    return 0;
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_length);
  } catch (...) {
    write_error("unknown C++ exception", error, error_length);
  }
  return -1;
}

}  // extern "C"
