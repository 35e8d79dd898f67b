// Bindings of the training ops (backward passes, loss, optimiser).
#include "common.h"

namespace la::napi {

void register_train_ops(Napi::Env env, Napi::Object exports) {}

}  // namespace la::napi
