// The agent's native addon (sandcell_spawn.node): process creation and extended attributes,
// one module so that the agent bundle and the guest image carry a single binary.
#include "addon.h"

static napi_value init(napi_env env, napi_value exports) {
  if (register_spawn(env, exports) != napi_ok || register_xattr(env, exports) != napi_ok) {
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
