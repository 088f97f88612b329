// The forecast trainer's entry point in the libtorch plugin: the symbol LoadTorchTrainer() looks
// up with dlsym. TorchTrainer::Train turns every exception into a core::Status, so none leaves
// the plugin.
#include "forecast/torch/trainer.h"

extern "C" __attribute__((visibility("default"))) megaserve::forecast::Trainer*
megaserve_torch_forecast_trainer(int abi_version) {
  if (abi_version != megaserve::forecast::kTrainerAbiVersion) return nullptr;
  static megaserve::forecast::TorchTrainer trainer;
  return &trainer;
}
